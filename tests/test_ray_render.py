"""Rendering through real Ray actors: determinism across actors, and `farm render` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
from click.testing import CliRunner

from actors.pipeline import pipeline_actor_class
from farm.video import probe, read_frames
from farm.plan import plan_windows
from farm.tasks import WindowTask
from farm.spec import parse_spec
from scheduler.cli import main
from tests.conftest import base_spec, write_spec


# one Ray for the module (see tests/test_local_cluster.py), and a farm manager whose warm actors
# render its jobs; the tests of what a job's own actors do (the warm-up window, running out of
# actors) say `farm=False`
pytestmark = pytest.mark.usefixtures("warm_farm")


def test_a_window_is_bit_identical_on_two_actors_and_twice_on_one(tmp_path):
    spec = parse_spec(base_spec(tmp_path))
    window = plan_windows(spec).windows[1]
    task = WindowTask.from_spec(spec, window)
    cls = pipeline_actor_class()
    a, b = (cls.options(num_cpus=1).remote(spec, 1) for _ in range(2))
    infos = ray.get([a.info.remote(), b.info.remote()])
    assert infos[0]["actor"] != infos[1]["actor"] and infos[0]["pid"] != infos[1]["pid"]
    ra1, rb, ra2 = ray.get([a.render.remote(task), b.render.remote(task), a.render.remote(task)])
    assert ra1.frames.shape == (16, 64, 64, 3) and ra1.frames.dtype == np.uint8
    assert ra1.actor != rb.actor
    assert ra1.frames.tobytes() == rb.frames.tobytes() == ra2.frames.tobytes()
    # A different seed gives a different window: the equality above is not vacuous.
    other = WindowTask.from_spec(parse_spec(base_spec(tmp_path, seed=43)), window)
    assert not np.array_equal(ray.get(a.render.remote(other)).frames, ra1.frames)


def test_render_with_rife_interpolates_across_window_seams_while_rendering(tmp_path):
    from farm.rife import weights

    weights.pull()
    data = base_spec(tmp_path, frames=52, encode={"crf": 0, "preset": "ultrafast"},
                     interpolate={"factor": 2, "chunk": 4, "workers": 2, "scene_threshold": 0})
    job = write_spec(tmp_path, data)
    out = tmp_path / "video.mp4"
    # one pipeline actor: its windows come back in order, so window 0's frames can go to RIFE
    # while the others render (with two, window 0 may come back last, when one actor was lent
    # cold, and nothing can stream before it)
    result = CliRunner().invoke(main, ["render", str(job), "-o", str(out), "--workers", "1", "--threads", "1", "--json",
                                       "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    ip = report["interpolate"]

    info = probe(out)
    assert (info.frames, info.fps) == (104, 16.0)  # 52 frames at 8 fps → 104 at 16 fps: same 6.5 s
    assert report["output_frames"] == 104 and report["output_fps"] == 16
    assert (ip["frames_in"], ip["frames_out"], ip["cuts"]) == (52, 104, [])
    assert len(ip["chunks_per_actor"]) == 2  # chunks ran on both RIFE actors
    # Streaming: the first chunk went to RIFE before the last window was back.
    assert ip["first_chunk_at"] < max(w["finished_at"] for w in report["windows"])

    frames = read_frames(out).astype(np.int16)
    step = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    # Output frame 2i is input frame i; 2i+1 is the midpoint of (i, i+1). Window 0 ends at
    # frame 15 and window 1 starts at 12, chunk seams fall at 12 and 16: the pairs across
    # them were interpolated (a new frame, not a copy of either side) ...
    for i in (11, 12, 15, 16):
        assert step[2 * i] > 1.0 and step[2 * i + 1] > 1.0, (i, step[2 * i : 2 * i + 2])
    # ... and no frame was emitted twice anywhere, except the held last frame.
    assert np.all(step[:-1] > 1.0)
    assert step[-1] < 1.0


def test_farm_interpolate_any_video_to_exact_fps(tmp_path):
    from farm.encode import VideoWriter
    from farm.rife import weights
    from tests.clips import hard_cut

    weights.pull()
    clip = hard_cut(8, size=64)  # 16 frames, one cut at frame 8
    src = tmp_path / "in.mp4"
    with VideoWriter(src, 64, 64, fps=8, crf=10) as w:
        for f in clip:
            w.write(f)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, ["interpolate", str(src), "-o", str(out), "--fps", "60", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    info = probe(out)
    assert (info.frames, info.fps) == (120, 60.0)  # 16 frames at 8 fps = 2 s = 120 frames at 60 fps
    assert report["interpolate"]["cuts"] == [8]
    assert (tmp_path / "out.mp4.report.json").exists()


def test_farm_interpolate_needs_fps_or_factor(tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(b"x")
    result = CliRunner().invoke(main, ["interpolate", str(src), "-o", str(tmp_path / "o.mp4")])
    assert result.exit_code == 2 and "give the target frame rate: --fps F (e.g. 60) or --factor 2|4|8" in result.output


def test_deep_overlaps_render_every_frame(tmp_path):
    # overlap 15 of 16: every frame is covered by up to 16 windows, more than the
    # dispatcher's lookahead; the job must still finish with every frame.
    data = base_spec(tmp_path, frames=30, steps=1, window={"length": 16, "overlap": 15, "blend": "cosine"})
    job = write_spec(tmp_path, data)
    result = CliRunner().invoke(main, ["render", str(job), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["windows"]) == 15
    assert probe(tmp_path / "out.mp4").frames == 30


def test_the_warmup_window_changes_no_frame(tmp_path):
    from scheduler.driver import render

    model = base_spec(tmp_path)["model"]
    warm = parse_spec(base_spec(tmp_path, frames=28, output=str(tmp_path / "warm.mp4"), model=model | {"warmup": True}))
    cold = parse_spec(base_spec(tmp_path, frames=28, output=str(tmp_path / "cold.mp4"), model=model | {"warmup": False}))
    with_warmup = render(warm, store=False, workers=1, threads=1, farm=False)
    without = render(cold, store=False, workers=1, threads=1, farm=False)
    assert with_warmup["actors"][0]["warmup_seconds"] > 0
    assert without["actors"][0]["warmup_seconds"] is None
    assert (tmp_path / "warm.mp4").read_bytes() == (tmp_path / "cold.mp4").read_bytes()


def test_parallel_encoders_give_the_same_video(tmp_path):
    from scheduler.driver import render

    sim = {"pipeline": "animatediff", "faults": {"simulate_seconds": 0}}  # cheap frames, same every run
    one = parse_spec(base_spec(tmp_path, frames=88, model=sim, output=str(tmp_path / "one.mp4")))
    three = parse_spec(base_spec(tmp_path, frames=88, model=sim, output=str(tmp_path / "three.mp4"),
                                 encode={"parallel": 3, "segment_frames": 16}))
    render(one, store=False, workers=1, threads=1)
    report = render(three, store=False, workers=1, threads=1)
    assert report["output_frames"] == 88 and probe(three.output).frames == 88
    a, b = read_frames(one.output).astype(int), read_frames(three.output).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mp4") == ["one.mp4", "three.mp4"]


def test_a_job_that_runs_out_of_actors_still_writes_its_report(tmp_path):
    from farm.errors import ClusterError
    from scheduler.driver import render

    model = {"pipeline": "animatediff", "faults": {"simulate_seconds": 0, "fail_windows": [0, 1, 2]}}
    spec = parse_spec(base_spec(tmp_path, frames=52, model=model, retries=5))
    with pytest.raises(ClusterError, match="no pipeline actor is left"):
        render(spec, store=False, workers=1, threads=1, farm=False)  # 3 failed windows blocklist the only actor
    assert not (tmp_path / "out.mp4").exists()
    report = json.loads((tmp_path / "out.mp4.report.json").read_text())
    assert report["state"] == "FAILED" and "no pipeline actor is left" in report["error"]
    assert [b["kind"] for b in report["blocklist"]] == ["actor", "node"]
    assert {w["index"] for w in report["windows"] if w["failures"]} == {0, 1, 2}
    assert (tmp_path / "out.mp4.report.html").exists()
