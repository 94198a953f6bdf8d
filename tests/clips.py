"""Ground-truth clips cut from photographs that scikit-image ships."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import data


def pan_zoom(n: int, size: int = 128, photo=None, dx: float = 2.5, zoom: float = 0.006) -> np.ndarray:
    """`n` frames of a camera panning right and zooming in over a photograph (uint8 RGB)."""
    img = Image.fromarray(photo if photo is not None else data.astronaut())
    w, h = img.size
    frames = []
    for i in range(n):
        side = (min(w, h) * 0.6) / (1 + zoom * i)
        cx, cy = w * 0.35 + dx * i, h * 0.4
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        frames.append(np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box)))
    return np.stack(frames)


def hard_cut(n_each: int, size: int = 128) -> np.ndarray:
    """A pan over one photograph, then a hard cut to a pan over another."""
    return np.concatenate([pan_zoom(n_each, size), pan_zoom(n_each, size, photo=data.coffee())])
