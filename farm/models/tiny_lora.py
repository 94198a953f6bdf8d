"""Tiny random LoRAs for the tiny AnimateDiff models, built offline with peft.

    motion   a LoRA on the motion modules' attention layers of the tiny MotionAdapter, like
             the camera-motion LoRAs (zoom-in, pan-left, …) published for AnimateDiff
    sd       a LoRA on the spatial attention layers of the tiny SD1.5 UNet, like an ordinary
             Stable Diffusion LoRA

Each is a folder holding `pytorch_lora_weights.safetensors` in the diffusers LoRA format
(`unet.`-prefixed peft keys), which `AnimateDiffPipeline.load_lora_weights(folder)` loads;
a job names it with `model.loras: [{path: <folder>, name: …}]`. peft would start the B
matrices at zero (a LoRA that changes nothing); here both A and B keep torch's default
random init after `torch.manual_seed(0)`, so a LoRA visibly changes the frames.

The folders live in the farm cache next to the tiny models, written once and atomically.
"""

from __future__ import annotations

from pathlib import Path

from farm.models.tiny import TINY_BASE, TINY_MOTION_ADAPTER, TINY_VERSION, build_cached, tiny_model_path

LORA_KINDS = ("motion", "sd")
LORA_RANK = 4
_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def tiny_lora_path(kind: str, root: Path | None = None) -> Path:
    """The folder of tiny LoRA `kind` ("motion" or "sd"), building it on first use."""
    if kind not in LORA_KINDS:
        raise KeyError(f"unknown tiny LoRA kind {kind!r}; known: {list(LORA_KINDS)}")
    name = f"tiny-lora-{kind}-{TINY_VERSION}"
    return build_cached(name, lambda folder: _build(kind, folder, root), root)


def _build(kind: str, folder: Path, root: Path | None) -> None:
    import torch
    from diffusers import MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    if kind == "motion":
        # MotionAdapter's modules are named as in UNetMotionModel (down_blocks.0.motion_modules.0…),
        # so its keys land on the motion modules of the assembled pipeline's UNet.
        model = MotionAdapter.from_pretrained(tiny_model_path(TINY_MOTION_ADAPTER, root))
    else:
        model = UNet2DConditionModel.from_pretrained(tiny_model_path(TINY_BASE, root), subfolder="unet")
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=_ATTENTION, init_lora_weights=False)
    torch.manual_seed(0)
    model = inject_adapter_in_model(config, model)
    layers = get_peft_model_state_dict(model)
    if not layers:
        raise RuntimeError(f"tiny LoRA {kind!r}: no attention layers matched {_ATTENTION}")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
