"""The segment path (`encode.path: segments`): segments of the video reconciled, metered,
interpolated and encoded in Ray tasks, joined by the driver without re-encoding. The same
job on both paths gives the same frames; no frame is dropped or repeated at a join; a
segment whose worker dies is sent again."""

from __future__ import annotations

import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from farm.errors import SpecError
from farm.interpolate import chunks_between, plan_chunks, retiming
from farm.noise import frame_seed
from farm.plan import split
from farm.segments import Encoding, choose_path, plan_segments
from farm.spec import parse_spec
from farm.video import read_frames
from tests.conftest import base_spec

ENC = Encoding(64, 64, 8.0, 0, "ultrafast")


# -- the plan (pure) ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(frames=st.integers(20, 200), length=st.integers(8, 24), overlap_share=st.floats(0, 0.7),
       segment_frames=st.integers(8, 60))
def test_segments_cut_mid_seam_and_each_frame_comes_from_the_windows_that_cover_it(frames, length, overlap_share,
                                                                                     segment_frames):
    length = min(length, frames)
    overlap = min(int(length * overlap_share), length - 1)
    windows = split(frames, length, overlap)
    segments = plan_segments(windows, "linear", segment_frames, ENC)
    assert segments[0].start == 0 and segments[-1].end == frames
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))  # each frame once
    middles = {(nxt.start + prev.end) // 2 for prev, nxt in zip(windows, windows[1:])}
    for seg in segments[1:]:
        assert seg.start in middles
    for seg in segments[:-1]:
        assert seg.end - seg.start >= segment_frames
    for seg in segments:  # every frame it blends (its own and the look-ahead) has all its windows
        covering = {w.index for w in windows if w.start <= seg.last and w.end > seg.start}
        assert {s.window for s in seg.sources} == covering


@settings(max_examples=80, deadline=None)
@given(frames=st.integers(2, 120), fps_in=st.sampled_from([8, 12, 24]), ratio=st.floats(1.0, 8.0),
       cuts=st.lists(st.integers(1, 119), max_size=6), chunk=st.integers(1, 9))
def test_consecutive_segments_make_every_output_frame_once(frames, fps_in, ratio, cuts, chunk):
    r = retiming(frames, fps_in, fps=fps_in * ratio)
    bounds = [0, *sorted({c for c in cuts if c < frames - 1}), frames]
    positions = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        final = i == len(bounds) - 2
        for c in chunks_between(r, a, b - 1 if final else b, chunk, final=final):
            assert c.out_start == len(positions)
            positions += [c.first * r.steps + p for p in c.positions]
    whole = [c.first * r.steps + p for c in plan_chunks(r, chunk) for p in c.positions]
    assert positions == whole == list(r.grid_positions())


def _svd(tmp_path, **changes) -> dict:
    image = tmp_path / "start.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    data = base_spec(tmp_path, model={"pipeline": "svd", "base": "tiny"}, svd={"image": str(image)},
                     window={"length": 8, "overlap": 1}, **changes)
    del data["prompt"], data["negative_prompt"]
    return data


def test_auto_takes_segments_for_long_jobs_that_can(tmp_path):
    spec = parse_spec(base_spec(tmp_path))
    assert choose_path(spec, 4) == "driver" and choose_path(spec, 40) == "segments"
    assert choose_path(parse_spec(_svd(tmp_path)), 40) == "driver"  # chained windows


def test_the_segment_path_refuses_a_chained_pipeline_and_says_why(tmp_path):
    with pytest.raises(SpecError, match=r"encode\.path.*window before"):
        parse_spec(_svd(tmp_path, encode={"path": "segments"}))


@pytest.mark.parametrize("change, field", [
    ({"encode": {"path": "segments", "parallel": 2}}, "encode.parallel"),
    ({"model": {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny",
                "faults": {"crash_segments": [1]}}}, "model.faults.crash_segments"),
])
def test_the_segment_path_refuses_what_it_cannot_do_and_names_the_field(tmp_path, change, field):
    with pytest.raises(SpecError, match=re.escape(field)):
        parse_spec(base_spec(tmp_path, **change))


def test_auto_falls_back_to_the_driver_path_when_the_actors_take_every_cpu():
    from farm.errors import ClusterError
    from scheduler.cluster import Session
    from scheduler.driver import _place_path

    four_cpus = Session(started_here=False, gpus=0, cpus=4)
    assert _place_path("segments", True, four_cpus, actors_take=2) == "segments"  # 1 actor of 2 threads
    assert _place_path("segments", True, four_cpus, actors_take=4) == "driver"
    with pytest.raises(ClusterError, match=r"encode.path: segments needs a CPU .* take 4 of the cluster's 4 CPUs"):
        _place_path("segments", False, four_cpus, actors_take=4)


# -- on Ray ----------------------------------------------------------------------------------------
def _render(tmp_path, name: str, path: str, store=False, **overrides):
    from scheduler.driver import render

    data = base_spec(tmp_path, output=str(tmp_path / f"{name}.mp4"), **overrides)
    data["encode"] = {"crf": 0, "preset": "ultrafast", "segment_frames": 8, "path": path} | data.get("encode", {})
    report = render(parse_spec(data), store=store, workers=2, threads=1)
    return report, read_frames(data["output"])


def _timestamps(path) -> list[float]:
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-vf", "showinfo",
                           "-f", "null", "-"], capture_output=True, text=True, check=True)
    return [float(t) for t in re.findall(r"pts_time:\s*([0-9.]+)", proc.stderr)]


def _decode_errors(path) -> str:
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, text=True)
    return proc.stderr.strip()


@pytest.mark.usefixtures("warm_farm")
def test_both_paths_give_the_same_video_and_report_and_stored_windows_need_no_actor(tmp_path):
    from farm.rife import weights

    weights.pull()
    ip = {"factor": 2, "chunk": 4, "scene_threshold": 0}
    driver, a = _render(tmp_path, "driver", "driver", interpolate=ip)
    store = tmp_path / "store"
    segmented, b = _render(tmp_path, "segments", "segments", store=store, interpolate=ip)
    assert a.shape == b.shape == (104, 64, 64, 3)
    assert np.array_equal(a, b)  # lossless: the decoded frames are the same, frame for frame
    enc = segmented["encode"]
    assert driver["encode"]["path"] == "driver" and enc["path"] == "segments"
    assert enc["count"] == 4 and sum(s["frames_out"] for s in enc["segments"]) == 104
    assert [s["start"] for s in enc["segments"]] == [0, 14, 26, 38]  # mid-seam cuts
    # What the report measures on the frames is the same wherever it was measured.
    for key in ("flicker", "seams", "color_drift_max"):
        assert segmented[key] == driver[key], key
    assert [w["color_drift"] for w in segmented["windows"]] == [w["color_drift"] for w in driver["windows"]]
    assert segmented["interpolate"]["frames_out"] == driver["interpolate"]["frames_out"] == 104
    assert segmented["interpolate"]["model_calls"] == driver["interpolate"]["model_calls"]
    html = (tmp_path / "segments.mp4.report.html").read_text()
    assert html.count("data:image/jpeg") == (tmp_path / "driver.mp4.report.html").read_text().count("data:image/jpeg")

    again, c = _render(tmp_path, "again", "segments", store=store, interpolate=ip)
    assert again["windows_cached"] == 4 and again["actors"] == []  # read from the store, on this node
    assert np.array_equal(b, c)


@pytest.mark.usefixtures("warm_farm")
@pytest.mark.parametrize("interpolate", [{"factor": 2}, {"fps": 20}], ids=["factor2", "fps20"])
def test_no_frame_is_dropped_or_repeated_at_a_segment_join(tmp_path, interpolate):
    """Every input frame is a solid colour of its own (the simulated pipeline), and with
    scene_threshold 1 RIFE holds the nearer input frame at every position: each output
    frame names the input frame it shows."""
    from farm.rife import weights

    weights.pull()
    data = dict(frames=100, model={"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny",
                                   "faults": {"simulate_seconds": 0}},
                interpolate={**interpolate, "scene_threshold": 1.0, "chunk": 3})
    report, out = _render(tmp_path, "pattern", "segments", **data)
    assert report["encode"]["count"] == 8
    # the colour of each input frame, as the simulated pipeline draws it (farm.faults)
    colours = 255 * np.array([np.random.default_rng(frame_seed(42, f)).random(3, dtype=np.float32)
                              for f in range(100)])
    shown = [int(np.argmin(np.abs(colours - f.reshape(-1, 3).mean(axis=0)).sum(axis=1))) for f in out]
    r = retiming(100, 8, **interpolate)
    expected = [g // r.steps + (g % r.steps * 2 >= r.steps) for g in r.grid_positions()]  # the nearer input
    assert len(out) == r.frames_out and shown == expected
    times = _timestamps(tmp_path / "pattern.mp4")
    assert len(times) == r.frames_out and times[0] == 0 and all(b > a for a, b in zip(times, times[1:]))
    assert _decode_errors(tmp_path / "pattern.mp4") == ""


@pytest.mark.usefixtures("warm_farm")
def test_a_segment_whose_worker_dies_is_sent_again_and_the_video_is_the_same(tmp_path):
    data = dict(frames=64, model={"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny",
                                  "faults": {"simulate_seconds": 0}}, encode={"crf": 18})  # the usual crf
    clean, a = _render(tmp_path, "clean", "segments", **data)
    data["model"]["faults"]["crash_segments"] = [1]
    crashed, b = _render(tmp_path, "crashed", "segments", **data)
    assert len(a) == len(b) == 64 == crashed["output_frames"]  # the frame count is exact
    assert np.array_equal(a, b)
    seg = crashed["encode"]["segments"][1]
    assert seg["attempts"] == 2 and "Worker" in seg["failures"][0] and crashed["encode"]["failed_attempts"] == 1
    assert all(s["attempts"] == 1 for s in clean["encode"]["segments"])


@pytest.mark.usefixtures("warm_farm")
def test_a_co_denoised_job_takes_the_segment_path_with_the_same_frames(tmp_path):
    """The decoded chunks stay in the object store; the segments read them there (the
    simulated pipeline: the real one's latent steps are tests/test_codenoise.py's)."""
    window = {"length": 16, "overlap": 4, "blend": "linear", "reconcile": "latent"}
    model = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny", "faults": {"simulate_seconds": 0}}
    driver, a = _render(tmp_path, "driver", "driver", window=window, model=model)
    segmented, b = _render(tmp_path, "segments", "segments", window=window, model=model)
    assert segmented["encode"]["path"] == "segments" and segmented["encode"]["count"] == 4
    assert np.array_equal(a, b) and segmented["flicker"] == driver["flicker"]
