"""Segments: the video cut into consecutive pieces that are reconciled, metered,
interpolated and encoded on the cluster, so that no frame passes through the driver. Pure:
no Ray (the Ray task is actors/segment.py, the driver's side scheduler/segments.py).

Cuts. A segment runs from the middle of one seam's overlap to the middle of a later one
(the first from frame 0, the last to the end). Windows are grouped so that each segment has
at least `encode.segment_frames` frames (the last may have fewer), so a cut never falls
where a crossfade is strongest and each segment is long enough that its ffmpeg start-up is
small beside its frames.

A segment emits the blended frames [start, end). It also blends frame `end` (the next
segment's first, when there is one) without emitting it: the flicker curve's diff across
the cut and RIFE's pair (end - 1, end) need it. Every segment reads only the frames it
needs from the sources that cover [start, end]: windows (crossfade, blended with the
job's normalised weights, farm.blend) or decoded chunks (latent, final already).

Output frames. With interpolation, a segment produces the output frames whose positions
lie in [start, end) of the input (the last one also those at and past its last frame),
exactly as `farm.interpolate.chunks_between` cuts them: consecutive segments produce every
output frame once, none dropped or repeated at a join. Each segment is encoded as its own
H.264 stream that starts on a key frame; the driver joins them with ffmpeg's concat
demuxer (stream copy).

Same bits. Blending is `farm.blend.weighted_frame` (the driver path's arithmetic, in the
same order) and RIFE works pair by pair, so the segment path's frames are the driver
path's, bit for bit; with `encode.crf: 0` (lossless) so are the decoded videos.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from farm.blend import disagreement, frame_weights, weighted_frame
from farm.color import mean_lab
from farm.filmstrip import seam_frames
from farm.interpolate import Retiming, chunks_between, interpolate_chunk
from farm.metrics import FlickerMeter
from farm.plan import Window
from farm.util import thumbnail


# -- planning (pure) ----------------------------------------------------------------------
#: From this many windows up, `encode.path: auto` takes the segment path (docs/benchmarks.md).
SEGMENTS_FROM_WINDOWS = 12


def choose_path(spec, windows: int) -> str:
    """Where a job's frames are reconciled and encoded: `encode.path`, or for `auto` the
    segment path when the job has at least SEGMENTS_FROM_WINDOWS windows and can take it
    (the driver may still fall back to `driver` on a cluster with no CPU to spare)."""
    from farm.pipelines import descriptor
    from farm.spec import segments_refused

    if spec.encode.path != "auto":
        return spec.encode.path
    faults = spec.model.faults
    if (segments_refused(descriptor(spec.model.pipeline), spec.window.reconcile) or spec.encode.parallel > 1
            or (faults and faults.fail_chunks)  # the RIFE actors' faults are the driver path's
            or spec.shots):  # a film's runs are spliced in the driver
        return "driver"
    return "segments" if windows >= SEGMENTS_FROM_WINDOWS else "driver"


def cut_points(windows: Sequence[Window], segment_frames: int) -> list[int]:
    """The first frame of every segment but the first: middles of seam overlaps, at least
    `segment_frames` apart (the last segment may be shorter)."""
    cuts, last = [], 0
    for prev, nxt in zip(windows, windows[1:]):
        middle = (nxt.start + prev.end) // 2
        if middle - last >= segment_frames:
            cuts.append(middle)
            last = middle
    return cuts


@dataclass(frozen=True)
class Source:
    """Frames [start, end) that a segment reads: one window's render (`window` is its index,
    `weights` its normalised blend weight per frame), or one decoded chunk of a co-denoised
    job (`window` None: the frames are final)."""

    start: int
    end: int
    window: int | None = None
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Strip:
    """What a segment contributes to seam `window`'s filmstrip (farm.filmstrip)."""

    window: int  # seam k: windows k and k+1
    frames: tuple[int, int]  # [first, last] blended frames the strip shows
    overlap: tuple[int, int]  # [first, last] frames both windows render


@dataclass(frozen=True)
class Encoding:
    width: int
    height: int
    fps: float  # of the output
    crf: int
    preset: str


@dataclass(frozen=True)
class Interpolation:
    retime: Retiming
    chunk: int
    threshold: float
    cuts: tuple[int, ...] = ()


@dataclass(frozen=True)
class SegmentJob:
    """Everything a segment task needs but the frames (which arrive as the sources' arrays,
    in `sources` order)."""

    index: int
    start: int
    end: int  # emits blended frames [start, end)
    frames: int  # frames in the whole video
    sources: tuple[Source, ...]
    encoding: Encoding
    interpolation: Interpolation | None = None
    strips: tuple[Strip, ...] = ()
    window_ends: tuple[tuple[int, int], ...] = ()  # (window, its last frame) for windows ending here
    crash: bool = False  # fault injection: the task's process exits (its first attempt only)

    @property
    def final(self) -> bool:
        return self.end >= self.frames

    @property
    def last(self) -> int:
        """The last blended frame this segment needs: the next segment's first, if any."""
        return self.end - 1 if self.final else self.end


def plan_segments(windows: Sequence[Window], blend: str, segment_frames: int, encoding: Encoding,
                  interpolation: Interpolation | None = None) -> list[SegmentJob]:
    """The segments of a crossfade job: each with the windows that cover its frames and
    their blend weights (pure)."""
    windows = tuple(windows)
    total = windows[-1].end
    weights = frame_weights(windows, blend)
    bounds = [0, *cut_points(windows, segment_frames), total]
    out = []
    for index, (start, end) in enumerate(zip(bounds, bounds[1:])):
        last = end - 1 if end >= total else end
        sources = tuple(Source(w.start, w.end, w.index, tuple(float(x) for x in weights[w.index]))
                        for w in windows if w.start <= last and w.end > start)
        out.append(SegmentJob(
            index, start, end, total, sources, encoding, interpolation,
            strips=_strips(windows, start, end),
            window_ends=tuple((w.index, w.end - 1) for w in windows if start <= w.end - 1 < end)))
    return out


def plan_latent_segments(windows: Sequence[Window], segment_frames: int, encoding: Encoding,
                         interpolation: Interpolation | None = None) -> list[SegmentJob]:
    """The segments of a co-denoised job: cut like a crossfade job's; their sources are the
    decoded chunks, which are only known as they are sent (`with_sources`)."""
    windows = tuple(windows)
    total = windows[-1].end
    bounds = [0, *cut_points(windows, segment_frames), total]
    return [SegmentJob(i, a, b, total, (), encoding, interpolation, strips=_strips(windows, a, b))
            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def _strips(windows: Sequence[Window], start: int, end: int) -> tuple[Strip, ...]:
    """The seams' filmstrips that show frames of [start, end)."""
    strips = (Strip(prev.index, *seam_frames(prev, nxt)) for prev, nxt in zip(windows, windows[1:]))
    return tuple(s for s in strips if s.frames[0] < end and s.frames[1] >= start)


def with_sources(job: SegmentJob, sources: Sequence[Source]) -> SegmentJob:
    """`job` reading the decoded chunks among `sources` that hold its frames."""
    from dataclasses import replace

    return replace(job, sources=tuple(s for s in sources if s.start <= job.last and s.end > job.start))


# -- running (on a segment task) -------------------------------------------------------------
@dataclass
class SegmentOutput:
    """What a segment sends back: its encoded stream and small figures, never frames."""

    index: int
    data: bytes  # the H.264 segment (mp4)
    frames_in: int  # blended frames emitted
    frames_out: int  # frames encoded
    diffs: list[float]  # flicker curve: diffs start → start+1 … (end-1) → end
    disagreement: dict[int, tuple[float, int]]  # seam k → (sum, frames)
    strips: dict[int, dict] = field(default_factory=dict)  # seam k → {"blended": {f: thumb}, "own": {w: {f: thumb}}}
    first_lab: list[float] | None = None  # mean L*a*b* of frame 0 (segment 0)
    window_labs: dict[int, list[float]] = field(default_factory=dict)  # window → its last frame's
    cuts: list[int] = field(default_factory=list)
    preview: tuple[int, bytes] | None = None  # (frame, a small JPEG of it): the segment's last frame
    model_calls: int = 0
    interpolate_seconds: float = 0.0
    seconds: float = 0.0
    node: str = ""


def run_segment(job: SegmentJob, arrays: Sequence[np.ndarray], backend, write_frames,
                thumb: int = 96) -> SegmentOutput:
    """Blend, meter, interpolate (with `backend`, farm.rife.backends) and encode one
    segment. `arrays` are the sources' frames; `write_frames(path, encoding, frames)`
    encodes (farm.encode.write_segment)."""
    t0 = time.perf_counter()
    out = SegmentOutput(job.index, b"", 0, 0, [], {})
    strip_at: dict[int, list[Strip]] = {}
    for s in job.strips:
        for f in range(max(s.frames[0], job.start), min(s.frames[1], job.end - 1) + 1):
            strip_at.setdefault(f, []).append(s)
    _own_thumbnails(job, arrays, out, thumb)

    meter = FlickerMeter()  # the driver path's, so the curve is the same numbers
    last: list = []  # [f, frame] of the last frame emitted: the farm UI's preview

    def blended() -> Iterator[np.ndarray]:
        for f, frame in _blend(job, arrays, out):
            meter.add(frame)
            if f == job.end:  # the next segment's first frame: measured and paired, not emitted
                yield frame
                return
            for s in strip_at.get(f, ()):
                out.strips.setdefault(s.window, {"blended": {}, "own": {}})["blended"][f] = thumbnail(frame, thumb)
            out.frames_in += 1
            last[:] = [f, frame]
            yield frame

    frames = _interpolate(job, blended(), backend, out) if job.interpolation else _emit(job, blended())
    with tempfile.TemporaryDirectory(prefix="farm-segment-") as tmp:
        path = Path(tmp) / f"segment-{job.index:05d}.mp4"
        out.frames_out = write_frames(path, job.encoding, frames)
        out.data = path.read_bytes()
    out.diffs = meter.curve
    if last:
        from farm.filmstrip import jpeg_bytes

        out.preview = (last[0], jpeg_bytes(thumbnail(last[1], 160), quality=80))
    out.seconds = time.perf_counter() - t0
    return out


def _emit(job: SegmentJob, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Without interpolation, the emitted frames are the output (the look-ahead is dropped)."""
    for i, frame in enumerate(frames):
        if job.start + i < job.end:
            yield frame


def _blend(job: SegmentJob, arrays: Sequence[np.ndarray], out: SegmentOutput) -> Iterator[tuple[int, np.ndarray]]:
    """(f, blended frame f) for f in [start, last]; measures the windows' disagreement
    and the windows' last frames' colour on the way."""
    sources = list(zip(job.sources, arrays))
    for s, a in sources:
        if s.window is not None and len(a) != s.end - s.start:
            raise ValueError(f"window {s.window} has {len(a)} frames, expected {s.end - s.start}")
    ends = {last: w for w, last in job.window_ends}
    for f in range(job.start, job.last + 1):
        covering = [(s, a) for s, a in sources if s.start <= f < s.end]
        if not covering:
            raise ValueError(f"segment {job.index}: no source holds frame {f}")
        if covering[0][0].window is None:  # decoded, final
            s, a = covering[0]
            frame = a[f - s.start]
        else:
            for (s, a), (t, b) in zip(covering, covering[1:]):
                if f < job.end:
                    d = disagreement(a[f - s.start], b[f - t.start])
                    total, n = out.disagreement.get(s.window, (0.0, 0))
                    out.disagreement[s.window] = (total + d, n + 1)
            frame = weighted_frame((a[f - s.start], s.weights[f - s.start]) for s, a in covering)
        if f in ends and f < job.end:  # colour drift: a window's own last frame, and window 0's first
            s, a = next((s, a) for s, a in sources if s.window == ends[f])
            out.window_labs[ends[f]] = mean_lab(thumbnail(a[f - s.start], 64)).tolist()
        if f == 0 and covering[0][0].window == 0:
            out.first_lab = mean_lab(thumbnail(covering[0][1][0], 64)).tolist()
        yield f, frame


def _own_thumbnails(job: SegmentJob, arrays: Sequence[np.ndarray], out: SegmentOutput, size: int) -> None:
    """Each window's own render of the overlap frames this segment emits, for the strips."""
    by_window = {s.window: (s, a) for s, a in zip(job.sources, arrays) if s.window is not None}
    for strip in job.strips:
        for w in (strip.window, strip.window + 1):
            if w not in by_window:
                continue
            s, a = by_window[w]
            lo, hi = max(strip.overlap[0], job.start), min(strip.overlap[1], job.end - 1)
            own = out.strips.setdefault(strip.window, {"blended": {}, "own": {}})["own"].setdefault(w, {})
            for f in range(lo, hi + 1):
                own[f] = thumbnail(a[f - s.start], size)


def _interpolate(job: SegmentJob, frames: Iterator[np.ndarray], backend, out: SegmentOutput) -> Iterator[np.ndarray]:
    """The output frames of input frames [start, last], chunk by chunk."""
    ip = job.interpolation
    chunks = chunks_between(ip.retime, job.start, job.last, ip.chunk, final=job.final)
    buffer: list[np.ndarray] = []
    frames = iter(frames)
    for chunk in chunks:
        while len(buffer) < chunk.last - chunk.first + 1:
            buffer.append(next(frames))
        declared = tuple(f for f in ip.cuts if chunk.first < f <= chunk.last)
        t0 = time.perf_counter()
        result = interpolate_chunk(backend, np.stack(buffer), chunk, ip.retime.level, ip.threshold, declared)
        out.interpolate_seconds += time.perf_counter() - t0
        out.cuts.extend(result.cuts)
        out.model_calls += result.midpoints
        yield from result.frames
        buffer = buffer[-1:]  # the shared frame starts the next chunk
    for _ in frames:  # drain: the blend generator measures to the end
        pass
