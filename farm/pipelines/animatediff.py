"""AnimateDiff text-to-video: one window = one AnimateDiffPipeline call.

    1. initial latents: the per-frame noise of the window's global frames (farm.noise)
    2. a CPU generator for any stochastic scheduler step, seeded by the window's first frame
    3. text conditioning: one prompt, or one embedding per frame (prompt schedules); with
       `model.ip_adapter`, the identity anchor's image embedding and scale
    4. denoise and decode (decode chunk and VAE precision as the fallback ladder asks)

With `window.reconcile: latent` the windows are denoised together (farm/latent.py), and
the renderer lends that loop the parts of `AnimateDiffPipeline.__call__` it is made of
(`latent_*` below): the same prompt encoding, scaled model input, UNet call, guidance,
scheduler step and VAE decode, one window or one frame at a time.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from farm.identity import config_identity, lora_identity, ref_identity, spec_value
from farm.models.schedulers import SCHEDULERS
from farm.models.remote import is_staged_file
from farm.models.single_file import is_single_file
from farm.models.tiny import TINY_BASE, TINY_IP_ADAPTER, TINY_MOTION_ADAPTER, TINY_VAE
from farm.pipelines._base import LoadedRenderer, Pipeline, read_picture
from farm.tasks import Overrides, WindowTask

if TYPE_CHECKING:
    from farm.spec import JobSpec


class AnimateDiff(Pipeline):
    name = "animatediff"
    renderer = "farm.pipelines.animatediff:AnimateDiffRenderer"
    tiny_base = TINY_BASE
    single_file_fields = ("model.base", "model.motion_adapter", "model.vae")
    no_reference = None  # an IP-Adapter (model.ip_adapter) reads the identity anchor

    def key_fields(self, spec: "JobSpec") -> dict:
        """The motion adapter, scheduler and LoRAs; `model.vae` and `model.ip_adapter` when
        given; and the configs single files are read with, when there are any (absent
        otherwise, so the keys of a job with none of them are those it always had)."""
        model = spec.model
        scheduler_class, settings = SCHEDULERS[model.scheduler_name]
        fields = {
            "motion_adapter": ref_identity(model.motion_adapter, TINY_MOTION_ADAPTER),
            "scheduler": {"class": scheduler_class, **settings},
            "loras": [lora_identity(lora) for lora in model.loras],
        }
        if model.vae is not None:
            fields["vae"] = ref_identity(model.vae, TINY_VAE)
        if model.ip_adapter is not None:
            fields["ip_adapter"] = {"source": ref_identity(model.ip_adapter, TINY_IP_ADAPTER),
                                    "weights": model.ip_adapter_weights}
        if any(is_single_file(spec_value(spec, field)) or is_staged_file(spec_value(spec, field))
               for field in self.single_file_fields):
            fields["config"] = config_identity(model.config)
        return fields

    def window_inputs(self, spec: "JobSpec", task: WindowTask, before: np.ndarray | None) -> WindowTask:
        """The identity anchor, when the job (or the window's shot) has one of scale > 0:
        scale 0 is no anchor, and renders (and is keyed) as none."""
        ref = spec.reference
        if ref is None or ref.scale == 0:
            return task
        return replace(task, reference=read_picture(ref.image), reference_scale=ref.scale)

    def describe_inputs(self, spec: "JobSpec", task: WindowTask) -> dict:
        ref = spec.reference
        if ref is None or ref.scale == 0:
            return {}
        return {"reference": {"image": ref.image, "scale": ref.scale}}


class AnimateDiffRenderer(LoadedRenderer):
    """Holds one loaded AnimateDiffPipeline and renders windows with it."""

    #: Image embeddings of the identity anchors it has seen (by picture digest), at most this many.
    ANCHORS = 16

    def __init__(self, spec: "JobSpec", device: str):
        super().__init__(spec, device)
        self._anchors: dict = {}
        self._anchor_scale: float | None = None
        self._lora_weights = tuple(lora.weight for lora in spec.model.loras)  # as loaded

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
        self._use_loras(task)
        # 1. Initial latents: the per-frame noise of the window's global frames.
        scale = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, task.height // scale, task.width // scale)
        latents = window_noise(task.seed, w.start, w.end, shape).to(self.device, pipe.unet.dtype)
        # 2. A generator for any stochastic scheduler step, seeded by the window's first frame.
        generator = torch.Generator(device="cpu").manual_seed(frame_seed(task.seed, w.start))
        # 3. Text conditioning: one prompt for the window, or one embedding per frame; the anchor.
        if len(set(task.conditioning)) == 1 and task.conditioning[0][2] >= 1.0:
            prompt_args = {"prompt": task.conditioning[0][1], "negative_prompt": task.negative_prompt or None}
            hook = None
        else:
            prompt_args, hook = self._per_frame_prompts(task)
        anchor = self._anchor(task)
        if anchor is not None:
            prompt_args["ip_adapter_image_embeds"] = self._use_anchor(*anchor)
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
        per_frame, hidden = self._per_frame_embeddings(task)

        def swap(module, args, kwargs):
            got = kwargs.get("encoder_hidden_states")
            if got is None or got.shape != hidden.shape:
                raise RuntimeError(f"per-frame prompts: the UNet got text embeddings of shape "
                                   f"{None if got is None else tuple(got.shape)}, expected {tuple(hidden.shape)}")
            return args, {**kwargs, "encoder_hidden_states": hidden.to(got.dtype)}

        hooks = _Hooks([m.register_forward_pre_hook(swap, with_kwargs=True) for m in self.text_modules()])
        cfg = task.guidance > 1.0
        return {"prompt_embeds": per_frame[:1], "negative_prompt_embeds": hidden[:1] if cfg else None}, hooks

    def _per_frame_embeddings(self, task: WindowTask):
        """(per-frame positive embeddings (F, 77, D), the UNet's text input: negatives then
        positives under guidance, one per frame)."""
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
        return per_frame, hidden

    def _use_loras(self, task: WindowTask) -> None:
        """The window's shot's own LoRA weights (`task.lora_weights`), else the job's, set
        with `set_adapters` when they change (the LoRAs stay loaded)."""
        loras = self.spec.model.loras
        weights = task.lora_weights or tuple(lora.weight for lora in loras)
        if loras and weights != self._lora_weights:
            self.pipe.set_adapters([lora.name for lora in loras], adapter_weights=list(weights))
            self._lora_weights = weights

    def _anchor(self, task: WindowTask) -> tuple[list, float] | None:
        """The IP-Adapter's input for a window's calls (`ip_adapter_image_embeds`: the
        anchor's image embedding, after the unconditional one under guidance) and its
        scale; None when no adapter is loaded. A window without an anchor gets zeros at
        scale 0, which the adapter's attention skips: its frames are those of a pipeline
        without the adapter."""
        import torch

        if self.spec.model.ip_adapter is None:
            return None
        positive, negative = self._image_embeds(task.reference)
        scale = task.reference_scale if task.reference is not None else 0.0
        return [torch.cat([negative, positive]) if task.guidance > 1.0 else positive], scale

    def _use_anchor(self, embeds: list, scale: float) -> list:
        """Set the adapter's scale for the next UNet call (windows of different shots may
        alternate on one actor); returns `embeds`."""
        if scale != self._anchor_scale:
            self.pipe.set_ip_adapter_scale(scale)
            self._anchor_scale = scale
        return embeds

    def _image_embeds(self, picture: np.ndarray | None):
        """(positive, unconditional) image embeddings of an anchor picture, each (1, 1, …),
        computed once per picture (the pipeline's `encode_image`: CLIP's preprocessing, the
        image encoder; its hidden states for the adapters whose projection reads them).
        None, no anchor: zeros of the same shapes."""
        import torch
        from diffusers.models.embeddings import ImageProjection
        from PIL import Image

        from farm.store import frames_digest

        key = None if picture is None else frames_digest(picture)
        if key not in self._anchors:
            pipe = self.pipe
            hidden = not isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection)
            image = Image.fromarray(picture if picture is not None else np.zeros((224, 224, 3), np.uint8))
            with torch.inference_mode():
                positive, negative = pipe.encode_image(image, self.device, 1, hidden)
            if picture is None:
                positive = torch.zeros_like(positive)
            if len(self._anchors) >= self.ANCHORS:
                self._anchors.pop(next(iter(self._anchors)))
            self._anchors[key] = (positive[None], negative[None])
        return self._anchors[key]

    # Co-denoising (farm/latent.py) -------------------------------------------------------
    def latent_timesteps(self, steps: int) -> list:
        """4. Prepare timesteps (the pipeline's scheduler, as `__call__` sets it)."""
        self.pipe.scheduler.set_timesteps(steps, device=self.device)
        return list(self.pipe.scheduler.timesteps)

    def latent_noise(self, seed: int, start: int, end: int, height: int, width: int):
        """5. Prepare latent variables: the per-frame noise of frames [start, end), scaled
        by the scheduler's initial sigma as `prepare_latents` does."""
        from farm.noise import window_noise

        pipe = self.pipe
        scale = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, height // scale, width // scale)
        latents = window_noise(seed, start, end, shape).to(self.device, pipe.unet.dtype)
        return latents * pipe.scheduler.init_noise_sigma

    def latent_dtype(self):
        """The latents' dtype: the UNet's, as `prepare_latents` makes them."""
        return self.pipe.unet.dtype

    def latent_conditioning(self, task: WindowTask) -> dict:
        """3. Encode input prompt, for one window: the text input of its UNet calls, the
        identity anchor's image embedding (None without `model.ip_adapter`), and what a
        variant adds, e.g. its control frames."""
        import torch

        pipe, frames = self.pipe, task.window.length
        cfg = task.guidance > 1.0
        self._use_loras(task)  # a LoRA may reach the text encoder too
        if len(set(task.conditioning)) == 1 and task.conditioning[0][2] >= 1.0:
            with torch.inference_mode():
                positive, negative = pipe.encode_prompt(task.conditioning[0][1], self.device, 1, cfg,
                                                        task.negative_prompt or None)
            hidden = torch.cat([negative, positive]) if cfg else positive
            hidden = hidden.repeat_interleave(repeats=frames, dim=0)
        else:
            _, hidden = self._per_frame_embeddings(task)
        return {"hidden": hidden, "guidance": task.guidance, "task": task, "anchor": self._anchor(task)}

    def latent_predict(self, cond: dict, latents, step: int, t):
        """8. One denoising step's noise prediction for one window, guidance applied."""
        import torch

        pipe, cfg = self.pipe, cond["guidance"] > 1.0
        self._use_loras(cond["task"])
        anchor = {}
        if cond["anchor"] is not None:  # the UNet repeats the image embedding over the frames
            anchor = {"added_cond_kwargs": {"image_embeds": self._use_anchor(*cond["anchor"])}}
        with torch.inference_mode():
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = pipe.scheduler.scale_model_input(model_input, t)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=cond["hidden"], **anchor,
                                   **self.latent_residuals(cond, model_input, step, t)).sample
            if cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + cond["guidance"] * (text - uncond)
        return noise_pred

    def latent_residuals(self, cond: dict, model_input, step: int, t) -> dict:
        """What a variant adds to the UNet call (the ControlNet's residuals)."""
        return {}

    def latent_step(self, noise_pred, t, latents, generator):
        """8. Compute the previous noisy sample x_t -> x_t-1, for one frame."""
        import torch

        pipe = self.pipe
        kwargs = pipe.prepare_extra_step_kwargs(generator, 0.0)
        with torch.inference_mode():
            return pipe.scheduler.step(noise_pred, t, latents, **kwargs).prev_sample

    def latent_decode(self, latents, carry=None):
        """9. Post processing, one frame at a time (a batch of one decodes to the same bits
        wherever the frame's actor is): (F, H, W, 3) float32 in [0, 1]; a frame that
        decodes to NaN is decoded again with the VAE in fp32, as the ladder does. The VAE
        decodes each frame alone, so there is no state to carry: returns (frames, None)."""
        import torch

        from farm.fallbacks import is_broken
        from farm.pipelines._fallback_steps import decode_in_fp32

        pipe, frames = self.pipe, []
        for f in range(latents.shape[2]):
            one = latents[:, :, f : f + 1]
            with torch.inference_mode():
                video = pipe.decode_latents(one, 1)
                frame = np.asarray(pipe.video_processor.postprocess_video(video=video, output_type="np")[0],
                                   dtype=np.float32)
                if is_broken(frame) == "decoded to NaN/inf":
                    frame = decode_in_fp32(pipe, one, lambda x: pipe.decode_latents(x, 1))
            frames.append(frame)
        return np.concatenate(frames), None


class _Hooks:
    """Several hook handles, removed as one."""

    def __init__(self, handles: list):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
