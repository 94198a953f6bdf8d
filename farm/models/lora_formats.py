"""LoRA files as people share them, and whether a loaded LoRA reached the pipeline.

diffusers' `load_lora_weights` reads the diffusers/peft format and converts kohya-ss files
itself (`lora_unet_…` / `lora_te_…` keys with `.lora_down.weight`, `.lora_up.weight` and
`.alpha`: diffusers/loaders/lora_conversion_utils.py). It does not read the motion LoRAs of
AnimateDiff's own repository (`v2_lora_ZoomIn.ckpt`, …): those name the motion modules as
AnimateDiff does (`….motion_modules.0.temporal_transformer.transformer_blocks.0.
attention_blocks.0.processor.to_q_lora.down.weight`), which match no module of diffusers'
UNetMotionModel, so diffusers loads nothing and says so only in a log line. They are
converted here to diffusers' names first (`….motion_modules.0.transformer_blocks.0.attn1.
to_q.lora_A.weight`); AnimateDiff applied them as `W + weight · up @ down`, which is a
LoRA of alpha = rank, diffusers' default when a file gives no alpha.

And a LoRA whose keys name no module of the pipeline (a LoRA for SDXL or Flux given to an
SD1.5 base) also loads "successfully" in diffusers with a warning; `touched_layers`
counts the layers that carry the adapter, so the farm can refuse it.
"""

from __future__ import annotations

import re
from pathlib import Path

_MOTION_KEY = re.compile(r"(?P<head>.+\.motion_modules\.\d+)\.temporal_transformer\.(?P<block>transformer_blocks\.\d+)"
                         r"\.attention_blocks\.(?P<attn>\d)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora"
                         r"\.(?P<side>down|up)\.weight")


def read_keys(path: str | Path) -> list[str]:
    """The tensor names in a LoRA file, without reading the tensors of a safetensors file."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    from farm.models.single_file import read_checkpoint

    return list(read_checkpoint(path))


def is_animatediff_motion_lora(keys) -> bool:
    """Keys in the layout of AnimateDiff's own motion LoRAs."""
    return any(_MOTION_KEY.fullmatch(k) for k in keys)


def animatediff_motion_lora_to_diffusers(state: dict) -> dict:
    """An AnimateDiff motion LoRA's tensors under diffusers' peft names (`unet.`-prefixed)."""
    out = {}
    for key, value in state.items():
        m = _MOTION_KEY.fullmatch(key)
        if m is None:
            raise ValueError(f"{key!r} is not a key of an AnimateDiff motion LoRA")
        proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
        side = "lora_A" if m["side"] == "down" else "lora_B"
        out[f"unet.{m['head']}.{m['block']}.attn{int(m['attn']) + 1}.{proj}.{side}.weight"] = value
    return out


def diffusers_motion_lora_to_animatediff(state: dict) -> dict:
    """The other way (to write a tiny motion LoRA in AnimateDiff's layout)."""
    pattern = re.compile(r"unet\.(?P<head>.+\.motion_modules\.\d+)\.(?P<block>transformer_blocks\.\d+)\.attn(?P<attn>\d)"
                         r"\.(?P<proj>to_q|to_k|to_v|to_out\.0)\.lora_(?P<side>A|B)\.weight")
    out = {}
    for key, value in state.items():
        m = pattern.fullmatch(key)
        if m is None:
            raise ValueError(f"{key!r} is not a motion-module LoRA key in diffusers' layout")
        proj = m["proj"].removesuffix(".0")
        side = "down" if m["side"] == "A" else "up"
        out[f"{m['head']}.temporal_transformer.{m['block']}.attention_blocks.{int(m['attn']) - 1}"
            f".processor.{proj}_lora.{side}.weight"] = value
    return out


def touched_layers(pipe, adapter: str) -> int:
    """How many layers of the pipeline's models carry LoRA `adapter`."""
    import torch
    from peft.tuners.lora import LoraLayer

    return sum(1 for model in pipe.components.values() if isinstance(model, torch.nn.Module)
               for layer in model.modules() if isinstance(layer, LoraLayer) and adapter in layer.lora_A)
