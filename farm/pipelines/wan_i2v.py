"""Wan image-to-video: a long video that starts from a picture (`wan.image`).

Every window is conditioned on the picture: its CLIP embedding (Wan 2.1 I2V checkpoints
have an image encoder; Wan 2.2's I2V experts do not, and read only the condition) and a
condition of latents and mask, as WanImageToVideoPipeline builds it. The first window's
condition pins its first frame to the picture; the others pin nothing (a video of zeros
under a zero mask), so the picture anchors the whole video without every window restarting
from it. Windows are denoised by WanRenderer's step loop (`latent_*`), in both reconcile
modes: a crossfade window is a co-denoised job of one window.

    1. initial latents: as text to video (farm.pipelines.wan)
    2. conditioning: the window's text, the picture's embedding, the window's condition
    3. denoise: the transformer reads the latents and the condition stacked on channels
    4. decode with the causal video VAE
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from farm.models.tiny import TINY_WAN_I2V
from farm.pipelines._base import read_picture
from farm.pipelines.wan import Wan, WanRenderer, _fp32, latent_frames, load_wan
from farm.tasks import Overrides, WindowTask

if TYPE_CHECKING:
    from farm.spec import JobSpec


class WanI2V(Wan):
    name = "wan-i2v"
    renderer = "farm.pipelines.wan_i2v:WanI2VRenderer"
    tiny_base = TINY_WAN_I2V
    spec_block, spec_block_needs, spec_block_required = "wan", "`image:`", True
    block_requires = ("image",)
    block_refuses = {}
    local_inputs = (("wan.image", "path"),)
    shot_image = "wan"  # each shot may start from its own picture, its anchor
    no_reference = ("is anchored by the picture each shot starts from (a shot's image, else wan.image); it has "
                    "no IP-Adapter")

    def window_inputs(self, spec: "JobSpec", task: WindowTask, before: np.ndarray | None) -> WindowTask:
        """Every window reads the picture (keyed by its content)."""
        return replace(task, image=read_picture(spec.wan.image))

    def describe_inputs(self, spec: "JobSpec", task: WindowTask) -> dict:
        return {"conditioned_on": {"image": spec.wan.image, "first_frame": task.window.start == 0}}

    def warmup_inputs(self, spec: "JobSpec", task: WindowTask) -> WindowTask:
        return replace(task, image=np.full((task.height, task.width, 3), 128, np.uint8))


class WanI2VRenderer(WanRenderer):
    """Holds one loaded WanImageToVideoPipeline and renders windows with it."""

    def load(self, spec: "JobSpec", device: str):
        from diffusers import WanImageToVideoPipeline

        return load_wan(spec, device, WanImageToVideoPipeline, TINY_WAN_I2V)

    def render(self, task: WindowTask, overrides: Overrides = Overrides()) -> np.ndarray:
        """One window through the step loop, alone (the first window's frames are
        WanImageToVideoPipeline's for the same noise)."""
        from farm.pipelines._fallback_steps import offload_once

        if overrides.cpu_offload:
            offload_once(self.pipe, self.device, self.memory)
        return self.render_steps(task)

    def latent_conditioning(self, task: WindowTask) -> dict:
        """2. The window's text; the picture's CLIP embedding (if the checkpoint has an image
        encoder); the window's condition: mask and latents, the first frame pinned to the
        picture in the video's first window only."""
        import torch

        pipe = self.pipe
        if task.image is None:
            raise ValueError(f"window {task.window.index}: wan-i2v needs the picture (task.image)")
        from PIL import Image

        picture = Image.fromarray(task.image)
        cond = super().latent_conditioning(task)
        with torch.inference_mode():
            if pipe.image_encoder is not None:
                embeds = pipe.encode_image(picture, self.device)
                cond["image_embeds"] = embeds.to(pipe.transformer.dtype)
            cond["condition"] = self._condition(picture, task, pinned=task.window.start == 0)
        return cond

    def _condition(self, picture, task: WindowTask, pinned: bool):
        """(1, 4 + z, T, h, w): the mask (4 channels: latent frame 0 packs one frame, the
        others 4) and the VAE latents of the window's condition video: the picture then
        zeros when `pinned`, else zeros."""
        import torch

        pipe = self.pipe
        frames = 4 * (latent_frames(task.window.length) - 1) + 1
        h, w = task.height // 8, task.width // 8
        image = pipe.video_processor.preprocess(picture, height=task.height, width=task.width)
        image = image.to(self.device, _fp32()).unsqueeze(2)
        video = torch.cat([image if pinned else torch.zeros_like(image),
                           image.new_zeros(1, 3, frames - 1, task.height, task.width)], dim=2)
        vae = pipe.vae
        z_dim = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(self.device, _fp32())
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(self.device, _fp32())
        latent = vae.encode(video.to(vae.dtype)).latent_dist.mode().to(_fp32())
        latent = (latent - mean) * inv_std
        mask = torch.zeros(1, 1, frames, h, w, device=self.device)
        if pinned:
            mask[:, :, 0] = 1
        mask = torch.cat([mask[:, :, :1].repeat_interleave(4, dim=2), mask[:, :, 1:]], dim=2)
        mask = mask.view(1, -1, 4, h, w).transpose(1, 2)
        return torch.cat([mask, latent], dim=1)

    def model_input(self, cond: dict, latents, dtype):
        """The latents and the window's condition stacked on channels, and the picture's
        embedding."""
        import torch

        extra = {"encoder_hidden_states_image": cond["image_embeds"]} if "image_embeds" in cond else {}
        return torch.cat([latents, cond["condition"]], dim=1).to(dtype), extra


