"""A local re-render inside a co-denoised run (temporal inpainting): the pure part.

A run co-denoised with `window.keep_steps` leaves its latents after every step in the
store. When the same run is rendered again with some windows changed (their keys differ:
a prompt edited in frames A–B), only the windows within `window.rerender_radius` windows
of the changed ones are denoised again:

    windows    the changed windows, widened by the radius on each side (one span)
    frames     [lo, hi): the frames those windows cover
    free       [a, b): the frames no other window covers, denoised anew
    fixed      the rest of [lo, hi) (what the windows next to the span also cover): set to
               their stored latents of each step, after every step (fixed boundary values,
               RePaint-style), so the windows of the span are fused with them as usual

Every frame outside `free` keeps its stored latents at every step, so it decodes to the
bits of the first render. The windows of the span are weighted as in the whole run (their
fuse weights are the run's), and a free frame is folded from the same windows in the same
order as a whole render would, so the arithmetic is the whole run's wherever it runs;
with radius `all` (or `farm render --full`) the run is rendered whole.

No torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from farm.plan import Window

if TYPE_CHECKING:
    from farm.codenoise import LatentJob
    from farm.tasks import WindowTask


@dataclass(frozen=True)
class Region:
    """The part of a run a local re-render denoises again."""

    windows: range  # indices of the windows re-rendered
    changed: tuple[int, ...]  # the windows whose keys changed
    frames: tuple[int, int]  # [lo, hi): what they cover
    free: tuple[int, int]  # [a, b): what only they cover: denoised anew
    radius: int

    @property
    def fixed(self) -> tuple[tuple[int, int], ...]:
        """The frame ranges of `frames` held to the stored latents (left, right; empty ones left out)."""
        (lo, hi), (a, b) = self.frames, self.free
        return tuple(r for r in ((lo, a), (b, hi)) if r[0] < r[1])

    def describe(self) -> str:
        w, (a, b) = self.windows, self.free
        changed = ", ".join(str(i) for i in self.changed[:5]) + (" …" if len(self.changed) > 5 else "")
        return (f"a local re-render: windows {w.start}–{w.stop - 1} (changed: {changed}; window.rerender_radius "
                f"{self.radius}), frames {a}–{b - 1} denoised anew between the stored latents of frames "
                f"{self.frames[0]}–{a - 1} and {b}–{self.frames[1] - 1}; every other frame is the last render's")

    def to_dict(self) -> dict:
        return {"windows": [self.windows.start, self.windows.stop - 1], "changed": list(self.changed),
                "frames": list(self.frames), "free": list(self.free), "radius": self.radius}


def local_region(old_keys: Sequence[str], new_keys: Sequence[str], windows: Sequence[Window],
                 radius: int | str) -> Region | None:
    """What a run whose windows' keys went from `old_keys` to `new_keys` re-renders
    locally; None when it renders whole instead (radius `all`, another number of windows,
    nothing changed, or a span that reaches both ends of the run)."""
    n = len(windows)
    if radius == "all" or len(old_keys) != n or len(new_keys) != n:
        return None
    changed = tuple(i for i, (a, b) in enumerate(zip(old_keys, new_keys)) if a != b)
    if not changed:
        return None
    first, last = max(0, changed[0] - radius), min(n - 1, changed[-1] + radius)
    if first == 0 and last == n - 1:
        return None
    lo, hi = windows[first].start, windows[last].end
    a = max([lo] + [w.end for w in windows[:first]])
    b = min([hi] + [w.start for w in windows[last + 1 :]])
    if a >= b:
        return None
    return Region(range(first, last + 1), changed, (lo, hi), (a, b), int(radius))


def span_job(job: "LatentJob", region: Region, stored: Callable[[int, int, int], np.ndarray]) -> "LatentJob":
    """The co-denoising job of `region`'s windows of the run `job`: their frames numbered
    from the region's first (`offset`: the noise is still drawn by the run's frames),
    their fuse weights the run's, every step checkpointed, and the fixed frames' latents of
    every step read with `stored(step, lo, hi)` (the last render's, in the run's frames)."""
    lo = region.frames[0]
    first, stop = region.windows.start, region.windows.stop
    windows = tuple(replace(w, index=j, start=w.start - lo, end=w.end - lo)
                    for j, w in enumerate(job.windows[first:stop]))
    steps = range(1, job.steps + 1)
    return replace(job, windows=windows, weights=job.weights[first:stop], checkpoints=tuple(steps), offset=lo,
                   fixed=tuple((a - lo, b - lo) for a, b in region.fixed),
                   fixed_latents=tuple(np.stack([stored(s, a, b) for s in steps]) for a, b in region.fixed))


def span_tasks(tasks: Sequence["WindowTask"], region: Region) -> list["WindowTask"]:
    """The region's windows' tasks, indexed as the span job's windows (their frames, and so
    their prompts and inputs, stay the run's)."""
    return [replace(tasks[i], window=replace(tasks[i].window, index=j)) for j, i in enumerate(region.windows)]


def outside(region: Region, frames: int) -> tuple[tuple[int, int], ...]:
    """The frame ranges of a run of `frames` frames that the region does not cover: their
    latents are the last render's at every step."""
    lo, hi = region.frames
    return tuple(r for r in ((0, lo), (hi, frames)) if r[0] < r[1])
