"""Colour: sRGB ↔ CIE L*a*b* (D65), matching a window's colour statistics to a reference
frame, and the colour distance the report calls drift. numpy only.

Matching (SVD's `svd.color_match`): each frame's L*a*b* channels are shifted and scaled so
their means and standard deviations equal the reference frame's (Reinhard-style colour
transfer, as colour-match tools for video diffusion do it). In an SVD chain the reference
is the window's conditioning frame, itself a matched frame of the window before, so every
frame keeps the colour statistics of `svd.image` and the chain cannot drift. The price: a
scene whose colours should change over time (a sunset) is held to the first picture's;
turn matching off for such a job.

Drift: the CIE76 distance (ΔE) between the mean L*a*b* colours of two frames: how far the
overall colour moved, whatever moved inside the picture.
"""

from __future__ import annotations

import numpy as np

from farm.util import thumbnail

_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65
_EPS = (6 / 29) ** 3


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1], (..., 3) → L*a*b* (L in 0–100)."""
    c = np.asarray(rgb, dtype=np.float64)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(t > _EPS, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """L*a*b* → sRGB in [0, 1] (clipped: a matched colour may fall outside the gamut)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    t = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE
    linear = np.clip(t @ _XYZ_TO_RGB.T, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def match_statistics(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`frames` (F, H, W, 3) float in [0, 1] with each frame's L*a*b* channel means and
    deviations moved to `reference`'s (H', W', 3) float in [0, 1]. float32."""
    lab = rgb_to_lab(frames)
    ref = rgb_to_lab(reference).reshape(-1, 3)
    mean = lab.mean(axis=(1, 2), keepdims=True)
    std = lab.std(axis=(1, 2), keepdims=True)
    scale = np.where(std > 1e-6, ref.std(axis=0) / np.maximum(std, 1e-6), 1.0)
    matched = (lab - mean) * scale + ref.mean(axis=0)
    return lab_to_rgb(matched).astype(np.float32)


def mean_lab(frame: np.ndarray) -> np.ndarray:
    """The mean L*a*b* colour of a uint8 frame (H, W, 3)."""
    return rgb_to_lab(np.asarray(frame, dtype=np.float64) / 255.0).reshape(-1, 3).mean(axis=0)


def color_distance(a: np.ndarray, b: np.ndarray) -> float:
    """CIE76 ΔE between two mean L*a*b* colours (`mean_lab`)."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


class DriftMeter:
    """Colour drift along the video: for each window, the distance of its last frame's mean
    colour from the first window's first frame's (ΔE). Frames are sampled with a stride
    (a 64-pixel thumbnail), so it costs the driver next to nothing."""

    def __init__(self):
        self._first: np.ndarray | None = None
        self._last: dict[int, np.ndarray] = {}

    def add(self, index: int, frames: np.ndarray) -> None:
        if index == 0:
            self._first = mean_lab(thumbnail(frames[0], 64))
        self._last[index] = mean_lab(thumbnail(frames[-1], 64))

    def per_window(self) -> dict[int, float]:
        if self._first is None:
            return {}
        return {i: round(color_distance(c, self._first), 3) for i, c in sorted(self._last.items())}
