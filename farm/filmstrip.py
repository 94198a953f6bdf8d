"""Filmstrips of the seams, for the HTML report: what a person needs to *see* a seam.

For the seam between windows k and k+1 the strip shows, as small thumbnails:
- the blended video from the last frame only window k covers to the first frame only
  window k+1 covers (before, inside and after the overlap);
- under the overlap, window k's own render and window k+1's own render of the same
  frames, side by side: where they disagree, the crossfade shows both at half opacity.

Only the `keep` seams whose windows disagreed most are kept (a seam is ranked as soon as
its frames are blended), and thumbnails are strided samples of the frames (no resampling
work in the driver), so memory stays a few hundred kilobytes whatever the video's length.
"""

from __future__ import annotations

import base64
import heapq
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from farm.plan import Window
from farm.util import thumbnail

#: Longest side of a thumbnail, in pixels (at most: frames are sampled with an integer stride).
THUMB = 96

#: Seams kept for the report.
KEEP = 6


def jpeg_data_uri(image: np.ndarray) -> str:
    """A small JPEG as a data URI (a few kB for a thumbnail; the page stays one file)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image)).decode("ascii")


def jpeg_bytes(image: np.ndarray, quality: int = 85) -> bytes:
    """`image` (H, W, 3) uint8 as JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class SeamStrip:
    window: int  # k: the seam between windows k and k+1
    frames: tuple[int, int]  # [first, last] blended frames shown
    overlap: tuple[int, int]  # [first, last] frames both windows render
    disagreement: float = 0.0
    blended: dict[int, np.ndarray] = field(default_factory=dict)
    own: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # window → frame → thumbnail

    def to_html_data(self) -> dict:
        """The strip with its thumbnails as JPEG data URIs (for farm.report_html)."""
        return {
            "window": self.window,
            "frames": list(self.frames),
            "overlap": list(self.overlap),
            "disagreement": round(self.disagreement, 4),
            "blended": {f: jpeg_data_uri(t) for f, t in sorted(self.blended.items())},
            "own": {w: {f: jpeg_data_uri(t) for f, t in sorted(frames.items())} for w, frames in self.own.items()},
        }


def seam_frames(prev: Window, nxt: Window) -> tuple[tuple[int, int], tuple[int, int]]:
    """A seam's strip: the [first, last] blended frames it shows (the last frame only `prev`
    covers to the first only `nxt` covers) and the [first, last] frames both render."""
    return (nxt.start - 1, prev.end), (nxt.start, prev.end - 1)


class Filmstrips:
    """Collects the strips while the driver blends: `window(index, frames, start)` as each
    window arrives, `frame(f, frame, disagreement)` as each blended frame is released."""

    def __init__(self, windows: Sequence[Window], keep: int = KEEP, size: int = THUMB):
        self.keep, self.size = keep, size
        self._open: dict[int, SeamStrip] = {}
        self._at: dict[int, list[int]] = {}  # frame → the seams whose strip shows it
        for prev, nxt in zip(windows, windows[1:]):
            strip = SeamStrip(prev.index, *seam_frames(prev, nxt))
            self._open[prev.index] = strip
            for f in range(strip.frames[0], strip.frames[1] + 1):
                self._at.setdefault(f, []).append(prev.index)
        self._kept: list[tuple[float, int, SeamStrip]] = []  # min-heap on disagreement

    def window(self, index: int, frames: np.ndarray, start: int) -> None:
        """Thumbnails of window `index`'s own frames inside the overlaps it shares."""
        for k in (index - 1, index):
            strip = self._open.get(k)
            if strip is None:
                continue
            first, last = strip.overlap
            strip.own[index] = {f: thumbnail(frames[f - start], self.size) for f in range(first, last + 1)}

    def frame(self, f: int, frame: np.ndarray, disagreement: Callable[[int], float | None]) -> None:
        """Blended frame `f`; `disagreement(k)` is seam k's (farm.blend.Reconciler)."""
        for k in self._at.pop(f, ()):
            strip = self._open[k]
            strip.blended[f] = thumbnail(frame, self.size)
            if f == strip.frames[1]:  # the seam's frames are all blended: rank it
                del self._open[k]
                strip.disagreement = disagreement(k) or 0.0
                heapq.heappush(self._kept, (strip.disagreement, -k, strip))
                if len(self._kept) > self.keep:
                    heapq.heappop(self._kept)

    def strips(self) -> list[SeamStrip]:
        """The kept seams, in video order."""
        return sorted((s for _, _, s in self._kept), key=lambda s: s.window)


def ranked(windows: Sequence[Window], parts: dict[int, dict], disagreement: dict[int, float],
           keep: int = KEEP) -> list[SeamStrip]:
    """The strips the segment tasks made (farm/segments.py; `parts`: seam → {"blended":
    {frame: thumbnail}, "own": {window: {frame: thumbnail}}}), the `keep` whose windows
    disagreed most, in video order: what `Filmstrips.strips()` gives on the driver path."""
    strips = []
    for prev, nxt in zip(windows, windows[1:]):
        part = parts.get(prev.index)
        if part is None:
            continue
        strips.append(SeamStrip(prev.index, *seam_frames(prev, nxt), disagreement.get(prev.index) or 0.0,
                                dict(part["blended"]), dict(part["own"])))
    kept = heapq.nlargest(keep, strips, key=lambda s: (s.disagreement, -s.window))
    return sorted(kept, key=lambda s: s.window)


class Storyboard:
    """One thumbnail per shot of a film (its middle frame), for the HTML report."""

    def __init__(self, frames: dict[int, int], size: int = THUMB):
        self.wanted, self.size = frames, size  # {output frame: shot}
        self.thumbs: dict[int, tuple[int, np.ndarray]] = {}

    def frame(self, index: int, frame: np.ndarray) -> None:
        if index in self.wanted:
            self.thumbs[self.wanted[index]] = (index, thumbnail(frame, self.size))

    def to_html_data(self) -> list[dict]:
        return [{"shot": shot, "frame": index, "image": jpeg_data_uri(image)}
                for shot, (index, image) in sorted(self.thumbs.items())]
