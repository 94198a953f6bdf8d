"""Streaming H.264 encoding through the ffmpeg binary that imageio-ffmpeg ships.

Frames are written one at a time as they are released, so the whole video is never in
memory. The file is written under a temporary name in the output folder and moved onto
the final name with `os.replace` only when ffmpeg has finished: a crash never leaves a
half file under the final name.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from farm.errors import EncodeError


class VideoWriter:
    """`with VideoWriter(path, w, h, fps) as out: out.write(frame)`; moved into place on exit."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float, crf: int = 18, preset: str = "medium"):
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.frames_written = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.{os.getpid()}.", suffix=".part.mp4",
                                   dir=self.path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets normal permissions
        self._tmp = Path(tmp)
        self._gen = imageio_ffmpeg.write_frames(
            str(self._tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            quality=None,
            output_params=["-crf", str(crf), "-preset", preset, "-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        self._gen.send(None)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise EncodeError(
                f"frame {self.frames_written} is {frame.shape} {frame.dtype}; "
                f"expected ({self.height}, {self.width}, 3) uint8"
            )
        try:
            self._gen.send(np.ascontiguousarray(frame))
        except (OSError, RuntimeError) as err:
            self.abort()
            raise EncodeError(f"ffmpeg stopped while writing frame {self.frames_written}: {err}") from err
        self.frames_written += 1

    def close(self) -> Path:
        try:
            self._gen.close()
        except (OSError, RuntimeError) as err:
            self.abort()
            raise EncodeError(f"ffmpeg failed to finish {self.path}: {err}") from err
        os.replace(self._tmp, self.path)
        _remove_orphan_parts(self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._gen.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file goes either way
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _remove_orphan_parts(path: Path) -> None:
    """Delete temp files that earlier writers of `path` left when their process was killed
    (the writer's pid is in the name; a live writer's file is never touched)."""
    for part in path.parent.glob(f".{glob.escape(path.name)}.*.part.mp4"):
        pid = part.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            part.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str


def probe(path: str | Path) -> VideoInfo:
    """Decode the whole file with ffmpeg and report what a player would see.

    Raises EncodeError if ffmpeg reports any decoding error.
    """
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


def read_frames(path: str | Path) -> np.ndarray:
    """Decode every frame to RGB uint8, shape (N, H, W, 3)."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)
