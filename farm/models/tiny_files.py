"""The tiny models as the single files users download: the same weights as the tiny
diffusers folders (farm.models.tiny), renamed to the original layouts (farm.models.ldm_layout)
and written as one `.safetensors` file each, built offline and cached like the folders:

    sd15            <cache>/models/tiny-sd15-file-v1/tiny-sd15.safetensors
                    a whole SD1.5 checkpoint: UNet, VAE and CLIP text encoder (as
                    v1-5-pruned-emaonly.safetensors holds them)
    vae             <cache>/models/tiny-vae-file-v1/tiny-vae.safetensors
                    tiny-vae's weights as a standalone VAE file (no prefix, as
                    vae-ft-mse-840000-ema-pruned.safetensors)
    controlnet      <cache>/models/tiny-controlnet-file-v1/tiny-controlnet.safetensors
                    the tiny ControlNet in the ControlNet 1.0 layout (`control_model.`)
    motion_adapter  <cache>/models/tiny-motion-adapter-file-v1/tiny-motion-adapter.safetensors
                    the tiny motion adapter as AnimateDiff's motion-module files name it

Each loads with `model.config: tiny`. The files are written inside build_cached's temp
folder, so a half-written file is never seen under its final name.
"""

from __future__ import annotations

from pathlib import Path

from farm.models.tiny import (TINY_BASE, TINY_CONTROLNET, TINY_MOTION_ADAPTER, TINY_VAE, TINY_VERSION, build_cached,
                              tiny_model_path)

FILE_KINDS = ("sd15", "vae", "controlnet", "motion_adapter")


def tiny_file_path(kind: str, root: Path | None = None) -> Path:
    """The single file of tiny model `kind`, building it on first use."""
    if kind not in FILE_KINDS:
        raise KeyError(f"unknown tiny single file {kind!r}; known: {list(FILE_KINDS)}")
    stem = f"tiny-{kind.replace('_', '-')}"
    folder = build_cached(f"{stem}-file-{TINY_VERSION}", lambda f: _write(kind, f / f"{stem}.safetensors", root), root)
    return folder / f"{stem}.safetensors"


def _write(kind: str, path: Path, root: Path | None) -> None:
    from safetensors.torch import save_file

    from farm.models import ldm_layout

    if kind == "sd15":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        base = tiny_model_path(TINY_BASE, root)
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        state = ldm_layout.unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)
        state |= ldm_layout.vae_to_ldm(AutoencoderKL.from_pretrained(base, subfolder="vae").state_dict())
        state |= ldm_layout.text_encoder_to_ldm(CLIPTextModel.from_pretrained(base, subfolder="text_encoder").state_dict())
    elif kind == "vae":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(tiny_model_path(TINY_VAE, root))
        state = ldm_layout.vae_to_ldm(vae.state_dict(), prefix="")
    elif kind == "controlnet":
        from diffusers import ControlNetModel

        controlnet = ControlNetModel.from_pretrained(tiny_model_path(TINY_CONTROLNET, root))
        state = ldm_layout.controlnet_to_ldm(controlnet.state_dict(), controlnet.config.layers_per_block)
    else:
        from diffusers import MotionAdapter

        adapter = MotionAdapter.from_pretrained(tiny_model_path(TINY_MOTION_ADAPTER, root))
        state = ldm_layout.motion_adapter_to_original(adapter.state_dict(), adapter.config.motion_max_seq_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
