"""The seams up close in the HTML report: which seams are kept and what each strip shows."""

from __future__ import annotations

import numpy as np
import pytest

from farm.blend import Reconciler
from farm.filmstrip import Filmstrips
from farm.util import thumbnail
from farm.plan import split
from farm.report_html import render_html

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def _blend_with_strips(video, ws, bumps: dict[int, int], keep: int):
    """Blend `video` cut into `ws`, window k+1's overlap with k brightened by bumps[k]."""
    parts = {w.index: video[w.start : w.end].copy() for w in ws}
    for k, bump in bumps.items():
        parts[k + 1][: ws[k].end - ws[k + 1].start] += bump
    r, strips = Reconciler(ws, "linear"), Filmstrips(ws, keep=keep, size=16)
    n = 0
    for i in reversed(range(len(ws))):  # any arrival order
        r.add(i, parts[i])
        strips.window(i, parts[i], ws[i].start)
        for frame in r.ready():
            strips.frame(n, frame, r.seam_disagreement)
            n += 1
    return strips.strips(), parts


def test_the_seams_whose_windows_disagree_most_are_kept_with_both_windows_own_frames():
    ws = split(64, 16, 4)  # seams after windows 0..3
    video = np.random.default_rng(1).integers(0, 200, size=(64, 32, 32, 3)).astype(np.uint8)
    strips, parts = _blend_with_strips(video, ws, {0: 5, 1: 40, 2: 0, 3: 20}, keep=2)
    assert [s.window for s in strips] == [1, 3]  # the two worst, in video order
    s = strips[0]
    assert s.overlap == (24, 27) and s.frames == (23, 28)  # the last frame before, the first after
    assert sorted(s.blended) == list(range(23, 29))
    assert s.disagreement == 40.0
    own1, own2 = s.own[1], s.own[2]
    assert sorted(own1) == sorted(own2) == [24, 25, 26, 27]
    assert np.array_equal(own1[24], thumbnail(parts[1][24 - 12], 16))  # window 1's own frame 24
    assert np.array_equal(own2[24], thumbnail(parts[2][0], 16))
    assert own1[24].shape == (16, 16, 3)


def test_the_page_shows_the_strips_and_the_video_beside_the_plots():
    ws = split(40, 16, 4)
    video = np.random.default_rng(2).integers(0, 200, size=(40, 16, 16, 3)).astype(np.uint8)
    strips, _ = _blend_with_strips(video, ws, {0: 30}, keep=6)
    report = {"output": "/somewhere/fox.mp4", "state": "DONE", "seams": [{"window": 0, "jump_ratio": 1.5}]}
    page = render_html(report, [s.to_html_data() for s in strips])
    assert '<video class="video" controls muted loop preload="metadata" src="fox.mp4">' in page
    assert "seam 0 → 1" in page and "windows disagree 30 levels" in page
    assert page.count('src="data:image/jpeg;base64,') == 2 * (6 + 4 + 4)  # two seams: 6 blended, 4 + 4 own
    failed = render_html({"output": "/somewhere/fox.mp4", "state": "FAILED"})
    assert "<video" not in failed  # no video was written
