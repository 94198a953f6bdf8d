"""Step caching (`model.cache`): diffusers' cache hooks on Wan's transformer, with one cache
state per window and guidance branch, so a window's frames do not depend on which actor
renders it, what that actor rendered before, or how many actors co-denoise the video.

Each actor holds its own pipeline, so the invariance tests give each shard its own
renderer (tests/lockstep.py), as the farm does; a single renderer stepping every shard in
window order would hide a state shared across windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from farm.errors import SpecError
from farm.keys import model_identity
from farm.models.tiny import TINY_WAN22, tiny_model_path
from farm.pipelines import descriptor
from farm.pipelines._cache import StepCache, diffusers_config
from farm.plan import plan_windows
from farm.renderers import renderer_class
from farm.spec import parse_spec
from farm.tasks import WindowTask
from farm.video import read_frames
from scheduler.driver import render
from tests.lockstep import lockstep
from tests.test_wan import i2v_spec, picture, wan_spec  # noqa: F401 (picture is a fixture)

FBC = {"kind": "first_block", "threshold": 0.2}
TAYLOR = {"kind": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2}
MAG_RATIOS = [1.05, 0.98, 0.97, 0.99, 0.96, 0.95]


def cached(tmp_path, cache, **overrides) -> dict:
    data = wan_spec(tmp_path, steps=6, **overrides)
    data["model"] = {**data["model"], **({"cache": cache} if cache else {})}
    return data


def renderers(spec, n: int, pipeline: str = "wan") -> list:
    return [renderer_class(pipeline)(spec, "cpu") for _ in range(n)]


class SharedStepCache(StepCache):
    """Fault injection: the state every cache hook keeps is shared by all the windows an
    actor runs (one state per guidance branch, never reset), as diffusers' hooks keep it
    when nothing scopes them: what the tests must catch."""

    def scope(self, model, window, branch):
        return model.cache_context(branch)

    def reset(self) -> None:
        pass


def sharing(renderer):
    renderer.step_cache.__class__ = SharedStepCache
    return renderer


def to_levels(frames) -> np.ndarray:
    return np.clip(np.rint(np.asarray(frames) * 255), 0, 255).astype(np.int16)


# -- one window against diffusers' own call --------------------------------------------------------
@pytest.mark.parametrize("cache", [FBC, TAYLOR, {"kind": "mag", "threshold": 0.1, "mag_ratios": MAG_RATIOS}],
                         ids=["first_block", "taylorseer", "mag"])
def test_a_single_cached_window_is_wanpipelines_own_call_with_the_same_cache(one_thread, tmp_path, cache):
    from diffusers import WanPipeline

    spec = parse_spec(cached(tmp_path, cache, frames=17))
    renderer = renderer_class("wan")(spec, "cpu")
    task = WindowTask.from_spec(spec, plan_windows(spec).windows[0])
    farm = to_levels(renderer.render(task))
    assert renderer.last_cache["skipped"] > 0  # the cache did skip work in this window

    plain = WanPipeline.from_pretrained(str(tiny_model_path(descriptor("wan").tiny_base)))
    plain.set_progress_bar_config(disable=True)
    plain.transformer.enable_cache(diffusers_config(spec.model.cache, spec.steps, lambda: 0.0,
                                                    r"blocks\.\d+\.(attn1|attn2|ffn)"))
    with torch.inference_mode():
        out = plain(prompt=spec.prompt, negative_prompt=spec.negative_prompt, num_frames=17, height=64, width=64,
                    num_inference_steps=spec.steps, guidance_scale=spec.guidance, max_sequence_length=16,
                    latents=renderer.latent_noise(spec.seed, 0, 5, 64, 64), output_type="np")
    assert np.abs(farm - to_levels(out.frames[0])).max() <= 1
    # co-denoising a one-window video is the same call
    assert np.abs(lockstep(renderer, spec, 1).astype(np.int16) - farm).max() <= 1
    # and the cache is on: without it the frames differ
    uncached = renderer_class("wan")(parse_spec(cached(tmp_path, None, frames=17)), "cpu")
    assert np.abs(to_levels(uncached.render(task)) - farm).max() > 1


@pytest.mark.parametrize("cache", [{"kind": "first_block", "threshold": 0.0},
                                   {"kind": "mag", "threshold": 0.0, "mag_ratios": MAG_RATIOS}],
                         ids=["first_block", "mag"])
def test_a_threshold_of_0_skips_nothing_and_equals_no_cache_bit_for_bit(one_thread, tmp_path, cache):
    spec, plain = parse_spec(cached(tmp_path, cache)), parse_spec(cached(tmp_path, None))
    renderer = renderer_class("wan")(spec, "cpu")
    frames = lockstep(renderer, spec, 2)
    assert np.array_equal(frames, lockstep(renderer_class("wan")(plain, "cpu"), plain, 2))
    assert renderer.step_cache.evaluated == renderer.step_cache.possible > 0


# -- crossfade: a window alone ---------------------------------------------------------------------
def test_a_cached_window_is_the_same_whatever_its_actor_rendered_before(one_thread, tmp_path):
    """Window 1 rendered first on a fresh actor, and after windows 0 and 2 (window 0 cut
    short by a fault half-way, as a failed attempt is): the same frames. With the state
    shared across windows, the test sees them differ."""
    spec = parse_spec(cached(tmp_path, TAYLOR, window={"length": 17, "overlap": 5, "reconcile": "crossfade"}))
    tasks = [WindowTask.from_spec(spec, w) for w in plan_windows(spec).windows]
    fresh = renderer_class("wan")(spec, "cpu")
    alone = fresh.render(tasks[1])

    def after_others(renderer):
        interrupt = renderer.pipe.transformer.register_forward_pre_hook(_fail_on_call(5))
        with pytest.raises(RuntimeError, match="injected"):
            renderer.render(tasks[0])
        interrupt.remove()
        renderer.render(tasks[2])
        return renderer.render(tasks[1])

    assert np.array_equal(after_others(renderer_class("wan")(spec, "cpu")), alone)
    assert not np.array_equal(after_others(sharing(renderer_class("wan")(spec, "cpu"))), alone)


def _fail_on_call(n: int):
    calls = []

    def hook(module, args):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("injected: the window fails half-way")
    return hook


# -- latent: co-denoised windows --------------------------------------------------------------------
@pytest.mark.parametrize("cache", [FBC, TAYLOR, {"kind": "pab", "spatial_attention_timestep_skip_range": [0, 1000]},
                                   {"kind": "mag", "threshold": 0.1, "mag_ratios": MAG_RATIOS}],
                         ids=["first_block", "taylorseer", "pab", "mag"])
def test_cached_co_denoised_frames_are_the_same_bits_on_1_2_and_3_actors(one_thread, tmp_path, cache):
    spec = parse_spec(cached(tmp_path, cache))
    frames = {n: lockstep(renderers(spec, n), spec, n) for n in (1, 2, 3)}
    assert frames[1].shape == (41, 64, 64, 3)
    assert np.array_equal(frames[2], frames[1]) and np.array_equal(frames[3], frames[1])
    plain = parse_spec(cached(tmp_path, None))
    assert not np.array_equal(lockstep(renderer_class("wan")(plain, "cpu"), plain, 1), frames[1])


def test_the_invariance_test_catches_a_cache_state_shared_across_windows(one_thread, tmp_path):
    spec = parse_spec(cached(tmp_path, TAYLOR))
    one = lockstep([sharing(r) for r in renderers(spec, 1)], spec, 1)
    assert not np.array_equal(lockstep([sharing(r) for r in renderers(spec, 3)], spec, 3), one)


def test_cached_image_to_video_is_the_same_bits_on_1_2_and_3_actors(one_thread, tmp_path, picture):  # noqa: F811
    data = i2v_spec(tmp_path, picture, steps=6)
    data["model"] = {**data["model"], "cache": FBC}
    spec = parse_spec(data)
    frames = {n: lockstep(renderers(spec, n, "wan-i2v"), spec, n) for n in (1, 2, 3)}
    assert np.array_equal(frames[2], frames[1]) and np.array_equal(frames[3], frames[1])


def test_wan_22_keeps_a_cache_state_per_expert_and_is_the_same_bits_on_1_and_3_actors(one_thread, tmp_path):
    base = str(tiny_model_path(TINY_WAN22))
    spec = parse_spec(cached(tmp_path, FBC, model={"pipeline": "wan", "base": base, "warmup": False},
                             wan={"max_sequence_length": 16, "guidance_2": 2.0}))
    shards = renderers(spec, 3)
    three = lockstep(shards, spec, 3)
    assert np.array_equal(lockstep(renderers(spec, 1), spec, 1), three)
    cache = shards[0].step_cache
    assert len(cache.denoisers) == 2 and all(m.is_cache_enabled for m in cache.denoisers)
    assert 0 < 1 - cache.evaluated / cache.possible < 1


# -- the spec --------------------------------------------------------------------------------------
def test_bad_cache_settings_are_refused_naming_the_field_and_the_reason(tmp_path):
    data = wan_spec(tmp_path, model={"pipeline": "animatediff", "cache": FBC})
    data.pop("wan")
    data["window"] = {"length": 16, "overlap": 4}
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert ("model.cache: animatediff's denoiser has no diffusers cache hooks (they are for transformer "
            "denoisers); step caching is for wan, wan-i2v") in str(err.value)

    with pytest.raises(SpecError) as err:
        parse_spec(cached(tmp_path, {"kind": "faster"}))
    assert "model.cache: faster does not work with wan: FasterCache approximates the unconditional branch" in str(err.value)

    with pytest.raises(SpecError) as err:  # every problem at once
        parse_spec(cached(tmp_path, {"kind": "first_block", "threshold": 1.5, "cache_interval": 2}))
    msg = str(err.value)
    assert "model.cache.threshold: input should be less than or equal to 1; got 1.5" in msg
    assert "model.cache.cache_interval: not a setting of cache kind first_block (its settings: threshold)" in msg

    with pytest.raises(SpecError) as err:
        parse_spec(cached(tmp_path, {"kind": "mag"}))
    assert "model.cache.mag_ratios: MagCache needs the checkpoint's magnitude ratio per step" in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_spec(cached(tmp_path, {"kind": "pab", "spatial_attention_timestep_skip_range": [800, 100]}))
    assert ("model.cache.spatial_attention_timestep_skip_range: must be [low, high] with low < high; "
            "got [800, 100]") in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_spec(cached(tmp_path, {"kind": "taylorseer", "disable_cache_after_step": 2}))
    assert ("model.cache.disable_cache_after_step: must be above disable_cache_before_step (3): nothing would be "
            "cached; got 2") in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_spec(cached(tmp_path, {"kind": "teacache"}))
    assert "model.cache.kind: input should be 'first_block', 'mag', 'taylorseer', 'faster' or 'pab'" in str(err.value)


def test_the_cache_settings_are_in_the_window_key_with_diffusers_defaults_filled_in(tmp_path):
    def key(cache):
        return model_identity(parse_spec(cached(tmp_path, cache)), "cpu")

    assert "cache" not in key(None)
    assert key({"kind": "first_block"})["cache"] == {"kind": "first_block", "threshold": 0.05}
    assert key({"kind": "first_block", "threshold": 0.05}) == key({"kind": "first_block"})
    assert key({"kind": "first_block", "threshold": 0.1}) != key({"kind": "first_block"})


def test_farm_plan_says_the_cache_is_on_with_its_settings(tmp_path):
    import yaml
    from click.testing import CliRunner

    from scheduler.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(cached(tmp_path, {"kind": "taylorseer", "cache_interval": 2})))
    (tmp_path / "store").mkdir()
    shown = CliRunner().invoke(main, ["plan", str(job), "--store", str(tmp_path / "store")])
    assert shown.exit_code == 0, shown.output
    assert ("step cache: taylorseer (cache_interval 2, disable_cache_before_step 3, max_order 1); one cache state "
            "per window and guidance branch") in " ".join(shown.output.split())  # (rich wraps at 80)
    as_json = CliRunner().invoke(main, ["plan", str(job), "--json", "--store", str(tmp_path / "store")])
    assert json.loads(as_json.output)["cache"] == {"kind": "taylorseer", "settings": {
        "cache_interval": 2, "disable_cache_before_step": 3, "disable_cache_after_step": None, "max_order": 1}}


# -- through the farm ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["latent", "crossfade"])
def test_a_cached_job_renders_through_the_farm_and_reports_what_it_skipped(warm_farm, tmp_path, mode):
    out = tmp_path / f"{mode}.mp4"
    window = {"length": 17, "overlap": 8 if mode == "latent" else 5, "reconcile": mode}
    spec = parse_spec(cached(tmp_path, FBC, window=window, output=str(out), encode={"crf": 0}))
    report = render(spec, workers=2, threads=1, store=tmp_path / "store")
    assert read_frames(out).shape == (41, 64, 64, 3)
    cache = report["cache"]
    assert cache["kind"] == "first_block" and cache["settings"] == {"threshold": 0.2}
    parts = ([s["cache"] for s in report["latent"]["shard_stats"]] if mode == "latent"
             else [w["cache"] for w in report["windows"]])
    assert cache["evaluated"] == sum(p["evaluated"] for p in parts) and cache["possible"] == sum(p["possible"] for p in parts)
    assert 0 < cache["skipped"] < 1
    saved = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert saved["cache"] == cache
    if mode == "latent":  # the frames of the shards run here, each on its own renderer
        from farm.encode import open_writer

        with open_writer(tmp_path / "reference.mp4", 64, 64, spec.fps, 0, spec.encode.preset) as ref:
            for frame in lockstep(renderers(spec, 2), spec, 2):
                ref.write(frame)
        assert np.array_equal(read_frames(out), read_frames(tmp_path / "reference.mp4"))
