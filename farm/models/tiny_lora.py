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

Two more are single files in the formats LoRAs are shared in (`tiny_lora_file`):

    kohya              tiny-lora-kohya.safetensors: a kohya-ss LoRA of the tiny SD1.5, on the
                       UNet's transformer blocks (attention, feed-forward, proj_in/proj_out)
                       and the text encoder's attention and MLP layers: `lora_unet_…` /
                       `lora_te_…` module names, `.lora_down.weight`, `.lora_up.weight`, `.alpha`
    motion-animatediff tiny-motion-lora.ckpt: the `motion` LoRA's weights as AnimateDiff's own
                       motion LoRAs hold them (`v2_lora_ZoomIn.ckpt`; a pickle of tensors)

The folders live in the farm cache next to the tiny models, written once and atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

from farm.models.tiny import TINY_BASE, TINY_MOTION_ADAPTER, TINY_VERSION, build_cached, tiny_model_path

LORA_KINDS = ("motion", "sd")
FILE_KINDS = {"kohya": "tiny-lora-kohya.safetensors", "motion-animatediff": "tiny-motion-lora.ckpt"}
LORA_RANK = 4
_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
#: The kohya LoRA's alpha: half its rank, so its layers are scaled by alpha / rank = 0.5.
KOHYA_ALPHA = 2.0
#: The layers kohya-ss trains by default: in the UNet's transformer blocks, and the text encoder's.
_KOHYA_UNET = re.compile(r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)"
                         r"|ff\.net\.(0\.proj|2)))")
_KOHYA_TEXT = re.compile(r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])")


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


def tiny_lora_file(kind: str, root: Path | None = None) -> Path:
    """The file of tiny LoRA `kind` ("kohya" or "motion-animatediff"), building it on first use."""
    if kind not in FILE_KINDS:
        raise KeyError(f"unknown tiny LoRA file {kind!r}; known: {list(FILE_KINDS)}")
    name = FILE_KINDS[kind]
    builder = _build_kohya if kind == "kohya" else _build_motion_animatediff
    return build_cached(f"tiny-lora-{kind}-{TINY_VERSION}", lambda folder: builder(folder / name, root), root) / name


def _build_kohya(path: Path, root: Path | None) -> None:
    """Each layer's down and up matrices keep torch's default init (an nn.Linear or 1×1
    nn.Conv2d of rank 4 made after `torch.manual_seed(0)`), layer by layer in name order."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    base = tiny_model_path(TINY_BASE, root)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    text = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    layers = [("lora_unet_" + name, module) for name, module in unet.named_modules() if _KOHYA_UNET.fullmatch(name)]
    # kohya names text-encoder layers as in transformers' CLIPTextModel before 5.6 (`text_model.…`)
    layers += [("lora_te_text_model_" + name, module) for name, module in text.named_modules()
               if _KOHYA_TEXT.fullmatch(name)]
    torch.manual_seed(0)
    state = {}
    for name, module in sorted(layers, key=lambda item: item[0]):
        kohya = name.replace(".", "_")
        if isinstance(module, torch.nn.Conv2d):
            down = torch.nn.Conv2d(module.in_channels, LORA_RANK, 1, bias=False)
            up = torch.nn.Conv2d(LORA_RANK, module.out_channels, 1, bias=False)
        else:
            down = torch.nn.Linear(module.in_features, LORA_RANK, bias=False)
            up = torch.nn.Linear(LORA_RANK, module.out_features, bias=False)
        state[f"{kohya}.lora_down.weight"] = down.weight.detach().clone()
        state[f"{kohya}.lora_up.weight"] = up.weight.detach().clone()
        state[f"{kohya}.alpha"] = torch.tensor(KOHYA_ALPHA)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def _build_motion_animatediff(path: Path, root: Path | None) -> None:
    import torch
    from safetensors.torch import load_file

    from farm.models.lora_formats import diffusers_motion_lora_to_animatediff

    state = load_file(str(tiny_lora_path("motion", root) / "pytorch_lora_weights.safetensors"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(diffusers_motion_lora_to_animatediff(state), path)
