"""Streaming H.264 encoding through the ffmpeg binary that imageio-ffmpeg ships.

Frames are written one at a time as they are released, so the whole video is never in
memory. The file is written under a temporary name in the output folder and moved onto
the final name with `os.replace` only when ffmpeg has finished: a crash never leaves a
half file under the final name.

    VideoWriter           one ffmpeg process, fed by the caller
    ParallelVideoWriter   consecutive segments encoded by up to `parallel` ffmpeg processes
                          at once, each fed from a bounded queue by its own thread, then
                          joined without re-encoding (concat demuxer, stream copy). For a
                          driver whose single encoder cannot keep up with its GPUs.
    open_writer           the one the spec's `encode.parallel` asks for
    write_segment         one segment of the video encoded on its own (a segment task's,
                          farm/segments.py), and `join_segments` to join them in order
"""

from __future__ import annotations

import glob
import os
import queue
import subprocess
import tempfile
import threading
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from farm.errors import EncodeError


class _Writer:
    """`with` support: on success `close()` moves the file into place; on an error
    `abort()` removes every temp file and leaves an older file under the name untouched."""

    def close(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoWriter(_Writer):
    """`with VideoWriter(path, w, h, fps) as out: out.write(frame)`; moved into place on exit."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float, crf: int = 18, preset: str = "medium"):
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.frames_written = 0
        self._tmp = _part_file(self.path)
        self._encoding = (crf, preset)
        self._gen = None  # ffmpeg starts with the first frame, so its start overlaps the render

    def _start(self) -> None:
        self._gen = _ffmpeg_writer(self._tmp, self.width, self.height, self.fps, *self._encoding)

    def write(self, frame: np.ndarray) -> None:
        _check_frame(frame, self.width, self.height, self.frames_written)
        try:
            if self._gen is None:
                self._start()
            self._gen.send(np.ascontiguousarray(frame))
        except (OSError, RuntimeError) as err:
            self.abort()
            raise EncodeError(f"ffmpeg stopped while writing frame {self.frames_written}: {err}") from err
        self.frames_written += 1

    def close(self) -> Path:
        try:
            if self._gen is None:
                self._start()
            self._gen.close()
        except (OSError, RuntimeError) as err:
            self.abort()
            raise EncodeError(f"ffmpeg failed to finish {self.path}: {err}") from err
        os.replace(self._tmp, self.path)
        _remove_orphan_parts(self.path)
        return self.path

    def abort(self) -> None:
        try:
            if self._gen is not None:
                self._gen.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file goes either way
            pass
        self._tmp.unlink(missing_ok=True)


class ParallelVideoWriter(_Writer):
    """`VideoWriter`'s interface; frames [k·segment, (k+1)·segment) are encoded by the k-th
    ffmpeg process, at most `parallel` at once. `write` only queues the frame (each queue
    holds at most `queue_bytes` / frame size frames, so memory stays bounded) and returns;
    a thread per segment feeds its ffmpeg. `close` waits for every segment and joins them
    with ffmpeg's concat demuxer (stream copy, no re-encode) into one mp4, moved into place
    with `os.replace`. Each segment starts on a keyframe; the frames are those of the
    input, in order, as with one encoder."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float, crf: int = 18, preset: str = "medium",
                 parallel: int = 2, segment_frames: int = 120, queue_bytes: int = 256 << 20):
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.frames_written = 0
        self.parallel, self.segment_frames = parallel, segment_frames
        self._encoding = (crf, preset)
        per_segment = queue_bytes // max(1, parallel) // (width * height * 3)
        self._queue_frames = max(2, min(segment_frames, per_segment))
        self._segments: list[_Segment] = []
        self._tmp = _part_file(self.path)  # the joined file, then the output

    def write(self, frame: np.ndarray) -> None:
        _check_frame(frame, self.width, self.height, self.frames_written)
        if self.frames_written % self.segment_frames == 0:
            self._next_segment()
        segment = self._segments[-1]
        if segment.error is not None:
            self.abort()
            raise EncodeError(f"ffmpeg stopped while writing frame {self.frames_written}: {segment.error}")
        segment.queue.put(np.array(frame, copy=True))  # the caller may reuse its buffer
        self.frames_written += 1

    def _next_segment(self) -> None:
        if self._segments:
            self._segments[-1].queue.put(None)  # no more frames: ffmpeg finishes that segment
        running = [s for s in self._segments if s.is_alive()]
        while len(running) >= self.parallel:  # back-pressure: wait for the oldest to finish
            running.pop(0).join()
        segment = _Segment(_part_file(self.path), self.width, self.height, self.fps, self._encoding,
                           self._queue_frames)
        self._segments.append(segment)
        segment.start()

    def close(self) -> Path:
        if not self._segments:
            self._next_segment()
        self._segments[-1].queue.put(None)
        for segment in self._segments:
            segment.join()
        failed = [s for s in self._segments if s.error is not None]
        if failed:
            self.abort()
            raise EncodeError(f"ffmpeg failed to finish {self.path}: {failed[0].error}")
        try:
            join_segments([s.path for s in self._segments], self._tmp)
        except EncodeError:
            self.abort()
            raise
        for segment in self._segments:
            segment.path.unlink(missing_ok=True)
        os.replace(self._tmp, self.path)
        _remove_orphan_parts(self.path)
        return self.path

    def abort(self) -> None:
        for segment in self._segments:
            segment.stop()
        for segment in self._segments:
            segment.join()
            segment.path.unlink(missing_ok=True)
        self._tmp.unlink(missing_ok=True)


class SegmentFiles(_Writer):
    """The driver's side of the segment path (farm/segments.py): encoded segments arrive as
    bytes, in any order, and are written next to the output at once (`add`), so the driver
    holds none of them; `close` joins them in order into the output (stream copy) and moves
    it into place with `os.replace`. `frames_written` counts the frames of the segments
    added."""

    def __init__(self, path: str | Path, segments: int):
        self.path = Path(path)
        self.segments = segments
        self.frames_written = 0
        self._parts: dict[int, Path] = {}
        self._tmp = _part_file(self.path)

    def add(self, index: int, data: bytes, frames: int) -> None:
        if index in self._parts:
            return  # a retried segment that had finished after all: the first copy stays
        part = _part_file(self.path)
        part.write_bytes(data)
        self._parts[index] = part
        self.frames_written += frames

    def close(self) -> Path:
        missing = [i for i in range(self.segments) if i not in self._parts]
        if missing:
            self.abort()
            raise EncodeError(f"segments {missing[:8]} of {self.path} never arrived")
        try:
            join_segments([self._parts[i] for i in range(self.segments)], self._tmp)
        except EncodeError:
            self.abort()
            raise
        for part in self._parts.values():
            part.unlink(missing_ok=True)
        os.replace(self._tmp, self.path)
        _remove_orphan_parts(self.path)
        return self.path

    def abort(self) -> None:
        for part in self._parts.values():
            part.unlink(missing_ok=True)
        self._tmp.unlink(missing_ok=True)


class _Segment(threading.Thread):
    """One segment's ffmpeg, fed from a bounded queue; `None` in the queue ends it."""

    def __init__(self, path: Path, width: int, height: int, fps: float, encoding: tuple, queue_frames: int):
        super().__init__(name=f"encode-{path.name}", daemon=True)
        self.path = path
        self.args = (width, height, fps, *encoding)
        self.queue: queue.Queue = queue.Queue(maxsize=queue_frames)
        self.error: Exception | None = None
        self._stopped = False

    def run(self) -> None:
        gen, ended = None, False
        try:
            gen = _ffmpeg_writer(self.path, *self.args, faststart=False)
            while (frame := self.queue.get()) is not None:
                if not self._stopped:  # aborting: keep draining, so the writer never blocks
                    gen.send(frame)
            ended = True
            gen.close()
        except Exception as err:  # noqa: BLE001 - the writer reports it on its next call
            self.error = err
            if gen is not None:
                try:
                    gen.close()
                except Exception:  # noqa: BLE001 - already failed
                    pass
            while not ended and self.queue.get() is not None:  # take frames until the writer stops
                pass

    def stop(self) -> None:
        """Abort: skip the frames still queued and end."""
        self._stopped = True
        self.queue.put(None)


def open_writer(path: str | Path, width: int, height: int, fps: float, crf: int = 18, preset: str = "medium",
                parallel: int = 1, segment_frames: int = 120):
    """The writer `encode.parallel` asks for: one ffmpeg, or segments encoded in parallel."""
    if parallel > 1:
        return ParallelVideoWriter(path, width, height, fps, crf, preset, parallel, segment_frames)
    return VideoWriter(path, width, height, fps, crf, preset)


def _ffmpeg_writer(path: Path, width: int, height: int, fps: float, crf: int, preset: str, faststart: bool = True):
    """A started imageio-ffmpeg writer: send it rgb24 frames, then close it."""
    gen = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=None,
        output_params=["-crf", str(crf), "-preset", preset] + (["-movflags", "+faststart"] if faststart else []),
        ffmpeg_log_level="error",
    )
    gen.send(None)
    return gen


def write_segment(path: Path, encoding, frames) -> int:
    """Encode `frames` (an iterable of uint8 (H, W, 3)) into the H.264 segment `path`, which
    starts on a key frame; `encoding` is a farm.segments.Encoding. Returns the frames written."""
    gen, n = None, 0
    try:
        for frame in frames:
            _check_frame(frame, encoding.width, encoding.height, n)
            if gen is None:
                gen = _ffmpeg_writer(path, encoding.width, encoding.height, encoding.fps, encoding.crf,
                                     encoding.preset, faststart=False)
            gen.send(np.ascontiguousarray(frame))
            n += 1
        if gen is None:
            raise EncodeError(f"segment {path.name} has no frames")
        gen.close()
    except (OSError, RuntimeError) as err:
        raise EncodeError(f"ffmpeg stopped while writing frame {n} of {path.name}: {err}") from err
    return n


def join_segments(parts: list[Path], out: Path) -> None:
    """Join mp4 segments of one encoding into `out` without re-encoding (concat demuxer,
    stream copy, +faststart)."""
    listing = out.with_name(out.name + ".txt")
    listing.write_text("".join("file '{}'\n".format(str(p).replace("'", "'\\''")) for p in parts))
    try:
        proc = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", "-f", "concat", "-safe", "0",
             "-i", str(listing), "-map", "0:v:0", "-c", "copy", "-movflags", "+faststart", "-f", "mp4", str(out)],
            capture_output=True, text=True,
        )
    finally:
        listing.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise EncodeError(f"ffmpeg could not join {len(parts)} segments into {out}: {proc.stderr.strip()[-500:]}")


def _part_file(path: Path) -> Path:
    """A temp file next to `path`, named so that `_remove_orphan_parts` knows its owner."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part.mp4", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets normal permissions
    return Path(tmp)


def _check_frame(frame: np.ndarray, width: int, height: int, index: int) -> None:
    if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
        raise EncodeError(f"frame {index} is {frame.shape} {frame.dtype}; expected ({height}, {width}, 3) uint8")


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
