"""Colour conversion and matching (farm/color.py), against known values."""

from __future__ import annotations

import numpy as np
import pytest

from farm.color import DriftMeter, color_distance, lab_to_rgb, match_statistics, mean_lab, rgb_to_lab

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def test_lab_of_known_colours_and_the_round_trip():
    np.testing.assert_allclose(rgb_to_lab(np.array([1.0, 1.0, 1.0])), [100.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(rgb_to_lab(np.array([1.0, 0.0, 0.0])), [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(rgb_to_lab(np.array([0.0, 0.0, 0.0])), [0.0, 0.0, 0.0], atol=1e-9)
    rgb = np.random.default_rng(0).random((64, 64, 3))
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-9)


def test_each_frame_gets_the_reference_statistics_and_keeps_its_own_picture():
    rng = np.random.default_rng(1)
    reference = rng.random((32, 32, 3)) * 0.5 + 0.25
    drifted = np.clip(rng.random((4, 32, 32, 3)) * 0.4 + np.array([0.5, 0.3, 0.1]), 0, 1)  # warm, low contrast
    matched = match_statistics(drifted, reference)
    assert matched.dtype == np.float32 and matched.shape == drifted.shape
    ref_lab = rgb_to_lab(reference).reshape(-1, 3)
    for frame in matched:
        lab = rgb_to_lab(frame).reshape(-1, 3)
        np.testing.assert_allclose(lab.mean(axis=0), ref_lab.mean(axis=0), atol=0.5)
        np.testing.assert_allclose(lab.std(axis=0), ref_lab.std(axis=0), rtol=0.05, atol=0.5)
    # The picture is the same picture: the matched frame follows the original pixel for pixel.
    assert np.corrcoef(matched[0][..., 1].ravel(), drifted[0][..., 1].ravel())[0, 1] > 0.95


def test_drift_is_the_distance_of_each_window_s_last_frame_from_the_first_frame():
    grey = np.full((2, 16, 16, 3), 128, np.uint8)
    warm = grey.copy()
    warm[..., 0] = 160
    meter = DriftMeter()
    meter.add(1, warm)  # windows may arrive in any order
    meter.add(0, grey)
    drift = meter.per_window()
    assert drift[0] == 0.0
    assert drift[1] == round(color_distance(mean_lab(warm[-1]), mean_lab(grey[0])), 3) > 5
