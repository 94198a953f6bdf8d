"""Blend weights and the streaming reconciler, on synthetic arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.blend import SCHEMES, Reconciler, frame_weights, ramp, window_profile
from farm.plan import split

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


@pytest.mark.parametrize("scheme", ["linear", "cosine"])
@pytest.mark.parametrize("n", [1, 2, 4, 7, 12])
def test_pairwise_weights_sum_to_one_and_rise(scheme, n):
    r = ramp(scheme, n)
    assert np.all(np.diff(r) > 0) and 0 < r[0] and r[-1] < 1
    # The earlier window's tail uses 1 - r over the same frames.
    np.testing.assert_allclose(r + (1 - r), 1.0)
    np.testing.assert_allclose(r, 1 - r[::-1])  # symmetric hand-over


def test_linear_values():
    np.testing.assert_allclose(ramp("linear", 4), [0.2, 0.4, 0.6, 0.8])


def test_hard_takes_earlier_window_up_to_the_middle():
    np.testing.assert_array_equal(ramp("hard", 4), [0, 0, 1, 1])
    np.testing.assert_array_equal(ramp("hard", 5), [0, 0, 0, 1, 1])


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown blend scheme"):
        ramp("smooth", 4)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 24).flatmap(lambda L: st.tuples(st.just(L), st.integers(0, L - 1), st.integers(L, 120))),
       st.sampled_from(SCHEMES))
def test_normalised_weights_sum_to_one_at_every_frame(shape, scheme):
    length, overlap, frames = shape
    ws = split(frames, length, overlap)
    total = np.zeros(frames)
    for w, wt in zip(ws, frame_weights(ws, scheme)):
        total[w.start : w.end] += wt
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_two_window_profiles_need_no_normalising():
    ws = split(28, 16, 4)
    a, b = (window_profile(w, "cosine") for w in ws)
    np.testing.assert_allclose(a[12:] + b[:4], 1.0)
    np.testing.assert_array_equal(a[:12], 1.0)


def _windows_of(video, ws):
    return {w.index: video[w.start : w.end] for w in ws}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_identical_overlaps_reconstruct_the_video_exactly(scheme):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(52, 8, 8, 3), dtype=np.uint8)
    ws = split(52, 16, 4)
    rec = Reconciler(ws, scheme)
    out = []
    for i, frames in reversed(list(_windows_of(video, ws).items())):  # worst arrival order
        rec.add(i, frames)
        out.extend(rec.ready())
    assert rec.done
    np.testing.assert_array_equal(np.stack(out), video)


def test_crossfade_values_between_two_constant_windows():
    ws = split(28, 16, 4)
    rec = Reconciler(ws, "linear")
    rec.add(0, np.zeros((16, 2, 2, 3), np.uint8))
    rec.add(1, np.full((16, 2, 2, 3), 100, np.uint8))
    out = np.stack(list(rec.ready()))[:, 0, 0, 0]
    np.testing.assert_array_equal(out[:12], 0)
    np.testing.assert_array_equal(out[12:16], [20, 40, 60, 80])
    np.testing.assert_array_equal(out[16:], 100)


def test_hard_blend_is_a_cut_in_the_middle():
    ws = split(28, 16, 4)
    rec = Reconciler(ws, "hard")
    rec.add(0, np.zeros((16, 1, 1, 3), np.uint8))
    rec.add(1, np.full((16, 1, 1, 3), 100, np.uint8))
    out = np.stack(list(rec.ready()))[:, 0, 0, 0]
    np.testing.assert_array_equal(out[12:16], [0, 0, 100, 100])


def test_frames_stream_as_soon_as_the_prefix_is_complete_and_windows_are_freed():
    ws = split(64, 16, 4)  # windows start at 0, 12, 24, 36, 48
    rec = Reconciler(ws, "linear")
    blank = np.zeros((16, 1, 1, 3), np.uint8)
    rec.add(1, blank)
    assert list(rec.ready()) == []  # frame 0 needs window 0
    rec.add(0, blank)
    assert len(list(rec.ready())) == 24  # frames 0..23; frame 24 needs window 2
    assert rec.first_unfinished_window == 1 and 0 not in rec._parts
    rec.add(2, blank)
    assert len(list(rec.ready())) == 12 and rec.first_unfinished_window == 2


def test_wrong_frame_count_is_refused():
    rec = Reconciler(split(28, 16, 4), "linear")
    with pytest.raises(ValueError, match="returned 15 frames, expected 16"):
        rec.add(0, np.zeros((15, 1, 1, 3), np.uint8))


def test_pyramid_weighs_frames_by_their_distance_from_the_window_edges_and_flat_averages():
    ws = split(28, 16, 4)  # windows 0-15 and 12-27
    np.testing.assert_array_equal(window_profile(ws[0], "pyramid")[:9], [1, 2, 3, 4, 5, 6, 7, 8, 8])
    a, b = frame_weights(ws, "pyramid")
    # Frames 12-15: window 0 weighs 4, 3, 2, 1 (its edge), window 1 weighs 1, 2, 3, 4.
    np.testing.assert_allclose(a[12:], [0.8, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(b[:4], [0.2, 0.4, 0.6, 0.8])
    a, b = frame_weights(ws, "flat")
    np.testing.assert_allclose(a[12:], 0.5)
    np.testing.assert_allclose(a[:12], 1.0)


@pytest.mark.parametrize("scheme", ["linear", "hard", "flat"])
def test_the_reconciler_says_how_much_neighbouring_windows_disagree_in_their_overlap(scheme):
    """Windows 0 and 1 share frames 12-15 and differ there by 10 levels; windows 1 and 2
    agree: the disagreement is measured before blending, whatever the scheme."""
    ws = split(40, 16, 4)
    video = np.random.default_rng(0).integers(50, 200, size=(40, 8, 8, 3)).astype(np.uint8)
    parts = _windows_of(video, ws)
    parts[1] = parts[1].copy()
    parts[1][:4] += 10
    r = Reconciler(ws, scheme)
    for i in (2, 0, 1):
        r.add(i, parts[i])
    assert len(list(r.ready())) == 40
    assert r.disagreement() == {0: 10.0, 1: 0.0}
