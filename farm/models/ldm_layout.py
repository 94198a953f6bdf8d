"""diffusers → original (LDM) key names: how a downloaded single-file checkpoint names the
weights that diffusers keeps in its component folders.

diffusers reads these files with `from_single_file` (its own LDM → diffusers mapping);
this module goes the other way, so that the tiny models can be written as the files users
download, and the farm's single-file path is tested on the layout real files have:

    unet          model.diffusion_model.   input_blocks / middle_block / output_blocks
    vae           first_stage_model.       encoder.down.N.block.M, mid.attn_1 (q/k/v/proj_out
                                           as 1×1 convolutions), decoder.up counted from the top
                                           (a standalone VAE file has no prefix)
    text encoder  cond_stage_model.transformer.text_model.   the Hugging Face CLIP names
    controlnet    control_model.           the UNet's encoder half, zero_convs, input_hint_block
    motion        (no prefix)              AnimateDiff's motion modules: temporal_transformer,
                                           attention_blocks, norms, ff_norm, pos_encoder.pe

Each function takes a diffusers state dict and returns the original one (the same tensors,
renamed; the VAE's attention weights reshaped to convolutions). A key it does not know is
an error, so a layout change in diffusers cannot slip by unconverted.
"""

from __future__ import annotations

import math
import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
CONTROLNET_PREFIX = "control_model."

# A UNet resnet's layers: diffusers name → LDM name.
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
# The VAE mid-block attention's layers: diffusers name → LDM name.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split(key: str) -> tuple[str, str]:
    """("a.b.c", "weight") for "a.b.c.weight"."""
    module, _, param = key.rpartition(".")
    return module, param


def _resnet(rest: str) -> str:
    module, param = _split(rest)
    return f"{_UNET_RESNET[module]}.{param}"


def _unet_blocks(key: str, layers: int, up_attention: set[int]) -> str | None:
    """The LDM name of a key inside the down, mid or up blocks (None: not one of them)."""
    per_block = layers + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * per_block + layer
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{1 + int(m[1]) * per_block + layers}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * per_block + layer
        return f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        block = int(m[1])
        # After the block's last resnet: at position 2 when the block has attentions, else 1.
        return f"output_blocks.{block * per_block + layers}.{2 if block in up_attention else 1}.conv.{m[2]}"
    return None


def _top(key: str, names: dict[str, str]) -> str | None:
    module, param = _split(key)
    return f"{names[module]}.{param}" if module in names else None


def unet_to_ldm(state: dict, layers_per_block: int) -> dict:
    """A UNet2DConditionModel's weights under `model.diffusion_model.` (SD1.x layout)."""
    up_attention = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    out = {}
    for key, value in state.items():
        name = _top(key, _UNET_TOP) or _unet_blocks(key, layers_per_block, up_attention)
        if name is None:
            raise KeyError(f"no LDM name for UNet weight {key!r}")
        out[UNET_PREFIX + name] = value
    return out


def controlnet_to_ldm(state: dict, layers_per_block: int) -> dict:
    """A ControlNetModel's weights under `control_model.` (the ControlNet 1.0 layout): the
    UNet's encoder half, `zero_convs` for the down residuals, `middle_block_out`, and the
    conditioning embedding as `input_hint_block` (convolutions at even positions, SiLUs
    between them)."""
    hint_blocks = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    top = {**{k: v for k, v in _UNET_TOP.items() if k.startswith(("time_embedding", "conv_in"))},
           "controlnet_cond_embedding.conv_in": "input_hint_block.0",
           "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * (hint_blocks + 1)}",
           "controlnet_mid_block": "middle_block_out.0"}
    out = {}
    for key, value in state.items():
        name = _top(key, top) or _unet_blocks(key, layers_per_block, set())
        if name is None and (m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(\w+)", key)):
            name = f"zero_convs.{m[1]}.0.{m[2]}"
        if name is None and (m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(\w+)", key)):
            name = f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
        if name is None:
            raise KeyError(f"no LDM name for ControlNet weight {key!r}")
        out[CONTROLNET_PREFIX + name] = value
    return out


def vae_to_ldm(state: dict, prefix: str = VAE_PREFIX) -> dict:
    """An AutoencoderKL's weights in the LDM layout, under `prefix` (`first_stage_model.`
    inside a full checkpoint; "" for a standalone VAE file, as VAEs are shared)."""
    up_blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.up_blocks."))
    out = {}
    for key, value in state.items():
        name = key.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            side, way, block, layer, rest = m[1], m[2], int(m[3]), m[4], m[5]
            block = block if way == "down" else up_blocks - 1 - block  # LDM counts the decoder from the top
            name = f"{side}.{way}.{block}.block.{layer}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            name = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            name = f"decoder.up.{up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            name = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value.reshape(*value.shape, 1, 1)  # LDM's attention projections are 1×1 convolutions
        elif not re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.\w+|(post_)?quant_conv\.\w+", name):
            raise KeyError(f"no LDM name for VAE weight {key!r}")
        out[prefix + name] = value
    return out


def text_encoder_to_ldm(state: dict) -> dict:
    """A CLIPTextModel's weights under `cond_stage_model.transformer.text_model.`, as SD1.x
    checkpoints hold them (transformers ≥ 5.6 keeps them without the `text_model.` level)."""
    return {TEXT_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


_MOTION_INNER = {"attn1": "attention_blocks.0", "attn2": "attention_blocks.1", "norm1": "norms.0",
                 "norm2": "norms.1", "norm3": "ff_norm"}


def motion_adapter_to_original(state: dict, max_seq_length: int) -> dict:
    """A MotionAdapter's weights as AnimateDiff's own motion-module files name them
    (`mm_sd_v15_v2.ckpt`): `….motion_modules.N.temporal_transformer.…`, with the temporal
    attention blocks' sinusoidal position tables (`pos_encoder.pe`, which diffusers
    recomputes and skips)."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"(.+\.motion_modules\.\d+)\.(.+)", key)
        if m is None:
            raise KeyError(f"no AnimateDiff name for motion-module weight {key!r}")
        head, rest = m[1], m[2]
        if rest.endswith(".pos_embed.pe"):
            continue  # diffusers' own copy of the position table; AnimateDiff keeps it per attention block
        rest = re.sub(r"\b(attn1|attn2|norm1|norm2|norm3)\b", lambda n: _MOTION_INNER[n[1]], rest)
        out[f"{head}.temporal_transformer.{rest}"] = value
        if p := re.fullmatch(r"(transformer_blocks\.\d+\.attention_blocks\.\d)\.to_q\.weight", rest):
            out[f"{head}.temporal_transformer.{p[1]}.pos_encoder.pe"] = _sinusoids(max_seq_length, value.shape[1])
    return out


def _sinusoids(length: int, dim: int):
    """AnimateDiff's position table (1, length, dim): sin on even channels, cos on odd."""
    import torch

    position = torch.arange(length).unsqueeze(1)
    rate = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2] = torch.sin(position * rate)
    table[0, :, 1::2] = torch.cos(position * rate)
    return table
