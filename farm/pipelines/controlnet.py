"""AnimateDiff with a ControlNet: one window = one AnimateDiffControlNetPipeline call.

Everything AnimateDiffRenderer does (per-frame noise, CPU generator, prompt schedules,
decode chunk, VAE in fp32), plus one control image per frame: the window's slice of
`control.video`, read and resized to width × height by the driver (farm.control), and
weighted by `control.scale`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from farm.identity import ref_identity
from farm.models.tiny import TINY_CONTROLNET
from farm.pipelines._base import blank_frames
from farm.pipelines.animatediff import AnimateDiff, AnimateDiffRenderer
from farm.tasks import WindowTask

if TYPE_CHECKING:
    from farm.spec import JobSpec


class AnimateDiffControlNet(AnimateDiff):
    name = "animatediff-controlnet"
    renderer = "farm.pipelines.controlnet:AnimateDiffControlNetRenderer"
    spec_block, spec_block_needs = "control", "`video:`"
    local_inputs = (("control.video", "path"), ("control.model", "model"))
    single_file_fields = (*AnimateDiff.single_file_fields, "control.model")

    def key_fields(self, spec: "JobSpec") -> dict:
        return super().key_fields(spec) | {
            "controlnet": ref_identity(spec.control.model, TINY_CONTROLNET),
            "control_scale": spec.control.scale,
        }

    def window_inputs(self, spec: "JobSpec", task: WindowTask, before: np.ndarray | None) -> WindowTask:
        """The window's slice of `control.video`, resized to the job's size (and the
        identity anchor, as AnimateDiff's)."""
        from farm.control import read_control_frames

        w, task = task.window, super().window_inputs(spec, task, before)
        return replace(task, control=read_control_frames(spec.control.video, spec.control.start + w.start,
                                                               spec.control.start + w.end, spec.width, spec.height))

    def warmup_inputs(self, spec: "JobSpec", task: WindowTask) -> WindowTask:
        return replace(task, control=blank_frames(task))


def load_animatediff_controlnet(spec: "JobSpec", device: str):
    """AnimateDiffControlNetPipeline = an SD1.5 base + a motion adapter + a ControlNet
    (`control.model`), then what every AnimateDiff variant shares (scheduler, LoRAs, memory,
    placement). Returns (pipe, applied memory knobs)."""
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel

    from farm.models import single_file
    from farm.models.load import _load, finish_animatediff, load_base, load_motion_adapter, quiet_progress, resolve_dtype, resolve_ref

    model, control = spec.model, spec.control
    quiet_progress()
    dtype = resolve_dtype(model.dtype, device)
    adapter = load_motion_adapter(model, dtype)
    ref = resolve_ref(control.model, TINY_CONTROLNET)
    if single_file.is_single_file(ref):
        controlnet = _load("control.model", ref, lambda: single_file.load_model(
            ControlNetModel, ref, model.config, "controlnet", dtype), model.config)
    else:
        controlnet = _load("control.model", control.model, lambda: ControlNetModel.from_pretrained(ref, dtype=dtype))
    pipe = load_base(AnimateDiffControlNetPipeline, model, dtype, motion_adapter=adapter, controlnet=controlnet)
    return finish_animatediff(pipe, model, device)


class AnimateDiffControlNetRenderer(AnimateDiffRenderer):
    """Holds one loaded AnimateDiffControlNetPipeline and renders windows with it."""

    def load(self, spec: "JobSpec", device: str):
        return load_animatediff_controlnet(spec, device)

    def extra_args(self, task: WindowTask) -> dict:
        """The window's control frames, one PIL image per frame, and the ControlNet's weight."""
        from PIL import Image

        control, w = task.control, task.window
        if control is None:
            raise ValueError(f"window {w.index}: animatediff-controlnet needs the window's control frames "
                             "(task.control); the driver reads them from control.video")
        if control.dtype != np.uint8 or control.ndim != 4 or control.shape[0] != w.length or control.shape[1:] != (task.height, task.width, 3):
            raise ValueError(f"window {w.index}: task.control must be ({w.length}, {task.height}, {task.width}, 3) "
                             f"uint8; got {control.dtype} {control.shape}")
        return {
            "conditioning_frames": [Image.fromarray(frame) for frame in control],
            "controlnet_conditioning_scale": self.spec.control.scale,
        }

    def text_modules(self) -> list:
        """The pipeline hands the UNet and the ControlNet the same (2F, 77, D) text
        embeddings, so both get the per-frame ones."""
        return [self.pipe.unet, self.pipe.controlnet]

    # Co-denoising (farm/latent.py) -------------------------------------------------------
    def latent_conditioning(self, task: WindowTask) -> dict:
        """The text input, and the window's control frames (kept as uint8 and prepared at
        each step, so a shard of many windows holds no float copies of them)."""
        return super().latent_conditioning(task) | self.extra_args(task)

    def latent_residuals(self, cond: dict, model_input, step: int, t) -> dict:
        """The ControlNet's residuals for the UNet, as AnimateDiffControlNetPipeline computes
        them (no guess mode; control over every step)."""
        import torch

        pipe, task = self.pipe, cond["task"]
        frames = pipe.prepare_video(video=cond["conditioning_frames"], width=task.width, height=task.height,
                                    batch_size=task.window.length, num_videos_per_prompt=1, device=self.device,
                                    dtype=pipe.controlnet.dtype, do_classifier_free_guidance=cond["guidance"] > 1.0)
        control_input = torch.transpose(model_input, 1, 2)
        control_input = control_input.reshape((-1, *control_input.shape[2:]))
        down, mid = pipe.controlnet(control_input, t, encoder_hidden_states=cond["hidden"], controlnet_cond=frames,
                                    conditioning_scale=cond["controlnet_conditioning_scale"], guess_mode=False,
                                    return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
