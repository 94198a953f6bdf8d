"""Image and video measures: PSNR, SSIM, and the thumbnails used for scene-cut detection."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two images of the same shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def _gray(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float64)
    return img @ np.array([0.299, 0.587, 0.114]) if img.ndim == 3 else img


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, window: int = 7) -> float:
    """Mean structural similarity (Wang et al. 2004) over uniform `window`×`window` patches,
    on the luma of RGB inputs."""
    x, y = _gray(a), _gray(b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    win = min(window, *x.shape)
    px = sliding_window_view(x, (win, win))
    py = sliding_window_view(y, (win, win))
    mx, my = px.mean(axis=(-1, -2)), py.mean(axis=(-1, -2))
    vx = px.var(axis=(-1, -2), ddof=1)
    vy = py.var(axis=(-1, -2), ddof=1)
    cov = ((px - mx[..., None, None]) * (py - my[..., None, None])).sum(axis=(-1, -2)) / (win * win - 1)
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def thumbnail(frame: np.ndarray, size: int = 32) -> np.ndarray:
    """A size×size RGB thumbnail (box filter), the input of scene-cut detection."""
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))
