"""Frame interpolation planning and execution, backend-agnostic. No Ray.

Timing. An input of `n` frames at `fps_in` lasts n / fps_in seconds: every frame is shown
for 1 / fps_in. The output keeps that duration exactly: it has round(n · fps_out / fps_in)
frames, and output frame j shows the input at time j / fps_out, i.e. at input position
u_j = j · fps_in / fps_out. Positions are snapped to a dyadic grid of spacing 1 / 2^L
(L = ceil(log2(fps_out / fps_in))), whose points are made by recursive midpoints: 2×, 4×
and 8× are exact, and 8 → 60 fps (7.5×) uses the 8× grid with an error of at most 1/16 of
an input frame (7.8 ms). Positions past the last input frame hold the last frame, as a
player would. A factor of k is the same as fps_out = k · fps_in.

Chunks. The video is cut into chunks of `chunk` pairs; neighbouring chunks share one
frame, so no pair is lost at a chunk (or window) seam. A chunk produces the output frames
whose positions lie in [first, last) of its input frames (the final chunk also takes the
positions at and past its last frame), so no frame is produced twice.

Scene cuts. A pair whose 32×32 thumbnails have SSIM below `scene_threshold`, or that the
spec declares, is not interpolated: each position in it holds the nearer input frame, so
no frame ever mixes two shots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from farm.metrics import psnr, ssim, thumbnail


@dataclass(frozen=True)
class Retiming:
    frames_in: int
    fps_in: float
    fps_out: float
    level: int  # the dyadic grid has 2**level points per input pair
    frames_out: int

    @property
    def steps(self) -> int:
        return 1 << self.level

    def grid_positions(self) -> np.ndarray:
        """For each output frame, its input position in grid units (1 / 2**level frames)."""
        j = np.arange(self.frames_out, dtype=np.float64)
        g = np.rint(j * self.fps_in / self.fps_out * self.steps).astype(np.int64)
        return np.minimum(g, (self.frames_in - 1) * self.steps)


def retiming(frames_in: int, fps_in: float, fps: float | None = None, factor: int | None = None) -> Retiming:
    if (fps is None) == (factor is None):
        raise ValueError("give exactly one of fps or factor")
    fps_out = float(fps) if fps is not None else fps_in * factor
    ratio = fps_out / fps_in
    if ratio < 1:
        raise ValueError(f"target fps {fps_out:g} is below the input fps {fps_in:g}")
    level = max(0, math.ceil(math.log2(ratio) - 1e-9))
    return Retiming(frames_in, fps_in, fps_out, level, int(round(frames_in * ratio)))


@dataclass(frozen=True)
class Chunk:
    """Input frames [first, last] (inclusive) and the output frames they produce."""

    index: int
    first: int
    last: int
    out_start: int  # first output frame index
    positions: tuple[int, ...]  # grid positions relative to `first`, one per output frame


def plan_chunks(r: Retiming, chunk: int) -> list[Chunk]:
    """Cut the input into chunks of `chunk` pairs sharing their end frames (pure)."""
    return chunks_between(r, 0, max(r.frames_in - 1, 1), chunk, final=True)


def chunks_between(r: Retiming, first: int, last: int, chunk: int, final: bool) -> list[Chunk]:
    """The chunks of input frames [first, last] (a segment of the video; `final`: it ends
    the video): chunks of `chunk` pairs from `first`, producing the output frames whose
    positions lie in [first, last) (the final chunk also takes those at and past `last`).
    Consecutive segments cut this way produce every output frame exactly once (pure)."""
    g = r.grid_positions()
    n, s = r.frames_in, r.steps
    bounds = [(a, min(a + chunk, last, n - 1)) for a in range(first, last, chunk)] or [(first, first)]
    out = []
    for i, (a, b) in enumerate(bounds):
        rest = final and i == len(bounds) - 1
        lo = np.searchsorted(g, a * s, side="left")
        hi = len(g) if rest else np.searchsorted(g, b * s, side="left")
        out.append(Chunk(i, a, b, int(lo), tuple(int(x - a * s) for x in g[lo:hi])))
    return out


def is_cut(a: np.ndarray, b: np.ndarray, threshold: float) -> bool:
    """A hard cut: the 32×32 thumbnails are structurally unlike (SSIM < threshold)."""
    return threshold > 0 and ssim(thumbnail(a), thumbnail(b)) < threshold


@dataclass
class ChunkOutput:
    frames: list[np.ndarray]
    cuts: list[int]  # global index f of each cut between input frames f-1 and f
    midpoints: int = 0  # model calls made
    seconds: float = 0.0
    actor: str = ""


def interpolate_chunk(backend, frames: np.ndarray, chunk: Chunk, level: int, threshold: float, declared_cuts=()) -> ChunkOutput:
    """Produce a chunk's output frames with `backend` (see farm.rife.backends)."""
    steps = 1 << level
    declared = set(declared_cuts)
    cut_pairs = {
        i for i in range(len(frames) - 1)
        if (chunk.first + i + 1) in declared or is_cut(frames[i], frames[i + 1], threshold)
    }
    native: dict[int, object] = {}  # frame index → backend-native input frame
    memo: dict[tuple[int, int], object] = {}  # (pair, grid offset) → native midpoint frame
    calls = 0

    def src(i: int):
        if i not in native:
            native[i] = backend.to_native(frames[i])
        return native[i]

    def at(pair: int, offset: int):
        nonlocal calls
        if offset == 0:
            return src(pair)
        if offset == steps:
            return src(pair + 1)
        if (pair, offset) not in memo:
            lo, hi = 0, steps
            while True:  # descend the dyadic tree; ancestors are computed on the way
                mid = (lo + hi) // 2
                if (pair, mid) not in memo:
                    memo[(pair, mid)] = backend.midpoint(at(pair, lo), at(pair, hi))
                    calls += 1
                if mid == offset:
                    break
                lo, hi = (lo, mid) if offset < mid else (mid, hi)
        return memo[(pair, offset)]

    out = []
    for g in chunk.positions:
        pair, offset = divmod(g, steps)
        if offset == 0:
            out.append(frames[pair])
        elif pair in cut_pairs:
            out.append(frames[pair] if offset * 2 < steps else frames[pair + 1])
        else:
            out.append(backend.to_uint8(at(pair, offset)))
    return ChunkOutput(out, sorted(chunk.first + i + 1 for i in cut_pairs), calls)


def dropped_frame_psnr(backend, clip: np.ndarray, step: int, threshold: float = 0.2) -> tuple[float, float]:
    """Ground-truth check: keep every `step`-th frame of `clip`, interpolate the others back.
    Returns the mean PSNR over the dropped frames of the interpolation and of a plain
    linear blend of the kept neighbours."""
    clip = clip[: (len(clip) - 1) // step * step + 1]
    kept = clip[::step]
    r = retiming(len(kept), 8, factor=step)
    (chunk,) = plan_chunks(r, chunk=len(kept))
    out = interpolate_chunk(backend, kept, chunk, r.level, threshold).frames
    ours, blend = [], []
    for j in range(len(clip)):
        if j % step:
            a, b, t = kept[j // step], kept[j // step + 1], (j % step) / step
            ours.append(psnr(out[j], clip[j]))
            blend.append(psnr(np.rint((1 - t) * a + t * b), clip[j]))
    return float(np.mean(ours)), float(np.mean(blend))
