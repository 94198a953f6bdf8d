"""Flicker and seam measures, and the drift proxy that compares the blend modes."""

from __future__ import annotations

import numpy as np
import pytest

from farm.drift import apply_drift, seam_table, window_drifts
from farm.metrics import FlickerMeter, flicker_report, flicker_score, frame_diffs, seam_ratios, seam_summary
from farm.plan import split
from tests.clips import pan_zoom

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


@pytest.fixture(scope="module")
def clip():
    return pan_zoom(64, 128, zoom=0.004)


def test_still_clip_scores_one_and_its_seams_are_invisible():
    frames = np.full((20, 8, 8, 3), 77, np.uint8)
    curve = frame_diffs(frames)
    assert curve.shape == (19,) and not curve.any()
    assert flicker_score(curve) == 1.0
    seams = seam_ratios(curve, split(20, 8, 2))
    assert seams and all(s["jump_ratio"] == 1.0 for s in seams)


def test_black_white_alternation_scores_zero():
    frames = np.zeros((9, 4, 4, 3), np.uint8)
    frames[1::2] = 255
    assert flicker_score(frame_diffs(frames)) == 0.0


def test_diff_is_mean_absolute_difference_over_pixels_and_channels():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    a[1, ..., 0] = 10  # one channel up by 10: a third of 10 on average
    a[1, 0, 0, 1] = 255  # and no uint8 wrap-around either way
    expected = (10 * 16 + 255) / 48
    assert frame_diffs(a)[0] == pytest.approx(expected)
    assert frame_diffs(a[::-1])[0] == pytest.approx(expected)


def test_streaming_meter_equals_the_array_function():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 16, 24, 3), dtype=np.uint8)
    meter = FlickerMeter()
    for f in frames:
        meter.add(f)
    assert meter.frames == 12
    assert meter.curve == pytest.approx(frame_diffs(frames).tolist(), abs=1e-12)
    assert meter.score == pytest.approx(flicker_score(frame_diffs(frames)))


def test_meter_keeps_its_own_copy_and_rejects_a_new_size():
    meter = FlickerMeter()
    f = np.zeros((4, 4, 3), np.uint8)
    meter.add(f)
    f[:] = 200  # the caller reuses its buffer
    meter.add(np.zeros((4, 4, 3), np.uint8))
    assert meter.curve == [0.0]
    with pytest.raises(ValueError, match="shape"):
        meter.add(np.zeros((5, 4, 3), np.uint8))


def test_short_clips_have_no_score_and_one_window_no_seams():
    meter = FlickerMeter()
    assert meter.score is None
    meter.add(np.zeros((2, 2, 3), np.uint8))
    assert meter.score is None and meter.curve == []
    out = flicker_report(meter.curve, split(1, 1, 0))
    assert out["seams"] == [] and out["seam_ratio_max"] is None and out["seam_ratio_median"] is None


def _with_jump(clip, frame: int, levels: int = 40) -> np.ndarray:
    """`clip` brightened by `levels` from `frame` on: one visible step into `frame`."""
    out = clip.astype(np.int16)
    out[frame:] += levels
    return np.clip(out, 0, 255).astype(np.uint8)


def test_a_jump_inside_one_handover_flags_that_seam_only(clip):
    windows = split(len(clip), 16, 4)
    seam = 2
    cut = windows[seam + 1].start + 2  # where a hard blend cuts the overlap
    seams = seam_ratios(frame_diffs(_with_jump(clip, cut)), windows)
    assert [s["frame"] for s in seams] == [w.start for w in windows[1:]]
    assert seams[seam]["jump_ratio"] > 3
    assert seams[seam]["at"] == cut
    others = [s["jump_ratio"] for i, s in enumerate(seams) if i != seam]
    assert max(others) < 1.1
    assert seam_summary(seams)["seam_ratio_max"] == seams[seam]["jump_ratio"]


@pytest.mark.parametrize("overlap", [0, 3, 4])
def test_handover_spans_from_the_last_frame_of_one_window_to_the_first_of_the_next(clip, overlap):
    windows = split(50, 16, overlap)  # 50 frames: the last window moves back, its overlap grows
    clip = clip[:50]
    for k, (prev, nxt) in enumerate(zip(windows, windows[1:])):
        first, last = nxt.start, prev.end  # first and last frame a step may land on
        assert seam_ratios(frame_diffs(clip), windows)[k]["handover"] == [first - 1, last]
        for landing, counted in ((first, True), (last, True), (first - 1, False), (last + 1, False)):
            if not 0 < landing < 50:
                continue
            ratio = seam_ratios(frame_diffs(_with_jump(clip, landing)), windows)[k]["jump_ratio"]
            assert (ratio > 3) is counted, (k, landing, ratio)


def test_static_interior_keeps_the_ratio_finite():
    frames = np.zeros((24, 8, 8, 3), np.uint8)
    frames[12:] = 30  # the only change in the clip, at the seam
    seams = seam_ratios(frame_diffs(frames), split(24, 12, 0))
    assert np.isfinite(seams[0]["jump_ratio"]) and seams[0]["jump_ratio"] > 10


def test_seam_ratios_rejects_a_curve_of_another_video():
    with pytest.raises(ValueError, match="diffs"):
        seam_ratios(np.zeros(10), split(20, 8, 2))


def test_drift_is_per_window_and_deterministic(clip):
    a, b = window_drifts(5, seed=3), window_drifts(5, seed=3)
    assert a == b and len(set(a)) == 5
    moved = apply_drift(clip[:4], a[0])
    assert moved.shape == clip[:4].shape and moved.dtype == np.uint8
    assert 0 < np.abs(moved.astype(int) - clip[:4]).mean() < 20


def test_clean_footage_has_invisible_seams_in_every_mode(clip):
    table = seam_table(clip, colour=0, brightness=0, shift=0)
    for blend, row in table.items():
        assert row["seam_ratio_max"] < 1.05, blend


def test_drift_proxy_crossfades_hide_what_a_hard_cut_shows(clip):
    table = seam_table(clip, length=16, overlap=4, seed=0)
    hard, linear, cosine = (table[b]["seam_ratio_max"] for b in ("hard", "linear", "cosine"))
    assert linear <= 1.10
    # "2× better" on the excess over an invisible seam (ratio 1.0).
    assert hard - 1 >= 2 * (linear - 1)
    assert cosine < hard
    assert [s["frame"] for s in table["hard"]["seams"]] == [w.start for w in split(64, 16, 4)[1:]]
