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


# --- Flicker and seams -------------------------------------------------------------------
#
# The flicker curve is VBench's temporal-flickering measure: for every pair of consecutive
# frames, the mean absolute difference over all pixels and channels (0–255). Its score is
# `(255 - mean(curve)) / 255`: 1.0 for a still clip, 0.0 for one alternating black/white.
# Diff `i` is the change from frame `i` to frame `i + 1`.


def frame_diffs(frames) -> np.ndarray:
    """The flicker curve of a clip (N, H, W[, C]): N-1 mean absolute differences, 0–255."""
    x = np.asarray(frames).astype(np.int16)
    if len(x) < 2:
        return np.zeros(0, dtype=np.float64)
    return np.abs(np.diff(x, axis=0)).reshape(len(x) - 1, -1).mean(axis=1, dtype=np.float64)


def flicker_score(curve) -> float | None:
    """VBench's temporal-flickering score `(255 - mean(curve)) / 255`; None for < 2 frames."""
    curve = np.asarray(curve, dtype=np.float64)
    return float((255.0 - curve.mean()) / 255.0) if curve.size else None


class FlickerMeter:
    """The flicker curve, measured while frames stream past.

    `add(frame)` keeps only the previous frame and appends one float per pair of frames,
    so a long video costs one frame of memory plus one float per frame.
    """

    def __init__(self):
        self._prev: np.ndarray | None = None
        self._curve: list[float] = []

    def add(self, frame) -> None:
        cur = np.asarray(frame).astype(np.int16)  # a copy: later edits to `frame` do not leak in
        if self._prev is not None:
            if cur.shape != self._prev.shape:
                raise ValueError(f"frame shape {cur.shape} differs from the previous {self._prev.shape}")
            self._curve.append(float(np.abs(cur - self._prev).mean(dtype=np.float64)))
        self._prev = cur

    @property
    def frames(self) -> int:
        return len(self._curve) + (self._prev is not None)

    @property
    def curve(self) -> list[float]:
        return list(self._curve)

    @property
    def score(self) -> float | None:
        return flicker_score(self._curve)


def seam_ratios(diffs, windows, floor: float = 0.5) -> list[dict]:
    """How much more the picture changes across each window seam than inside the windows.

    `diffs` is the flicker curve of the blended video (diff `i`: frame `i` → `i + 1`) and
    `windows` the plan's windows (`farm.plan.Window`, in order). For the seam between
    windows k and k+1, the *handover* is every frame pair touching their shared frames:
    diffs `next.start - 1` … `prev.end - 1`, i.e. from the last frame only the earlier
    window covers to the first frame only the later one covers (overlap + 1 diffs; for
    overlap 0, the single diff across the cut). Its `jump` is the largest of those diffs:
    the strict choice, so one visible step inside a crossfade is not averaged away.

    The `interior` is the median diff over the frame pairs of both windows that no seam
    hands over (all their pairs if overlaps leave none). `jump_ratio = jump / interior`,
    both raised to at least `floor` grey levels first, so a still clip scores 1.0 and a
    jump after stillness stays finite. About 1.0 means the seam cannot be seen.

    Each seam is `{window, frame, handover, jump, at, interior, jump_ratio}`: `window` is
    k, `frame` the first frame of window k+1, `handover` the [first, last] frames spanned,
    and `at` the frame the largest change lands on.
    """
    d = np.asarray(diffs, dtype=np.float64)
    windows = list(windows)
    if windows and len(d) != windows[-1].end - 1:
        raise ValueError(f"{len(d)} diffs do not fit windows ending at frame {windows[-1].end}")
    spans = [(nxt.start - 1, prev.end - 1) for prev, nxt in zip(windows, windows[1:])]
    handed = np.zeros(len(d), dtype=bool)
    for lo, hi in spans:
        handed[lo : hi + 1] = True
    seams = []
    for (lo, hi), prev, nxt in zip(spans, windows, windows[1:]):
        jump_i = lo + int(np.argmax(d[lo : hi + 1]))
        around = np.arange(prev.start, nxt.end - 1)  # pairs with both frames in the two windows
        inner = around[~handed[around]]
        interior = float(np.median(d[inner if inner.size else around]))
        ratio = max(float(d[jump_i]), floor) / max(interior, floor)
        seams.append({
            "window": prev.index,
            "frame": nxt.start,
            "handover": [lo, hi + 1],
            "jump": round(float(d[jump_i]), 4),
            "at": jump_i + 1,
            "interior": round(interior, 4),
            "jump_ratio": round(ratio, 4),
        })
    return seams


def seam_summary(seams: list[dict]) -> dict:
    """`seam_ratio_max` and `seam_ratio_median` over the seams; None for a single window."""
    r = [s["jump_ratio"] for s in seams]
    return {
        "seam_ratio_max": max(r) if r else None,
        "seam_ratio_median": float(np.median(r)) if r else None,
    }


def flicker_report(curve, windows, disagreement: dict[int, float] | None = None, fused: bool = False,
                   runs: list[tuple[int, list]] | None = None, cuts: tuple[int, ...] = ()) -> dict:
    """The report's flicker fields: `flicker {score, curve}`, `seams` and their summary.
    `disagreement` (seam k → mean absolute difference, in levels, of windows k and k+1 over
    the frames they share, before blending) is added to each seam it names. In a
    co-denoised job (`fused`) the windows never had frames of their own to disagree on:
    each seam says `fused: true` instead.

    A film of shots (farm/shots.py) gives `runs` instead of `windows`: (first frame, its
    windows in its own frames) for each run, whose seams are measured inside it; and its
    `cuts` (the first frame of each shot after a cut): a cut is no seam, its pair is left
    out of the flicker score (the curve keeps it), and `flicker.cuts` lists them."""
    if runs is None:
        seams = seam_ratios(curve, windows)
    else:
        seams = [_shifted(seam, start) for start, ws in runs
                 for seam in seam_ratios(curve[start:start + ws[-1].end - 1], ws)]
    for seam in seams:
        if fused:
            seam["fused"] = True
        elif disagreement and seam["window"] in disagreement:
            seam["disagreement"] = round(disagreement[seam["window"]], 4)
    at_cut = set(cuts)
    inside = [c for i, c in enumerate(curve) if i + 1 not in at_cut]
    flicker = {"score": flicker_score(inside), "curve": [round(float(c), 4) for c in curve]}
    if runs is not None:
        flicker["cuts"] = list(cuts)
    return {"flicker": flicker, "seams": seams} | seam_summary(seams)


def _shifted(seam: dict, by: int) -> dict:
    """A seam measured inside a run, numbered as in the video."""
    return seam | {"frame": seam["frame"] + by, "at": seam["at"] + by,
                   "handover": [f + by for f in seam["handover"]]}
