"""Wan 2.1 / 2.2 (a diffusion transformer with a causal video VAE) through the farm: its
frame rules, its step loop against WanPipeline's, co-denoising that gives the same bits on
1, 2 and 3 actors (decoding in order across shards), both reconcile modes on local Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farm.errors import SpecError
from farm.pipelines import descriptor
from farm.plan import plan_windows
from farm.renderers import renderer_class
from farm.spec import FaultSpec, parse_spec
from farm.tasks import WindowTask
from farm.video import read_frames
from scheduler.driver import render
from tests.lockstep import lockstep


def wan_spec(tmp_path, **overrides) -> dict:
    spec = {
        "model": {"pipeline": "wan", "base": "tiny", "warmup": False},
        "prompt": "a red fox running through snow",
        "negative_prompt": "blurry",
        "frames": 41, "fps": 16, "width": 64, "height": 64, "steps": 3, "guidance": 5.0, "seed": 1,
        "wan": {"max_sequence_length": 16},
        "window": {"length": 17, "overlap": 8, "reconcile": "latent"},
        "output": str(tmp_path / "wan.mp4"),
    }
    return spec | overrides


# -- frame rules -------------------------------------------------------------------------------
def test_wan_frame_counts_follow_its_vae_and_each_bad_one_says_what_would_do(tmp_path):
    with pytest.raises(SpecError) as err:
        parse_spec(wan_spec(tmp_path, frames=40, window={"length": 16, "overlap": 6, "reconcile": "latent"}))
    msg = str(err.value)
    assert "window.length: must be 4k + 1 for wan (its VAE packs 4 frames into each latent frame after the first)" in msg
    assert "e.g. 17, 33, 49, 81; got 16" in msg
    assert "frames: must be 4k + 1 for wan with window.reconcile: latent" in msg and "e.g. 41; got 40" in msg
    assert "window.overlap: must be a multiple of 4 for wan with window.reconcile: latent" in msg
    # crossfade windows are decoded alone: any frame count, any overlap
    spec = parse_spec(wan_spec(tmp_path, frames=40, window={"length": 17, "overlap": 5, "reconcile": "crossfade"}))
    assert [(w.start, w.end) for w in plan_windows(spec).windows] == [(0, 17), (12, 29), (23, 40)]


def test_latent_windows_are_laid_out_in_latent_frames(tmp_path):
    plan = plan_windows(parse_spec(wan_spec(tmp_path)))
    assert [(w.start, w.end) for w in plan.latent_windows] == [(0, 5), (3, 8), (6, 11)]
    # latent frame 0 is frame 0; latent frame j is frames 4j-3 .. 4j
    assert [(w.start, w.end, w.overlap_prev) for w in plan.windows] == [(0, 17, 0), (9, 29, 8), (21, 41, 8)]


def test_wan_takes_neither_an_animatediff_scheduler_nor_loras(tmp_path):
    data = wan_spec(tmp_path)
    data["model"] = {**data["model"], "scheduler": "lcm", "loras": [{"id": "tiny-motion-lora", "name": "z"}]}
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert "model.scheduler: wan uses the flow-matching Euler scheduler; set its shift with wan.shift" in str(err.value)
    assert "model.loras: LoRAs apply to the AnimateDiff pipelines" in str(err.value)


# -- the step loop, in one process ----------------------------------------------------------------
@pytest.fixture(scope="module")
def wan(one_thread, tmp_path_factory):
    return renderer_class("wan")(parse_spec(wan_spec(tmp_path_factory.mktemp("wan"))), "cpu")


def test_co_denoised_wan_frames_are_the_same_bits_on_1_2_and_3_actors(wan, tmp_path):
    spec = parse_spec(wan_spec(tmp_path, prompt=None, frames=49,
                               prompts={0: "a red fox running through snow", 24: "a grey wolf in forest"}))
    wan.spec = spec
    frames = {n: lockstep(wan, spec, n) for n in (1, 2, 3)}
    assert frames[1].shape == (49, 64, 64, 3)
    assert np.array_equal(frames[2], frames[1]) and np.array_equal(frames[3], frames[1])


def test_a_single_wan_window_is_wanpipelines_own_loop(wan, tmp_path):
    spec = parse_spec(wan_spec(tmp_path, frames=17))
    wan.spec = spec
    farm = lockstep(wan, spec, 1)
    with torch.inference_mode():
        out = wan.pipe(prompt=spec.prompt, negative_prompt=spec.negative_prompt, num_frames=17, height=64, width=64,
                       num_inference_steps=spec.steps, guidance_scale=spec.guidance, max_sequence_length=16,
                       latents=wan.latent_noise(spec.seed, 0, 5, 64, 64), output_type="np")
    plain = np.clip(np.rint(np.asarray(out.frames[0]) * 255), 0, 255).astype(np.int16)
    assert np.abs(farm.astype(np.int16) - plain).max() <= 1
    # and a crossfade window is that same call
    window = wan.render(WindowTask.from_spec(spec, plan_windows(spec).windows[0]))
    assert np.abs(np.rint(window * 255) - plain).max() <= 1


def test_wan_22_switches_to_its_low_noise_expert_with_its_own_guidance(one_thread, tmp_path):
    from farm.models.tiny import TINY_WAN22, tiny_model_path

    base = str(tiny_model_path(TINY_WAN22))
    spec = parse_spec(wan_spec(tmp_path, frames=17, model={"pipeline": "wan", "base": base},
                               wan={"max_sequence_length": 16, "guidance_2": 2.0}))
    renderer = renderer_class("wan")(spec, "cpu")
    assert renderer.pipe.transformer_2 is not None and renderer.pipe.config.boundary_ratio == 0.875
    used = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: used.append(name))
             for name, m in (("high", renderer.pipe.transformer), ("low", renderer.pipe.transformer_2))]
    task = WindowTask.from_spec(spec, plan_windows(spec).windows[0])
    frames = renderer.render(task)
    for h in hooks:
        h.remove()
    assert used[0] == "high" and used[-1] == "low" and set(used) == {"high", "low"}
    other = parse_spec(wan_spec(tmp_path, frames=17, model={"pipeline": "wan", "base": base},
                                wan={"max_sequence_length": 16, "guidance_2": 6.0}))
    renderer.spec = other
    assert not np.array_equal(renderer.render(task), frames)  # guidance_2 reaches the low-noise expert


# -- through the farm ------------------------------------------------------------------------------
def test_wan_renders_through_the_farm_in_both_modes(warm_farm, wan, tmp_path):
    """Latent: two private actors, the last shard's lost mid-way; the decode still runs in
    order and the frames are those of the shards run here. Crossfade: windows rendered
    alone (on the module's warm farm actor), then all read back from the store."""
    from farm.encode import open_writer

    latent = parse_spec(wan_spec(tmp_path, output=str(tmp_path / "latent.mp4"), encode={"crf": 0}))
    latent = latent.model_copy(update={"model": latent.model.model_copy(update={"faults": FaultSpec(crash_on_step=2)})})
    report = render(latent, workers=2, threads=1, store=tmp_path / "store", farm=False)
    assert report["latent"]["actors"] == 2 and all(s["fused"] for s in report["seams"])
    assert [r["from_step"] for r in report["latent"]["recoveries"]] == [0]
    wan.spec = latent
    with open_writer(tmp_path / "reference.mp4", 64, 64, latent.fps, 0, latent.encode.preset) as out:
        for frame in lockstep(wan, latent, 1):
            out.write(frame)
    assert np.array_equal(read_frames(tmp_path / "latent.mp4"), read_frames(tmp_path / "reference.mp4"))
    assert read_frames(tmp_path / "latent.mp4").shape == (41, 64, 64, 3)

    cross = parse_spec(wan_spec(tmp_path, output=str(tmp_path / "cross.mp4"), frames=40,
                                window={"length": 17, "overlap": 5, "reconcile": "crossfade"}))
    first = render(cross, workers=1, threads=1, store=tmp_path / "store")
    assert read_frames(tmp_path / "cross.mp4").shape == (40, 64, 64, 3) and first["windows_rendered"] == 3
    assert all(s["disagreement"] > 0 for s in first["seams"])
    rerun = render(cross, workers=2, threads=1, store=tmp_path / "store")
    assert rerun["windows_rendered"] == 0 and rerun["windows_cached"] == 3 and rerun["actors"] == []


# -- image to video ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("picture") / "picture.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def i2v_spec(tmp_path, picture, **overrides) -> dict:
    return wan_spec(tmp_path, model={"pipeline": "wan-i2v", "base": "tiny", "warmup": False},
                    wan={"max_sequence_length": 16, "image": picture}, **overrides)


def test_the_wan_block_holds_the_picture_for_image_to_video_only(tmp_path, picture):
    with pytest.raises(SpecError, match="wan.image: model.pipeline wan-i2v needs it"):
        parse_spec(i2v_spec(tmp_path, picture) | {"wan": {"max_sequence_length": 16}})
    with pytest.raises(SpecError, match="wan.image: wan is text to video; use model.pipeline: wan-i2v"):
        parse_spec(wan_spec(tmp_path, wan={"image": picture}))
    data = wan_spec(tmp_path, model={"pipeline": "animatediff"}, window={"length": 16, "overlap": 4})
    with pytest.raises(SpecError, match="the `wan:` block is only for model.pipeline wan or wan-i2v"):
        parse_spec(data)


def test_image_to_video_pins_the_first_window_and_is_the_same_bits_on_1_2_and_3_actors(one_thread, tmp_path,
                                                                                       picture):
    from PIL import Image

    spec = parse_spec(i2v_spec(tmp_path, picture))
    renderer = renderer_class("wan-i2v")(spec, "cpu")
    frames = {n: lockstep(renderer, spec, n) for n in (1, 2, 3)}
    assert frames[1].shape == (41, 64, 64, 3)
    assert np.array_equal(frames[2], frames[1]) and np.array_equal(frames[3], frames[1])
    # a window on its own is WanImageToVideoPipeline's call for the same noise
    one = parse_spec(i2v_spec(tmp_path, picture, frames=17))
    renderer.spec = one
    task = descriptor("wan-i2v").window_inputs(one, WindowTask.from_spec(one, plan_windows(one).windows[0]), None)
    with torch.inference_mode():
        out = renderer.pipe(image=Image.open(picture), prompt=one.prompt, negative_prompt=one.negative_prompt,
                            num_frames=17, height=64, width=64, num_inference_steps=one.steps, guidance_scale=5.0,
                            max_sequence_length=16, latents=renderer.latent_noise(one.seed, 0, 5, 64, 64),
                            output_type="np")
    assert np.abs(np.rint(renderer.render(task) * 255) - np.rint(np.asarray(out.frames[0]) * 255)).max() <= 1


def test_wan_image_to_video_renders_through_the_farm_crossfaded(warm_farm, tmp_path, picture):
    """(The co-denoised image-to-video twin renders in tests/test_examples.py.)"""
    out = tmp_path / "crossfade.mp4"
    spec = parse_spec(i2v_spec(tmp_path, picture, frames=40, output=str(out),
                               window={"length": 17, "overlap": 5, "reconcile": "crossfade"}))
    report = render(spec, workers=2, threads=1, store=tmp_path / "store")
    assert read_frames(out).shape == (40, 64, 64, 3) and report["reconcile"] == "crossfade"
    assert [w["conditioned_on"]["first_frame"] for w in report["windows"]] == [True, False, False]


def test_a_wan_job_without_a_window_block_gets_wans_native_windows(tmp_path):
    data = wan_spec(tmp_path, frames=161)
    del data["window"]
    spec = parse_spec(data)
    assert (spec.window.length, spec.window.overlap, spec.window.reconcile) == (81, 16, "latent")
    tiled = wan_spec(tmp_path)
    tiled["model"] = {**tiled["model"], "memory": {"vae_tiling": True}}
    with pytest.raises(SpecError, match="model.memory.vae_tiling: a co-denoised wan video is decoded one latent frame"):
        parse_spec(tiled)


def test_a_bf16_wan_job_co_denoises_on_several_actors(one_thread, tmp_path):
    """Predictions leave a shard as fp32 (numpy has no bfloat16); the fold upcasts its own
    the same way, so the frames still do not depend on the actors."""
    spec = parse_spec(wan_spec(tmp_path, model={"pipeline": "wan", "base": "tiny", "dtype": "bf16"}))
    renderer = renderer_class("wan")(spec, "cpu")
    assert renderer.pipe.transformer.dtype == torch.bfloat16
    assert np.array_equal(lockstep(renderer, spec, 2), lockstep(renderer, spec, 1))
