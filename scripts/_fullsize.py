"""Full-size random-weight AnimateDiff models, for GPU timing only (benchmarks, not tests).

No model hub is reachable here, so real SD1.5 and motion-adapter weights cannot be fetched.
For timing, the weights do not matter but the shapes do: these are the real diffusers
classes at the configurations of SD1.5 (UNet 320/640/1280/1280, cross-attention 768, the
8× VAE at 128/256/512/512, a 12-layer 768-wide CLIP text encoder) and of the AnimateDiff
v1.5 motion adapter, with random weights (`torch.manual_seed(0)` before each). The frames
they render are noise; their cost per window is that of the real models. Every benchmark
that uses them says so.

    build(folder) -> (base folder, motion adapter folder)   # cached: built once
"""

from __future__ import annotations

import shutil
from pathlib import Path

MARK = "sd15-shaped-random-v1"


def build(root: Path, dtype: str = "fp16") -> tuple[Path, Path]:
    root = Path(root)
    base, adapter = root / f"{MARK}-base", root / f"{MARK}-motion-adapter"
    if not (base / "model_index.json").exists():
        _build_base(base, dtype)
    if not (adapter / "config.json").exists():
        _build_adapter(adapter, dtype)
    return base, adapter


def _dtype(name: str):
    import torch

    return {"fp16": torch.float16, "fp32": torch.float32}[name]


def _build_base(folder: Path, dtype: str) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from farm.models.tiny import save_sd_pipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # SD1.5's UNet: the diffusers defaults, cross-attention 768
        sample_size=64,
        cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8,
        layers_per_block=2,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, vocab_size=49408, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_sd_pipeline(tmp, unet, vae, text_encoder, _dtype(dtype))
    tmp.replace(folder)


def _build_adapter(folder: Path, dtype: str) -> None:
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(0)
    adapter = MotionAdapter(  # AnimateDiff v1.5: the diffusers defaults
        block_out_channels=(320, 640, 1280, 1280),
        motion_layers_per_block=2,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32,
        motion_max_seq_length=32,
    ).to(_dtype(dtype))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    adapter.save_pretrained(tmp, safe_serialization=True)
    tmp.replace(folder)
