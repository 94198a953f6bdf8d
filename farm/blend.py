"""Reconciling overlapping windows: weight → accumulate → normalise.

Each window gets a weight per frame: 1 in its own middle, ramping in over the frames it
shares with the window before and out over the frames it shares with the window after.
A frame's value is the weighted sum over the windows that cover it, divided by the sum
of their weights. The schemes:

- `linear`: weights rise in equal steps across the overlap;
- `cosine`: a raised-cosine ramp, flat at both ends, so the hand-over starts gently;
- `hard`: no blend, a plain cut in the middle of the overlap (the earlier window up to
  the middle, the later one after); kept for comparison;
- `pyramid`: each window weighs its frames by their distance from its own edges (1, 2, …
  up to its middle and down again), the profile AnimateDiff-Evolved's context windows
  default to;
- `flat`: every window covering a frame counts the same (FreeNoise's default): a plain mean.

`linear`, `cosine` and `hard` shape only the frames a window shares; `pyramid` and `flat`
are profiles over the whole window, which normalising turns into a crossfade.

Where two windows overlap, their linear or cosine weights already sum to 1; normalising
makes the same code right where more than two windows cover a frame (overlap > length/2).
The arithmetic works on numpy arrays and torch tensors alike, so the same weights can
fuse latents as well as pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from farm.plan import Window
from farm.util import levels_to_uint8

SCHEMES = ("linear", "cosine", "hard", "pyramid", "flat")
#: Schemes that weigh every frame of a window, not only the frames it shares.
WHOLE_WINDOW = {
    "pyramid": lambda n: np.minimum(np.arange(1, n + 1), np.arange(n, 0, -1)).astype(np.float64),
    "flat": lambda n: np.ones(n, dtype=np.float64),
}


def ramp(scheme: str, n: int) -> np.ndarray:
    """Weight of the later window at each of the `n` frames two windows share (increasing)."""
    k = np.arange(n, dtype=np.float64)
    if scheme == "linear":
        return (k + 1) / (n + 1)
    if scheme == "cosine":
        return 0.5 - 0.5 * np.cos(np.pi * (k + 1) / (n + 1))
    if scheme == "hard":
        return (k >= n // 2).astype(np.float64) if n % 2 == 0 else (k >= n / 2).astype(np.float64)
    raise ValueError(f"unknown blend scheme {scheme!r}; expected one of {SCHEMES}")


def window_profile(window: Window, scheme: str) -> np.ndarray:
    """Un-normalised weight of each of the window's own frames."""
    if scheme in WHOLE_WINDOW:
        return WHOLE_WINDOW[scheme](window.length)
    w = np.ones(window.length, dtype=np.float64)
    if window.overlap_prev:
        w[: window.overlap_prev] *= ramp(scheme, window.overlap_prev)
    if window.overlap_next:
        w[window.length - window.overlap_next :] *= 1.0 - ramp(scheme, window.overlap_next)
    return w


def frame_weights(windows: Sequence[Window], scheme: str) -> list[np.ndarray]:
    """Normalised weights: for every frame, the weights of the windows covering it sum to 1."""
    total = np.zeros(windows[-1].end, dtype=np.float64)
    profiles = [window_profile(w, scheme) for w in windows]
    for w, p in zip(windows, profiles):
        total[w.start : w.end] += p
    if np.any(total <= 0):
        raise ValueError("blend weights vanish at some frame; the windows do not cover the video")
    return [p / total[w.start : w.end] for w, p in zip(windows, profiles)]


class Reconciler:
    """Blends windows as they arrive, in any order, and releases finished frames in order.

    `add(index, frames)` stores one window's frames (F, H, W, C); `ready()` yields every
    frame whose covering windows have all arrived, from the first not yet released.
    A window's frames are dropped as soon as the last frame it covers is released, so
    memory holds only the windows around the moving front of the video.

    On the way it measures how much each pair of neighbouring windows *disagree* where they
    overlap, before blending: the mean absolute difference of their own frames, in the
    frames' levels (`disagreement()`). That is what a crossfade has to hide.
    """

    def __init__(self, windows: Sequence[Window], scheme: str):
        self.windows = tuple(windows)
        self.weights = frame_weights(self.windows, scheme)
        self.frames = self.windows[-1].end
        self._parts: dict[int, object] = {}
        self._disagree: dict[int, list[float]] = {}  # seam k (windows k, k+1) → per-frame differences
        self.next_frame = 0
        self._first = 0  # first window whose frames may still be needed
        # For every frame, the index range [lo, hi] of windows that cover it.
        self._lo = np.zeros(self.frames, dtype=np.int64)
        self._hi = np.zeros(self.frames, dtype=np.int64)
        for w in reversed(self.windows):
            self._lo[w.start : w.end] = w.index
        for w in self.windows:
            self._hi[w.start : w.end] = w.index

    @property
    def done(self) -> bool:
        return self.next_frame >= self.frames

    @property
    def first_unfinished_window(self) -> int:
        """Lowest window index whose frames are not all released yet."""
        return self._first

    def add(self, index: int, frames) -> None:
        w = self.windows[index]
        if len(frames) != w.length:
            raise ValueError(f"window {index} returned {len(frames)} frames, expected {w.length}")
        self._parts[index] = frames

    def ready(self) -> Iterator[np.ndarray]:
        while self.next_frame < self.frames:
            f = self.next_frame
            lo, hi = int(self._lo[f]), int(self._hi[f])
            if any(i not in self._parts for i in range(lo, hi + 1)):
                return
            yield self._blend_frame(f, lo, hi)
            self.next_frame += 1
            while self._first < len(self.windows) and self.windows[self._first].end <= self.next_frame:
                self._parts.pop(self._first, None)
                self._first += 1

    def seam_disagreement(self, k: int) -> float | None:
        """`disagreement()` of seam k alone (None before any of its frames is blended)."""
        d = self._disagree.get(k)
        return float(np.mean(d)) if d else None

    def disagreement(self) -> dict[int, float]:
        """For each seam k (windows k and k+1) released so far, the mean absolute difference
        of the two windows' frames over the frames they share."""
        return {k: self.seam_disagreement(k) for k in sorted(self._disagree)}

    def _blend_frame(self, f: int, lo: int, hi: int):
        for k in range(lo, hi):  # neighbours that both cover frame f
            a = self._parts[k][f - self.windows[k].start]
            b = self._parts[k + 1][f - self.windows[k + 1].start]
            self._disagree.setdefault(k, []).append(disagreement(a, b))
        return weighted_frame((self._parts[i][f - self.windows[i].start], float(self.weights[i][f - self.windows[i].start]))
                              for i in range(lo, hi + 1))


def disagreement(a, b) -> float:
    """How much two windows' renders of one frame differ: mean absolute difference, in levels."""
    return float(np.abs(np.subtract(a, b, dtype=np.float32)).mean())


def weighted_frame(terms) -> np.ndarray:
    """One blended frame from (frame, weight) pairs in window order: the same float32
    arithmetic, in the same order, wherever it runs (the driver or a segment task), so the
    frames are the same bits (zero weights are skipped)."""
    acc = None
    for frame, weight in terms:
        if weight == 0.0:
            continue
        term = frame.astype(np.float32) * np.float32(weight)
        acc = term if acc is None else acc + term
    return levels_to_uint8(acc)
