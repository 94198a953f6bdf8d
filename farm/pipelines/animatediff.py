"""AnimateDiff text-to-video: one window = one AnimateDiffPipeline call.

    1. initial latents: the per-frame noise of the window's global frames (farm.noise)
    2. a CPU generator for any stochastic scheduler step, seeded by the window's first frame
    3. text conditioning: one prompt, or one embedding per frame (prompt schedules)
    4. denoise and decode (decode chunk and VAE precision as the fallback ladder asks)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from farm.identity import lora_identity, ref_identity
from farm.models.schedulers import SCHEDULERS
from farm.models.tiny import TINY_BASE, TINY_MOTION_ADAPTER
from farm.pipelines._base import Pipeline
from farm.tasks import Overrides, WindowTask

if TYPE_CHECKING:
    from farm.spec import JobSpec


class AnimateDiff(Pipeline):
    name = "animatediff"
    renderer = "farm.pipelines.animatediff:AnimateDiffRenderer"
    tiny_base = TINY_BASE

    def key_fields(self, spec: "JobSpec") -> dict:
        model = spec.model
        scheduler_class, settings = SCHEDULERS[model.scheduler_name]
        return {
            "motion_adapter": ref_identity(model.motion_adapter, TINY_MOTION_ADAPTER),
            "scheduler": {"class": scheduler_class, **settings},
            "loras": [lora_identity(lora) for lora in model.loras],
        }


class AnimateDiffRenderer:
    """Holds one loaded AnimateDiffPipeline and renders windows with it."""

    def __init__(self, spec: "JobSpec", device: str):
        self.device = device
        self.spec = spec
        t0 = time.perf_counter()
        self.pipe, self.memory = self.load(spec, device)
        self.load_seconds = time.perf_counter() - t0

    def load(self, spec: "JobSpec", device: str):
        from farm.models.load import load_animatediff

        return load_animatediff(spec.model, device)

    def extra_args(self, task: WindowTask) -> dict:
        """Pipeline-specific call arguments (the ControlNet variant adds its frames)."""
        return {}

    def text_modules(self) -> list:
        """The modules that read the text embeddings (the ControlNet variant adds its own)."""
        return [self.pipe.unet]

    def render(self, task: WindowTask, overrides: Overrides = Overrides()) -> np.ndarray:
        import torch

        from farm.noise import frame_seed, window_noise
        from farm.pipelines._fallback_steps import decode_in_fp32, offload_once

        pipe, w = self.pipe, task.window
        if overrides.cpu_offload:
            offload_once(self.pipe, self.device, self.memory)
        # 1. Initial latents: the per-frame noise of the window's global frames.
        scale = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, task.height // scale, task.width // scale)
        latents = window_noise(task.seed, w.start, w.end, shape).to(self.device, pipe.unet.dtype)
        # 2. A generator for any stochastic scheduler step, seeded by the window's first frame.
        generator = torch.Generator(device="cpu").manual_seed(frame_seed(task.seed, w.start))
        # 3. Text conditioning: one prompt for the window, or one embedding per frame.
        if len(set(task.conditioning)) == 1 and task.conditioning[0][2] >= 1.0:
            prompt_args = {"prompt": task.conditioning[0][1], "negative_prompt": task.negative_prompt or None}
            hook = None
        else:
            prompt_args, hook = self._per_frame_prompts(task)
        # 4. Denoise, then decode: by the pipeline, or by us with the VAE in fp32 (the NaN fallback).
        chunk = overrides.decode_chunk_size or w.length
        try:
            with torch.inference_mode():
                out = pipe(
                    **prompt_args,
                    **self.extra_args(task),
                    num_frames=w.length,
                    height=task.height,
                    width=task.width,
                    num_inference_steps=task.steps,
                    guidance_scale=task.guidance,
                    latents=latents,
                    generator=generator,
                    decode_chunk_size=chunk,
                    output_type="latent" if overrides.vae_fp32 else "np",
                )
                if overrides.vae_fp32:
                    return decode_in_fp32(pipe, out.frames, lambda x: pipe.decode_latents(x, chunk))
        finally:
            if hook is not None:
                hook.remove()
        return np.asarray(out.frames[0], dtype=np.float32)

    def _per_frame_prompts(self, task: WindowTask):
        """Embed each text once, mix them per frame, and hand the UNet one embedding per
        frame. The pipeline repeats a single embedding over the frames (negative then
        positive under guidance, frame-major as the UNet folds frames into the batch);
        a forward pre-hook on each of `text_modules()` swaps in the per-frame tensor of
        exactly that layout."""
        import torch

        pipe = self.pipe
        cfg = task.guidance > 1.0
        with torch.inference_mode():
            embeds, negative = {}, None
            for text in sorted({t for c in task.conditioning for t in c[:2]}):
                embeds[text], negative = pipe.encode_prompt(text, self.device, 1, cfg, task.negative_prompt or None)
            per_frame = torch.cat([(1.0 - wt) * embeds[old] + wt * embeds[new] for old, new, wt in task.conditioning])
        frames = per_frame.shape[0]
        hidden = torch.cat([negative.expand(frames, -1, -1), per_frame]) if cfg else per_frame

        def swap(module, args, kwargs):
            got = kwargs.get("encoder_hidden_states")
            if got is None or got.shape != hidden.shape:
                raise RuntimeError(f"per-frame prompts: the UNet got text embeddings of shape "
                                   f"{None if got is None else tuple(got.shape)}, expected {tuple(hidden.shape)}")
            return args, {**kwargs, "encoder_hidden_states": hidden.to(got.dtype)}

        hooks = _Hooks([m.register_forward_pre_hook(swap, with_kwargs=True) for m in self.text_modules()])
        return {"prompt_embeds": per_frame[:1], "negative_prompt_embeds": negative if cfg else None}, hooks


class _Hooks:
    """Several hook handles, removed as one."""

    def __init__(self, handles: list):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
