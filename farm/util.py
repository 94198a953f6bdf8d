"""The small helpers the rest of the farm shares, each written once.

    cache_dir()            where the farm keeps what it builds or fetches
    first_line(err)        the first line of an exception's text, for one-line messages
    sha256_file(path)      the sha256 of a file, read in blocks
    replace_atomically()   write a temp file next to the target, fsync, `os.replace`
    write_bytes_atomic / write_text_atomic / write_json_atomic
    unit_to_uint8(x)       float frames in [0, 1] → uint8 (pipelines decode to this scale)
    levels_to_uint8(x)     float frames in [0, 255] → uint8 (blends work on this scale)
    thumbnail(frame, n)    every s-th pixel of a frame, s the smallest stride that fits n
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """`FARM_CACHE` if set, else `$XDG_CACHE_HOME/raygen-farm` (default `~/.cache/raygen-farm`)."""
    explicit = os.environ.get("FARM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "raygen-farm"


def first_line(err: BaseException | str) -> str:
    """The first line of an error's text (its type name if it has none)."""
    text = str(err).strip()
    if text:
        return text.splitlines()[0]
    return type(err).__name__ if isinstance(err, BaseException) else ""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def replace_atomically(path: str | Path, write: Callable[[str], None], *, fsync: bool = False,
                       mode: int | None = None) -> Path:
    """`write(tmp)` into a temp file next to `path`, then `os.replace` it onto `path`, so a
    reader sees the old file or the new one, never half of one. The file gets the usual
    permissions (0666 less the umask) unless `mode` says otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = False, mode: int | None = None) -> Path:
    return replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data), fsync=fsync, mode=mode)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def unit_to_uint8(frames) -> np.ndarray:
    """Float frames in [0, 1] → uint8, the format every stage after the pipeline works in."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def levels_to_uint8(frames) -> np.ndarray:
    """Float frames already in 8-bit levels [0, 255] → uint8."""
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def thumbnail(frame: np.ndarray, size: int) -> np.ndarray:
    """Every s-th pixel of `frame` (H, W, 3), s the smallest stride whose result fits in
    `size` pixels a side: a sample, not a resampling, so it costs next to nothing."""
    stride = max(1, -(-max(frame.shape[:2]) // size))
    return np.ascontiguousarray(frame[::stride, ::stride])
