"""Wan 2.1 / 2.2 text-to-video (a diffusion transformer): one window = one WanPipeline call.

    1. initial latents: per latent frame, the noise of the pixel frame it ends on (farm.noise)
    2. text conditioning: one embedding per window (a DiT's cross-attention reads one text
       for all its frames), that of the window's middle frame under a prompt schedule: a
       change blends in across the windows, fused at every step in latent mode
    3. denoise with the flow-matching Euler scheduler (`wan.shift`); Wan 2.2 checkpoints
       switch from the high-noise expert (`transformer`) to the low-noise one
       (`transformer_2`) at `boundary_ratio`, with its own guidance (`wan.guidance_2`)
    4. decode with the causal video VAE

Wan's VAE compresses time by 4: a window has 4k + 1 frames (17, 33, 49, 81), and in latent
mode the windows are laid out in latent frames (farm.plan), so overlaps are multiples of 4
and the video has 4k + 1 frames. The VAE decodes a latent frame from the ones before it, so
co-denoised frames are decoded in order, each shard continuing the decoder's state where
the shard before left it (`causal_decode`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from farm.errors import FarmError
from farm.models.tiny import TINY_WAN
from farm.pipelines._base import LoadedRenderer, Pipeline
from farm.tasks import Overrides, WindowTask

if TYPE_CHECKING:
    from farm.spec import JobSpec


class Wan(Pipeline):
    name = "wan"
    renderer = "farm.pipelines.wan:WanRenderer"
    tiny_base = TINY_WAN
    temporal_compression = 4
    causal_decode = True
    min_frames = 5  # a run of shots: two latent frames
    no_reference = ("has no IP-Adapter; to keep a subject across shots use wan-i2v, where the picture each "
                    "shot starts from (its image) is the anchor")
    spec_block, spec_block_needs, spec_block_required = "wan", "", False
    block_refuses = {"image": "wan is text to video; use model.pipeline: wan-i2v to start from a picture"}
    refuses = {
        "vae": "wan decodes with its own causal video VAE (AutoencoderKLWan); model.vae replaces the "
               "AutoencoderKL of the AnimateDiff pipelines",
        "scheduler": "wan uses the flow-matching Euler scheduler; set its shift with wan.shift",
        "loras": "LoRAs apply to the AnimateDiff pipelines, not to wan",
        "memory.forward_chunking": "forward chunking is a UNet knob; wan is a transformer",
    }
    defaults = {"guidance": 5.0}  # WanPipeline's default
    window_defaults = {"length": 81, "overlap": 16}  # Wan's native 81 frames; 4 shared latent frames
    cache_kinds = ("first_block", "mag", "taylorseer", "pab")
    cache_refuses = {"faster": "FasterCache approximates the unconditional branch from one batch holding both "
                               "guidance branches, and wan calls its transformer once per branch"}
    latent_refuses = {"window.keep_steps": "a local re-render is not for wan: its video VAE decodes each latent "
                                           "frame from the ones before it, so every frame after an edit would "
                                           "change as it decoded again",
                      "model.memory.vae_tiling": "a co-denoised wan video is decoded one latent frame at a time, "
                                                 "in order across the actors, without tiles; use it with crossfade"}

    def key_fields(self, spec: "JobSpec") -> dict:
        wan, cache = spec.wan_settings, spec.model.cache
        return {"scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "shift": wan.shift},
                "guidance_2": wan.guidance_2, "max_sequence_length": wan.max_sequence_length} | (
                   {"cache": {"kind": cache.kind} | cache.settings()} if cache else {})


class WanRenderer(LoadedRenderer):
    """Holds one loaded WanPipeline and renders windows with it.

    With `model.cache`, its transformers carry diffusers' cache hooks and every call is
    made under its window's own cache state (farm/pipelines/_cache.py); a window rendered
    on its own then runs the farm's step loop (`render_steps`), the loop co-denoising runs,
    so both modes keep one state per window and guidance branch."""

    def __init__(self, spec: "JobSpec", device: str):
        super().__init__(spec, device)
        self._t = None  # the timestep of the call being made (read by the cache hooks)
        self.step_cache = None
        self.last_cache = None  # what the cache skipped in the last window rendered alone
        if spec.model.cache is not None:
            from farm.pipelines._cache import StepCache

            denoisers = [m for m in (self.pipe.transformer, self.pipe.transformer_2) if m is not None]
            self.step_cache = StepCache(spec.model.cache, denoisers, spec.steps, lambda: float(self._t),
                                        modules=r"blocks\.\d+\.(attn1|attn2|ffn)")  # what TaylorSeer predicts

    def load(self, spec: "JobSpec", device: str):
        from diffusers import WanPipeline

        return load_wan(spec, device, WanPipeline, TINY_WAN)

    def render(self, task: WindowTask, overrides: Overrides = Overrides()) -> np.ndarray:
        import torch

        from farm.pipelines._fallback_steps import offload_once

        pipe, w = self.pipe, task.window
        if overrides.cpu_offload:
            offload_once(pipe, self.device, self.memory)
        if self.step_cache is not None:
            return self.render_steps(task)
        # 1. Initial latents: per latent frame, the noise of the pixel frame it ends on.
        latents = self._noise(task.seed, [w.start + 4 * i for i in range(latent_frames(w.length))],
                              task.height, task.width)
        # 2. Text conditioning: the window's middle frame's.
        positive, negative = self._embeddings(task)
        # 3-4. Denoise and decode.
        with torch.inference_mode():
            out = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, num_frames=w.length,
                       height=task.height, width=task.width, num_inference_steps=task.steps,
                       guidance_scale=task.guidance, guidance_scale_2=self._guidance_2(task), latents=latents,
                       output_type="np")
        return np.asarray(out.frames[0], dtype=np.float32)

    def render_steps(self, task: WindowTask) -> np.ndarray:
        """One window through the farm's step loop, alone: the window's own noise and
        conditioning, `latent_predict` and the scheduler's step, the causal decode."""
        from farm.latent import at_step
        from farm.report import skipped

        w, cache = task.window, self.step_cache
        cond = self.latent_conditioning(task)
        latents = self._noise(task.seed, [w.start + 4 * i for i in range(latent_frames(w.length))],
                              task.height, task.width)
        if cache is not None:
            cache.reset()
            before = cache.counts()
        for i, t in enumerate(self.latent_timesteps(task.steps)):
            at_step(self, i)
            latents = self.latent_step(self.latent_predict(cond, latents, i, t), t, latents, None)
        if cache is not None:
            self.last_cache = skipped(*(now - then for now, then in zip(cache.counts(), before)))
        return self.latent_decode(latents, None)[0]

    def _guidance_2(self, task: WindowTask) -> float | None:
        if self.pipe.config.boundary_ratio is None:
            return None
        guidance_2 = self.spec.wan_settings.guidance_2
        return task.guidance if guidance_2 is None else guidance_2

    def _embeddings(self, task: WindowTask):
        """(positive, negative) text embeddings of the window: its middle frame's prompt,
        mixed between the old and the new text where a scheduled change blends in."""
        import torch

        pipe, cfg = self.pipe, task.guidance > 1.0
        old, new, weight = task.conditioning[len(task.conditioning) // 2]
        length = self.spec.wan_settings.max_sequence_length
        with torch.inference_mode():
            embeds = {}
            for text in sorted({old, new}):
                embeds[text], negative = pipe.encode_prompt(text, task.negative_prompt or None, cfg, 1,
                                                            max_sequence_length=length, device=self.device)
            positive = embeds[new] if weight >= 1.0 else (1.0 - weight) * embeds[old] + weight * embeds[new]
        return positive, negative

    # Co-denoising (farm/latent.py) -------------------------------------------------------
    def latent_dtype(self):
        """fp32: WanPipeline prepares its latents in fp32 (its flow-matching step then returns
        the transformer's dtype; the farm keeps fp32 throughout, the same in fp32 runs)."""
        import torch

        return torch.float32

    def latent_timesteps(self, steps: int) -> list:
        if self.step_cache is not None:
            self.step_cache.set_steps(steps)
        self.pipe.scheduler.set_timesteps(steps, device=self.device)
        return list(self.pipe.scheduler.timesteps)

    def latent_noise(self, seed: int, start: int, end: int, height: int, width: int):
        """Latent frames [start, end) of the video, each the noise of the frame it ends on."""
        return self._noise(seed, [4 * j for j in range(start, end)], height, width)

    def _noise(self, seed: int, frames: list[int], height: int, width: int):
        """(1, z, len(frames), h, w): the noise of each of `frames` (farm.noise), fp32."""
        import torch

        from farm.noise import frame_noise

        scale = self.pipe.vae_scale_factor_spatial
        shape = (self.pipe.vae.config.z_dim, height // scale, width // scale)
        return torch.stack([frame_noise(seed, f, shape) for f in frames], dim=1).unsqueeze(0).to(self.device)

    def latent_conditioning(self, task: WindowTask) -> dict:
        positive, negative = self._embeddings(task)
        return {"window": task.window.index, "positive": positive, "negative": negative, "guidance": task.guidance,
                "guidance_2": self._guidance_2(task)}

    def latent_predict(self, cond: dict, latents, step: int, t):
        """One step's velocity prediction for one window, as WanPipeline's loop computes it:
        the expert for this timestep, guidance applied."""
        import torch

        pipe = self.pipe
        boundary = pipe.config.boundary_ratio
        if boundary is None or t >= boundary * pipe.scheduler.config.num_train_timesteps:
            model, guidance = pipe.transformer, cond["guidance"]
        else:
            model, guidance = pipe.transformer_2, cond["guidance_2"]
        self._t = t
        with torch.inference_mode():
            x, extra = self.model_input(cond, latents, model.dtype)
            timestep = t.expand(latents.shape[0])
            with self._scope(model, cond, "cond"):
                pred = model(hidden_states=x, timestep=timestep, encoder_hidden_states=cond["positive"],
                             return_dict=False, **extra)[0]
            if cond["guidance"] > 1.0:
                with self._scope(model, cond, "uncond"):
                    uncond = model(hidden_states=x, timestep=timestep, encoder_hidden_states=cond["negative"],
                                   return_dict=False, **extra)[0]
                pred = uncond + guidance * (pred - uncond)
        return pred

    def _scope(self, model, cond: dict, branch: str):
        """The window's own cache state for `branch` (nothing without `model.cache`)."""
        from contextlib import nullcontext

        return nullcontext() if self.step_cache is None else self.step_cache.scope(model, cond["window"], branch)

    def model_input(self, cond: dict, latents, dtype):
        """The transformer's input for one window, and what else it reads (image to video
        adds its condition and the picture's embedding)."""
        return latents.to(dtype), {}

    def latent_step(self, noise_pred, t, latents, generator):
        import torch

        with torch.inference_mode():
            return self.pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

    def latent_decode(self, latents, carry=None):
        """Latent frames → pixel frames (the first latent of the video gives 1 frame, every
        other 4), one latent frame at a time as the VAE's own decode loop does, continuing
        its causal state `carry` (None: the start of the video). Returns (frames (F, H, W, 3)
        float32 in [0, 1], the state after the last latent frame)."""
        import torch

        vae = self.pipe.vae
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None:  # model CPU offload: calling the decoder's parts skips the hook that moves it
            hook.pre_forward(vae)
        z_dim = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents.device, vae.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(latents.device, vae.dtype)
        first = carry is None
        # the decoder's causal cache, as AutoencoderKLWan._decode keeps it (one entry per causal conv)
        cache = [None] * vae._cached_conv_counts["decoder"] if first else [_to(c, latents.device) for c in carry]
        outs = []
        with torch.inference_mode():
            z = latents.to(vae.dtype) / inv_std + mean
            for i in range(z.shape[2]):
                x = vae.post_quant_conv(z[:, :, i : i + 1])
                outs.append(vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first and i == 0))
            video = torch.clamp(torch.cat(outs, 2), min=-1.0, max=1.0)
            frames = self.pipe.video_processor.postprocess_video(video, output_type="np")[0]
        return np.asarray(frames, dtype=np.float32), [_to(c, "cpu") for c in cache]


def load_wan(spec: "JobSpec", device: str, pipeline_class, tiny: str):
    """`pipeline_class` (WanPipeline, WanImageToVideoPipeline) from `model.base` (one
    transformer, or Wan 2.2's two experts), the flow-matching scheduler with `wan.shift`,
    and the memory knobs. Returns (pipe, applied memory knobs)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from farm.models.load import _load, apply_memory, place, quiet_progress, resolve_dtype, resolve_ref

    model = spec.model
    quiet_progress()
    dtype = resolve_dtype(model.dtype, device)
    ref = resolve_ref(model.base, tiny)
    pipe = _load("model.base", model.base, lambda: pipeline_class.from_pretrained(ref, dtype=dtype))
    if dtype != _fp32():
        pipe.vae.to(_fp32())  # the Wan VAE is run in fp32, as the diffusers guide loads it
    if pipe.config.expand_timesteps or getattr(pipe.vae.config, "patch_size", None):
        raise FarmError(f"model.base {model.base!r} is a Wan 2.2 TI2V checkpoint (a patchified VAE and per-token "
                        "timesteps), which the farm does not run yet; use a Wan 2.1 or Wan 2.2 A14B checkpoint")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                 shift=spec.wan_settings.shift)
    pipe.set_progress_bar_config(disable=True)
    denoisers = [m for m in (pipe.transformer, pipe.transformer_2) if m is not None]
    applied = apply_memory(pipe, model.memory, device, denoisers)
    return place(pipe, model.memory, device, denoisers), applied


def latent_frames(length: int) -> int:
    """Latent frames of a window of `length` frames (4k + 1, or 4k for a later window of a
    latent job, whose frames start 3 after a multiple of 4)."""
    return (length - 1) // 4 + 1


def _to(entry, device):
    """A cache entry on `device` (entries are tensors, None, or a marker string)."""
    return entry.to(device) if hasattr(entry, "to") else entry


def _fp32():
    import torch

    return torch.float32
