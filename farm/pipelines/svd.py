"""Stable Video Diffusion (image → video): one window = one StableVideoDiffusionPipeline call.

    1. the conditioning picture: `task.image` (svd.image for window 0, the last frame of
       the window before for the others; the driver fills it in)
    2. initial latents: the per-frame noise of the window's global frames (farm.noise)
    3. denoise and decode: a CPU generator for the noise augmentation of the picture, the
       micro-conditioning (motion bucket, fps, noise augmentation) from `svd:`, the decode
       chunk and VAE precision as the fallback ladder asks
    4. float32 frames (F, H, W, 3) in [0, 1]; with `svd.color_match` (the default) their
       colour statistics matched to the conditioning picture's (farm.color), so a chain of
       windows does not drift in colour and contrast

Guidance: SVD ramps the guidance scale linearly over the frames, from `min_guidance_scale`
on the first (the conditioning picture itself needs none) to `max_guidance_scale` on the
last. The job's `guidance` is the maximum, and the minimum is 1.0 (no guidance), as in
SVD's reference sampler; a `guidance` below 1.0 is used for both ends.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from farm.color import match_statistics
from farm.errors import FarmError
from farm.models.tiny import TINY_SVD
from farm.pipelines._base import LoadedRenderer, Pipeline, read_picture
from farm.tasks import Overrides, WindowResult, WindowTask

if TYPE_CHECKING:
    from farm.spec import JobSpec


class Svd(Pipeline):
    """Chained windows: each window is conditioned on the last frame of the one before,
    and the first on `svd.image`."""

    name = "svd"
    renderer = "farm.pipelines.svd:SvdRenderer"
    tiny_base = TINY_SVD
    chained = True
    shot_image = "svd"  # a shot may start its chain from its own picture
    no_latent = ("SVD windows are chained (each starts from the decoded last frame of the one before), "
                 "so no two windows are denoised at the same time")
    spec_block, spec_block_needs = "svd", "at least `image:`"
    local_inputs = (("svd.image", "path"),)
    no_text = "is conditioned on svd.image, not on text"
    no_reference = ("is anchored by the picture each chain starts from (svd.image, or a shot's image); "
                    "it has no IP-Adapter")
    refuses = {
        "vae": "svd decodes with its own temporal VAE (AutoencoderKLTemporalDecoder); model.vae replaces the "
               "AutoencoderKL of the AnimateDiff pipelines",
        "scheduler": "svd uses its own EulerDiscreteScheduler; remove model.scheduler",
        "loras": "LoRAs apply to the AnimateDiff pipelines, not to svd",
        "memory.vae_slicing": "the SVD VAE (a temporal decoder) cannot decode in slices; "
                              "use model.memory.decode_chunk_size",
    }
    defaults = {"guidance": 3.0}  # SVD's max_guidance_scale in diffusers
    window_defaults = {"overlap": 1, "reconcile": "crossfade"}

    def key_fields(self, spec: "JobSpec") -> dict:
        return {
            "svd": spec.svd.model_dump(exclude={"image"}),  # the image is keyed per window, by content
            "decode_chunk_size": spec.model.memory.decode_chunk_size,  # SVD's VAE decodes frames together
        }

    def window_inputs(self, spec: "JobSpec", task: WindowTask, before: np.ndarray | None) -> WindowTask:
        return replace(task, image=read_picture(spec.svd.image) if task.window.start == 0 else before)

    def describe_inputs(self, spec: "JobSpec", task: WindowTask) -> dict:
        if task.window.start == 0:  # a chain's first window (the job's, or a shot's)
            return {"conditioned_on": {"image": spec.svd.image}}
        # chained windows share one frame: the last of the window before is this one's first
        return {"conditioned_on": {"window": task.window.index - 1, "frame": task.window.start}}

    def warmup_inputs(self, spec: "JobSpec", task: WindowTask) -> WindowTask:
        return replace(task, image=np.full((task.height, task.width, 3), 128, np.uint8))  # mid-grey

    def storable(self, result: WindowResult) -> bool:
        """SVD's temporal VAE makes a window decoded in smaller chunks (the OOM fallback)
        differ slightly from the one its key promises: such a window is used, not kept."""
        return not any(step.startswith("oom") for step in result.fallbacks)


def load_svd(spec: "JobSpec", device: str):
    """StableVideoDiffusionPipeline from `model.base` with the memory knobs. Returns
    (pipe, applied memory knobs)."""
    from diffusers import StableVideoDiffusionPipeline

    from farm.models.load import _load, apply_memory, place, quiet_progress, resolve_dtype, resolve_ref

    model = spec.model
    if model.memory.vae_slicing:
        raise FarmError("model.memory.vae_slicing: the SVD VAE (a temporal decoder) cannot decode in slices; "
                        "use model.memory.decode_chunk_size instead")
    quiet_progress()
    dtype = resolve_dtype(model.dtype, device)
    ref = resolve_ref(model.base, TINY_SVD)
    pipe = _load("model.base", model.base, lambda: StableVideoDiffusionPipeline.from_pretrained(ref, dtype=dtype))
    pipe.set_progress_bar_config(disable=True)
    applied = apply_memory(pipe, model.memory, device)
    return place(pipe, model.memory, device), applied


class SvdRenderer(LoadedRenderer):
    """Holds one loaded StableVideoDiffusionPipeline and renders windows with it."""

    def load(self, spec: "JobSpec", device: str):
        return load_svd(spec, device)

    def render(self, task: WindowTask, overrides: Overrides = Overrides()) -> np.ndarray:
        import torch

        from farm.fallbacks import is_broken
        from farm.noise import frame_seed, window_noise
        from farm.pipelines._fallback_steps import decode_in_fp32, offload_once

        pipe, w, svd = self.pipe, task.window, self.spec.svd
        if overrides.cpu_offload:
            offload_once(self.pipe, self.device, self.memory)
        # 1. The conditioning picture.
        image = _conditioning_image(task)
        # 2. Initial latents: the per-frame noise of the window's global frames. The UNet takes
        #    noise and picture latents concatenated over channels, so the noise has half its
        #    input channels; SVD lays latents out frame-major, (1, F, C, h, w).
        scale = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels // 2, task.height // scale, task.width // scale)
        noise = window_noise(task.seed, w.start, w.end, shape).permute(0, 2, 1, 3, 4)
        latents = noise.to(self.device, pipe.unet.dtype)
        # 3. Denoise, then decode: by the pipeline, or by us with the VAE in fp32 (the NaN fallback).
        generator = torch.Generator(device="cpu").manual_seed(frame_seed(task.seed, w.start))
        chunk = overrides.decode_chunk_size or w.length
        with torch.inference_mode():
            out = pipe(
                image,
                height=task.height,
                width=task.width,
                num_frames=w.length,
                num_inference_steps=task.steps,
                min_guidance_scale=min(1.0, task.guidance),
                max_guidance_scale=task.guidance,
                fps=svd.fps,
                motion_bucket_id=svd.motion_bucket_id,
                noise_aug_strength=svd.noise_aug_strength,
                decode_chunk_size=chunk,
                generator=generator,
                latents=latents,
                output_type="latent" if overrides.vae_fp32 else "np",
            )
            if overrides.vae_fp32:
                latents = out.frames  # (1, F, C, h, w)
                frames = decode_in_fp32(pipe, latents, lambda x: pipe.decode_latents(x, latents.shape[1], chunk))
            else:
                frames = np.asarray(out.frames[0], dtype=np.float32)
        # 4. Frames (F, H, W, 3) float32 in [0, 1], their colours pulled back to the picture's.
        if svd.color_match and is_broken(frames) is None:  # a broken window goes to the ladder as it is
            frames = match_statistics(frames, task.image.astype(np.float32) / 255.0)
        return frames


def _conditioning_image(task: WindowTask):
    """`task.image` (H, W, 3) uint8 as the PIL image the pipeline takes."""
    from PIL import Image

    image = task.image
    if image is None:
        raise ValueError(f"window {task.window.index}: svd needs the window's conditioning image (task.image); "
                         "the driver fills it in from svd.image or the window before")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"window {task.window.index}: task.image must be (H, W, 3) uint8; got {image.dtype} "
                         f"{image.shape}")
    return Image.fromarray(image)
