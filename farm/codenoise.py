"""Co-denoising the whole video across actors (`window.reconcile: latent`): the pure part.

At every denoising step each frame's noise prediction is the weighted mean of the
predictions of every window that covers it, summed in window order; then the scheduler
steps the whole video's latents. Spread over actors:

- each actor holds a *shard*: a contiguous run of windows and the latents of every frame
  they cover (`Shard.covers`);
- a frame covered by windows of more than one shard is *shared*; at each step every shard
  sends each *peer* (a shard whose frames overlap its own) its windows' predictions for
  the frames they share, one tensor per window (`Shard.sends`);
- each shard then folds, for every frame it covers, all the predictions for that frame in
  window order (its own and its peers'), and steps the frame. A shared frame is stepped
  by every shard that covers it, from identical inputs, so it stays identical everywhere
  and no latents ever travel between actors; only the predictions do.

Because every frame's sum is folded in window order from the same terms, wherever those
terms were computed, the frames do not depend on how the windows are spread: 1, 2, 3 or
N actors give the same bits (tests/test_codenoise.py). Sending per-window terms rather
than a per-shard partial sum is what keeps the order: with two windows of one shard on a
frame, `(a + b) + c` and `a + (b + c)` differ in the last bit.

The latents are checkpointed every `window.checkpoint_every` steps: each shard hands over
the frames it *owns* (those whose first covering window is its own), so a checkpoint is
the union of the shards' parts, and parts cut by any number of actors fit together.

No torch, no Ray: the driver plans with this; farm/latent.py does the arithmetic on the
actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from farm.blend import frame_weights
from farm.plan import Window


@dataclass(frozen=True)
class Piece:
    """Window `window`'s prediction for frames [start, end), sent to one peer."""

    window: int
    start: int
    end: int


@dataclass(frozen=True)
class Shard:
    """One actor's part of the video: windows [first, last] and the frames they cover."""

    index: int
    first: int  # first window index
    last: int  # last window index (inclusive)
    covers: tuple[int, int]  # frames [lo, hi) the shard's windows cover; it holds their latents
    owns: tuple[int, int]  # frames [lo, hi) whose first covering window is the shard's: it checkpoints and decodes them
    peers: tuple[int, ...]  # shards whose covered frames overlap this one's, in order
    sends: tuple[tuple[Piece, ...], ...]  # per peer (same order): the pieces this shard sends it

    @property
    def windows(self) -> range:
        return range(self.first, self.last + 1)


@dataclass(frozen=True)
class LatentJob:
    """What every shard of one job shares (small; sent to each actor once)."""

    windows: tuple[Window, ...]
    weights: tuple[np.ndarray, ...]  # farm.codenoise.fuse_weights
    steps: int
    seed: int
    height: int
    width: int
    checkpoints: tuple[int, ...]  # farm.codenoise.checkpoint_steps
    causal_decode: bool = False  # the pipeline's descriptor: frames decode in order, state carried
    # A local re-render (farm/rerender.py): the job is a span of a run's windows, its frame 0
    # the run's frame `offset` (noise is drawn by the run's frame numbers), and the frames
    # `fixed` are set to their stored latents after every step: `fixed_latents` holds, per
    # range, its latents after steps 1 … steps, (steps, C, F, H, W) float32.
    offset: int = 0
    fixed: tuple[tuple[int, int], ...] = ()
    fixed_latents: tuple[np.ndarray, ...] = ()


def partition(windows: Sequence[Window], actors: int) -> tuple[Shard, ...]:
    """Split the windows into `actors` contiguous runs, as even as they go (the first runs
    take one more when the count does not divide), and work out who sends what to whom."""
    n = max(1, min(actors, len(windows)))
    sizes = [len(windows) // n + (1 if j < len(windows) % n else 0) for j in range(n)]
    runs, first = [], 0
    for size in sizes:
        runs.append((first, first + size - 1))
        first += size
    covers = [(windows[a].start, windows[b].end) for a, b in runs]
    shards = []
    for j, (a, b) in enumerate(runs):
        peers = tuple(k for k in range(n) if k != j and _meet(covers[j], covers[k]))
        sends = tuple(_pieces(windows, a, b, covers[k]) for k in peers)
        owns = (0 if a == 0 else windows[a - 1].end, windows[b].end)
        shards.append(Shard(j, a, b, covers[j], owns, peers, sends))
    return tuple(shards)


def _meet(x: tuple[int, int], y: tuple[int, int]) -> bool:
    return max(x[0], y[0]) < min(x[1], y[1])


def _pieces(windows: Sequence[Window], a: int, b: int, cover: tuple[int, int]) -> tuple[Piece, ...]:
    pieces = []
    for w in windows[a : b + 1]:
        lo, hi = max(w.start, cover[0]), min(w.end, cover[1])
        if lo < hi:
            pieces.append(Piece(w.index, lo, hi))
    return tuple(pieces)


def fuse_weights(windows: Sequence[Window], scheme: str) -> tuple[np.ndarray, ...]:
    """Each window's weight at each of its frames, normalised so the weights of the windows
    covering a frame sum to 1: the same profiles as the pixel crossfade (farm/blend.py),
    rounded once to float32, the precision the predictions are weighted in."""
    return tuple(w.astype(np.float32) for w in frame_weights(windows, scheme))


def checkpoint_steps(steps: int, every: int, keep_steps: bool = False) -> tuple[int, ...]:
    """The step counts after which the latents are saved: every `every` steps, and the end
    (so a finished job's latents can be decoded again without denoising); every step with
    `keep_steps` (window.keep_steps: a later edit re-renders locally, farm/rerender.py)."""
    if keep_steps:
        return tuple(range(1, steps + 1))
    return tuple(sorted({s for s in range(every, steps, every)} | {steps}))


def missing(parts: Sequence[tuple[int, int]], frames: int) -> list[tuple[int, int]]:
    """The frame ranges of [0, frames) that no part covers (empty: the checkpoint is whole)."""
    gaps, at = [], 0
    for lo, hi in sorted(parts):
        if lo > at:
            gaps.append((at, lo))
        at = max(at, hi)
    if at < frames:
        gaps.append((at, frames))
    return gaps

