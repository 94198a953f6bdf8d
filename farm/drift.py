"""A drift proxy: how visible the window seams of each blend mode are on real footage.

Windows rendered independently agree on their shared frames only roughly: each has its
own small colour cast, brightness and sub-pixel position. The proxy takes clean footage
(for instance a pan over a photograph), cuts it into the planner's windows, gives every
window its own `Drift` (constant across the window, so its frames stay coherent with one
another, and different from its neighbours'), reconciles the windows with each blend mode
through `farm.blend.Reconciler`, and measures the seams with `farm.metrics.seam_ratios`.
A hard cut shows the step from one window's drift to the next; a crossfade spreads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from farm.blend import SCHEMES, Reconciler
from farm.util import levels_to_uint8
from farm.metrics import FlickerMeter, seam_ratios, seam_summary
from farm.plan import Window, split


@dataclass(frozen=True)
class Drift:
    """One window's deviation from the true footage."""

    gain: tuple[float, float, float]  # per-channel colour gain
    offset: float  # brightness, in grey levels
    dx: float  # shift to the right, in pixels
    dy: float  # shift down, in pixels


def window_drifts(n: int, seed: int = 0, colour: float = 0.04, brightness: float = 6.0,
                  shift: float = 0.2) -> list[Drift]:
    """`n` drifts drawn uniformly within ±`colour` gain, ±`brightness` levels, ±`shift` px."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gain = 1.0 + rng.uniform(-colour, colour, 3)
        offset, dx, dy = rng.uniform(-brightness, brightness), *rng.uniform(-shift, shift, 2)
        out.append(Drift(tuple(float(g) for g in gain), float(offset), float(dx), float(dy)))
    return out


def _shift(x: np.ndarray, d: float, axis: int) -> np.ndarray:
    """Move the content of `x` by `d` pixels along `axis` (linear interpolation, edges held)."""
    n = x.shape[axis]
    whole = int(np.floor(d))
    frac = np.float32(d - whole)
    src = np.arange(n) - whole
    a = np.take(x, np.clip(src, 0, n - 1), axis=axis)
    b = np.take(x, np.clip(src - 1, 0, n - 1), axis=axis)
    return a * (1 - frac) + b * frac


def apply_drift(frames: np.ndarray, drift: Drift) -> np.ndarray:
    """`frames` (F, H, W, 3) uint8 as the window with this drift would render them."""
    x = frames.astype(np.float32)
    x = _shift(_shift(x, drift.dx, axis=2), drift.dy, axis=1)
    x = x * np.asarray(drift.gain, dtype=np.float32) + np.float32(drift.offset)
    return levels_to_uint8(x)


def reconcile(parts: Sequence[np.ndarray], windows: Sequence[Window], blend: str) -> FlickerMeter:
    """Blend the windows' frames with `blend` and measure the result as it streams out."""
    rec = Reconciler(windows, blend)
    meter = FlickerMeter()
    for w in reversed(windows):  # any arrival order works; the last first is the hardest
        rec.add(w.index, parts[w.index])
        for frame in rec.ready():
            meter.add(frame)
    return meter


def seam_table(clip: np.ndarray, length: int = 16, overlap: int = 4, seed: int = 0,
               blends: Sequence[str] = SCHEMES, **strength) -> dict[str, dict]:
    """For each blend mode: `seams`, `seam_ratio_max`, `seam_ratio_median`, `flicker_score`.

    `clip` is the clean footage (N, H, W, 3) uint8; `strength` goes to `window_drifts`.
    """
    windows = split(len(clip), length, overlap)
    drifts = window_drifts(len(windows), seed, **strength)
    parts = [apply_drift(clip[w.start : w.end], d) for w, d in zip(windows, drifts)]
    table = {}
    for blend in blends:
        meter = reconcile(parts, windows, blend)
        seams = seam_ratios(meter.curve, windows)
        table[blend] = {"seams": seams, **seam_summary(seams), "flicker_score": meter.score}
    return table
