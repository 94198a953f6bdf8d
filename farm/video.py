"""Reading video files: the one place that decodes frames with ffmpeg (imageio-ffmpeg).

    probe(path)              what a player sees: frames, fps, size, codec (decodes it all)
    count_frames(path)       the number of frames alone
    iter_frames(path)        (meta, frames) streaming, closed as soon as the caller stops
    read_frames(path)        every frame at once, (N, H, W, 3) uint8 (tests, small files)

Writing lives in farm/encode.py.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from farm.errors import EncodeError
from farm.util import first_line


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str


def probe(path: str | Path) -> VideoInfo:
    """Decode the whole file with ffmpeg and report what a player would see. The answer is
    remembered for the file as it is (path, size, mtime), so validating an input and then
    reading it decodes it once.

    Raises EncodeError if ffmpeg reports any decoding error.
    """
    try:
        st = os.stat(path)
    except OSError as err:
        raise EncodeError(f"ffmpeg cannot decode {path}: {err.strerror}") from None
    return _probe(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _probe(path: str, size: int, mtime_ns: int) -> VideoInfo:
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    proc = subprocess.run(
        [exe, "-hide_banner", "-v", "error", "-stats", "-i", str(path), "-map", "0:v:0", "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise EncodeError(f"ffmpeg cannot decode {path}: {proc.stderr.strip()[-500:]}")
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("frame=") and "frame=" not in ln]
    if errors:
        raise EncodeError(f"ffmpeg reported decoding errors in {path}: {errors[:3]}")
    counts = re.findall(r"frame=\s*(\d+)", proc.stderr)
    head = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    m = re.search(r"Video: (\w+)[^,]*, (\w+)[^,]*(?:\([^)]*\))?, (\d+)x(\d+)", head)
    fps_m = re.search(r"([\d.]+) fps", head)
    if not (counts and m and fps_m):
        raise EncodeError(f"cannot read the video stream of {path}")
    return VideoInfo(
        frames=int(counts[-1]),
        fps=float(fps_m.group(1)),
        width=int(m.group(3)),
        height=int(m.group(4)),
        codec=m.group(1),
        pix_fmt=m.group(2),
    )


def count_frames(path: str | Path) -> int:
    """How many frames ffmpeg decodes from `path` (it reads the whole stream). ValueError,
    with ffmpeg's first line, when it cannot read it."""
    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError, ValueError) as err:
        raise ValueError(f"cannot read {str(path)!r} as a video: {first_line(err)}") from None
    return int(frames)


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Each frame of `path` as (H, W, 3) uint8, decoded as it is asked for. ffmpeg stops
    when the caller stops (closing the generator closes the reader). A file ffmpeg cannot
    open raises ValueError with ffmpeg's first line."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        try:
            meta = next(reader)
        except (RuntimeError, OSError, StopIteration) as err:
            raise ValueError(f"cannot read {str(path)!r} as a video: {first_line(err)}") from None
        w, h = meta["size"]
        for raw in reader:
            yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
    finally:
        reader.close()


def read_frames(path: str | Path) -> np.ndarray:
    """Decode every frame to RGB uint8, shape (N, H, W, 3)."""
    frames = list(iter_frames(path))
    if frames:
        return np.stack(frames)
    info = probe(path)
    return np.zeros((0, info.height, info.width, 3), np.uint8)
