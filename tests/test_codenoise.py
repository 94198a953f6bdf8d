"""Co-denoising (`window.reconcile: latent`): the frames do not depend on how the windows are
spread over actors, the step loop is diffusers' own, and a co-denoised job renders through
the farm from the demo spec.

The invariance tests run the shards of one job in lockstep in this process, with the
actors' own code (farm/latent.ShardRunner: evaluate, exchange per-window predictions,
fold in window order, step), so 1, 2, 3 and 4 shards cost one pipeline load; the Ray
tests below check that the farm's actors give the very same frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.codenoise import checkpoint_steps, missing, partition
from farm.encode import open_writer
from farm.errors import SpecError
from farm.plan import plan_windows, split
from farm.renderers import renderer_class
from farm.spec import parse_spec
from farm.store import LatentCheckpoints
from farm.tasks import WindowTask
from farm.video import read_frames
from scheduler.driver import render
from tests.conftest import base_spec
from tests.lockstep import lockstep

POSES = "examples/tiny/poses"


# -- the plan (pure) ------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(frames=st.integers(16, 300), length=st.integers(2, 24), overlap_share=st.floats(0, 0.95),
       actors=st.integers(1, 9))
def test_shards_split_the_windows_and_every_shared_frame_is_sent_by_every_other_window(frames, length,
                                                                                        overlap_share, actors):
    length = min(length, frames)
    overlap = min(length - 1, int(length * overlap_share))
    windows = split(frames, length, overlap)
    shards = partition(windows, actors)
    assert [w for s in shards for w in s.windows] == list(range(len(windows)))
    assert len(shards) == min(actors, len(windows))
    assert max(len(s.windows) for s in shards) - min(len(s.windows) for s in shards) <= 1
    # owned frames tile the video: each checkpointed and decoded once
    assert [s.owns for s in shards][0][0] == 0 and shards[-1].owns[1] == frames
    assert all(a.owns[1] == b.owns[0] for a, b in zip(shards, shards[1:]))
    # for every frame a shard covers, every window covering it is its own or sent to it
    for s in shards:
        got = {(p.window, f) for k in s.peers for p in shards[k].sends[shards[k].peers.index(s.index)]
               for f in range(p.start, p.end)}
        for f in range(*s.covers):
            for w in windows:
                if w.start <= f < w.end and w.index not in s.windows:
                    assert (w.index, f) in got
        assert all(s.index in shards[k].peers for k in s.peers)


def test_checkpoints_fall_every_k_steps_and_at_the_end():
    assert checkpoint_steps(20, 5) == (5, 10, 15, 20)
    assert checkpoint_steps(4, 3) == (3, 4)
    assert missing([(0, 10), (8, 20)], 20) == []
    assert missing([(0, 10), (12, 20)], 24) == [(10, 12), (20, 24)]


def test_a_checkpoint_is_whole_only_when_its_parts_cover_every_frame_whatever_cut_them(tmp_path):
    ckpt = LatentCheckpoints(tmp_path, "job")
    latents = np.arange(2 * 4 * 30, dtype=np.float32).reshape(1, 2, 30, 2, 2)
    ckpt.put(2, 0, 12, latents[:, :, 0:12])
    assert ckpt.latest(30) == 0
    ckpt.put(2, 12, 30, latents[:, :, 12:30])
    ckpt.put(4, 0, 20, latents[:, :, 0:20])  # a later run, cut another way, killed midway
    assert ckpt.latest(30) == 2
    np.testing.assert_array_equal(ckpt.load(2, 5, 25), latents[:, :, 5:25])
    ckpt.keep_only(2)
    assert ckpt.steps() == [2]


def test_a_whole_checkpoint_drops_the_older_ones_and_keeps_the_parts_of_shards_ahead(tmp_path):
    """A shard may finish step k + 1 before a distant one finishes step k (it waits only for
    its peers' calls): when step k becomes whole, its part of k + 1 must stay, or k + 1
    never becomes whole on disk and, once k is dropped in turn, a lost actor sends the job
    back to the noise (seen: `from_step` 0 after a node was lost at step 1)."""
    ckpt = LatentCheckpoints(tmp_path, "job")
    latents = np.arange(2 * 4 * 30, dtype=np.float32).reshape(1, 2, 30, 2, 2)
    ckpt.put(1, 0, 12, latents[:, :, 0:12])
    ckpt.put(2, 0, 12, latents[:, :, 0:12])  # the first shard is a step ahead
    ckpt.put(1, 12, 30, latents[:, :, 12:30])  # step 1 is whole
    ckpt.drop_before(1)
    ckpt.put(2, 12, 30, latents[:, :, 12:30])  # step 2 is whole
    assert ckpt.latest(30) == 2
    ckpt.drop_before(2)
    assert ckpt.steps() == [2] and ckpt.latest(30) == 2
    np.testing.assert_array_equal(ckpt.load(2, 0, 30), latents)


# -- specs ---------------------------------------------------------------------------------
def test_latent_is_the_default_where_a_pipeline_can_fuse_and_svd_says_why_it_cannot(tmp_path):
    data = base_spec(tmp_path)
    del data["window"]["reconcile"]
    assert parse_spec(data).window.reconcile == "latent"
    image = tmp_path / "frame.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    svd = base_spec(tmp_path, model={"pipeline": "svd"}, svd={"image": str(image)}, window={"length": 8})
    del svd["prompt"], svd["negative_prompt"]
    assert parse_spec(svd).window.reconcile == "crossfade"
    with pytest.raises(SpecError) as err:
        parse_spec({**svd, "window": {"length": 8, "reconcile": "latent"}})
    assert "window.reconcile: latent is not for svd: SVD windows are chained" in str(err.value)


def test_window_faults_are_refused_in_a_latent_job_and_step_crashes_in_a_crossfade_one(tmp_path):
    data = base_spec(tmp_path, window={"length": 16, "overlap": 4, "reconcile": "latent"})
    data["model"] = {**data["model"], "faults": {"fail_windows": [1], "crash_on_call": 2}}
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert "model.faults.fail_windows: hits one window's render call" in str(err.value)
    assert "model.faults.crash_on_call" in str(err.value)
    data = base_spec(tmp_path)
    data["model"] = {**data["model"], "faults": {"crash_on_step": 2}}
    with pytest.raises(SpecError, match="crash_on_step: is for window.reconcile: latent"):
        parse_spec(data)


# -- the step loop, in one process -----------------------------------------------------------
def _spec(tmp_path, **overrides):
    window = overrides.pop("window", {"length": 16, "overlap": 4})
    return parse_spec(base_spec(tmp_path, window={**window, "reconcile": "latent"}, **overrides))


@pytest.fixture(scope="module")
def animatediff(one_thread, tmp_path_factory):
    spec = _spec(tmp_path_factory.mktemp("ad"))
    return renderer_class("animatediff")(spec, "cpu")


CASES = {
    # 5 windows: 2, 3 and 4 shards split them unevenly
    "uneven": dict(frames=64),
    # overlap 8 of 16, a prompt schedule crossing the seams, LCM (a stochastic step)
    "overlap8_schedule_lcm": dict(frames=56, window={"length": 16, "overlap": 8}, prompt=None,
                                  prompts={0: "a red fox running through snow", 20: "a grey wolf in a forest"},
                                  model={"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny",
                                         "scheduler": "lcm"}, guidance=1.5, steps=3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_frames_are_the_same_bits_on_1_2_3_and_4_actors(animatediff, tmp_path, case):
    spec = _spec(tmp_path, **CASES[case])
    animatediff.spec = spec
    frames = {n: lockstep(animatediff, spec, n) for n in (1, 2, 3, 4)}
    assert frames[1].shape == (spec.frames, 64, 64, 3)
    for n in (2, 3, 4):
        assert np.array_equal(frames[n], frames[1]), f"{n} shards differ from 1"


def test_controlnet_frames_are_the_same_bits_on_1_to_4_actors(one_thread, tmp_path):
    spec = parse_spec(base_spec(
        tmp_path, model={"pipeline": "animatediff-controlnet", "base": "tiny", "motion_adapter": "tiny"},
        control={"video": POSES, "scale": 0.7, "model": "tiny"}, frames=28,
        window={"length": 12, "overlap": 8, "reconcile": "latent"}))
    renderer = renderer_class(spec.model.pipeline)(spec, "cpu")
    frames = {n: lockstep(renderer, spec, n) for n in (1, 2, 3, 4)}
    assert frames[1].shape == (28, 64, 64, 3)
    assert all(np.array_equal(frames[n], frames[1]) for n in (2, 3, 4))


def test_fusing_changes_a_window_most_where_it_overlaps_its_neighbour(animatediff, tmp_path):
    """Against the first window denoised alone: the fused video differs most over the
    frames it shares with the second window (12-15), less far from the seam (0-3), where
    only the motion modules carry the change."""
    spec = _spec(tmp_path, frames=28)
    animatediff.spec = spec
    fused = lockstep(animatediff, spec, 2)
    alone = animatediff.render(WindowTask.from_spec(spec, plan_windows(spec).windows[0]))
    diff = np.abs(fused[:16].astype(np.int16) - (np.clip(np.rint(alone * 255), 0, 255)).astype(np.int16)).mean(axis=(1, 2, 3))
    assert diff[12:].mean() > 0.5  # the overlap is fused with the second window
    assert diff[12:].mean() > diff[:4].mean()


def test_a_single_window_is_diffusers_own_loop(animatediff, tmp_path):
    """One window in latent mode = `AnimateDiffPipeline.__call__` with the same noise,
    prompt and DDIM: within one level."""
    from farm.noise import window_noise

    spec = _spec(tmp_path, frames=16)
    animatediff.spec = spec
    farm = lockstep(animatediff, spec, 1)
    pipe = animatediff.pipe
    noise = window_noise(spec.seed, 0, 16, (4, 8, 8))
    with torch.inference_mode():
        out = pipe(prompt=spec.prompt, negative_prompt=spec.negative_prompt, num_frames=16, height=64, width=64,
                   num_inference_steps=spec.steps, guidance_scale=spec.guidance, latents=noise,
                   output_type="np")
    plain = np.clip(np.rint(np.asarray(out.frames[0]) * 255), 0, 255).astype(np.int16)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert np.abs(farm.astype(np.int16) - plain).max() <= 1


# -- through the farm ----------------------------------------------------------------------
# slow (about 50 s: it waits out LATENT_PLACEMENT_S for the 2 actors never placed): `-m slow`, run by CI after the default run
@pytest.mark.slow
def test_the_farm_renders_a_latent_job_on_4_actors_of_6_asked_with_the_frames_of_1_shard(
        shared_ray, animatediff, tmp_path, monkeypatch):
    import scheduler.driver

    # the shared Ray has 4 CPUs: 4 actors are placed, 2 never are. The 4th may be ready well
    # after the 1st when another test module loads pipelines beside this one (pytest-xdist)
    monkeypatch.setattr(scheduler.driver, "LATENT_PLACEMENT_S", 20.0)
    spec = _spec(tmp_path, frames=64)
    spec = spec.model_copy(update={"encode": spec.encode.model_copy(update={"crf": 0}),
                                   "model": spec.model.model_copy(update={"warmup": False})})
    # the frames the shards compute in this process, through the same encoder
    with open_writer(tmp_path / "reference.mp4", 64, 64, spec.fps, 0, spec.encode.preset, 1, 120) as out:
        for frame in lockstep(animatediff, spec, 1):
            out.write(frame)
    r = render(spec.model_copy(update={"output": str(tmp_path / "latent.mp4")}), workers=6, threads=1,
               store=tmp_path / "store")
    reference = read_frames(tmp_path / "reference.mp4")
    assert reference.shape == (64, 64, 64, 3)
    assert np.array_equal(read_frames(tmp_path / "latent.mp4"), reference)
    assert r["reconcile"] == "latent" and r["latent"]["actors"] == 4 and r["latent"]["actors_asked"] == 6
    assert [s["windows"] for s in r["latent"]["shards"]] == [[0, 1], [2, 2], [3, 3], [4, 4]]
    assert len({w["actor"] for w in r["windows"]}) == 4
    assert all(s["fused"] and "disagreement" not in s for s in r["seams"])
    assert r["latent"]["exchange_bytes_per_step"] > 0 and r["latent"]["resumed_from_step"] == 0


def test_a_killed_driver_resumes_from_the_last_checkpoint_in_the_store(shared_ray, one_thread, tmp_path):
    """Run with Wan (a video VAE, a causal decoder carried across shards: the longest path
    through resuming); the checkpoints and the resume are the same code for every pipeline."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray
    import yaml

    from farm.keys import latent_job_key, model_identity, task_key

    data = {"model": {"pipeline": "wan", "base": "tiny", "warmup": False, "faults": {"delay": 0.4}},
            "prompt": "a red fox running through snow", "negative_prompt": "blurry", "frames": 41, "fps": 16,
            "width": 64, "height": 64, "steps": 6, "guidance": 5.0, "seed": 1, "wan": {"max_sequence_length": 16},
            "window": {"length": 17, "overlap": 8, "reconcile": "latent", "checkpoint_every": 2},
            "encode": {"crf": 0}, "output": str(tmp_path / "killed.mp4")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    plan = plan_windows(spec)
    model_id = model_identity(spec, "cpu")
    key = latent_job_key([task_key(model_id, WindowTask.from_spec(spec, w)) for w in plan.windows], spec.window.blend)
    checkpoints = LatentCheckpoints(tmp_path / "store", key)
    latent_frames = plan.latent_windows[-1].end
    # a driver process of its own, joined to the module's Ray, with actors of its own: SIGKILL
    # takes it and, with it, the actors it owns
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen([str(Path(sys.executable).parent / "farm"), "render", str(tmp_path / "job.yaml"),
                               "--workers", "2", "--threads", "1", "--store", str(tmp_path / "store"),
                               "--address", address, "--private"],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while checkpoints.latest(latent_frames) == 0 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait()
    saved = checkpoints.latest(latent_frames)
    assert 2 <= saved < spec.steps and not (tmp_path / "killed.mp4").exists()
    from click.testing import CliRunner

    from scheduler.cli import main

    planned = CliRunner().invoke(main, ["plan", str(tmp_path / "job.yaml"), "--store", str(tmp_path / "store")])
    assert f"store: a checkpoint after step {saved} of {spec.steps} (cpu)" in " ".join(planned.output.split())

    report = render(spec, workers=2, threads=1, store=tmp_path / "store")
    assert report["latent"]["resumed_from_step"] >= saved
    with open_writer(tmp_path / "reference.mp4", 64, 64, spec.fps, 0, spec.encode.preset, 1, 120) as out:
        for frame in lockstep(renderer_class("wan")(spec, "cpu"), spec, 1):
            out.write(frame)
    assert read_frames(tmp_path / "killed.mp4").shape == (41, 64, 64, 3)
    assert np.array_equal(read_frames(tmp_path / "killed.mp4"), read_frames(tmp_path / "reference.mp4"))


def test_a_recovery_waits_for_each_restarted_actor_s_new_process_to_answer(shared_ray):
    """`ray.kill(actor, no_restart=False)` returns before the actor's process is gone: a
    question sent right after it may still be answered by the old process, which then dies
    under the job's next call (a second, needless recovery). An answer from the process
    that was told to restart is not taken: the actor is asked again."""
    import ray

    from scheduler.codenoise import _answers

    @ray.remote(max_restarts=1, num_cpus=0)
    class Probe:
        def info(self) -> dict:
            import os

            return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    probes = [Probe.remote() for _ in range(3)]
    before = ray.get([p.info.remote() for p in probes])
    for probe in probes:
        ray.kill(probe, no_restart=False)
    after = _answers(probes, 60, told_to_restart=before)
    assert all(new is not None and new["pid"] != old["pid"] for new, old in zip(after, before)), (before, after)
    for probe in probes:
        ray.kill(probe, no_restart=True)
