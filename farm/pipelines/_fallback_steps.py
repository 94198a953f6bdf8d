"""Fallback steps every pipeline renderer shares (see farm/fallbacks.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def offload_once(pipe, device: str, memory: dict) -> None:
    """The OOM ladder's second step: model CPU offload. It sticks for the actor's later
    windows; on a CPU actor there is nothing to offload."""
    if device.startswith("cuda") and memory.get("cpu_offload") is not True:
        pipe.enable_model_cpu_offload(device=device)
        memory["cpu_offload"] = True


def decode_in_fp32(pipe, latents: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """The NaN ladder's step: decode `latents` with the VAE upcast to fp32 (`decode` is the
    pipeline's own decode call), then post-process as the pipeline does. Frames (F, H, W, 3)."""
    vae, dtype = pipe.vae, pipe.vae.dtype
    vae.to(torch.float32)
    try:
        video = decode(latents.to(torch.float32))
    finally:
        vae.to(dtype)
    frames = pipe.video_processor.postprocess_video(video=video, output_type="np")
    return np.asarray(frames[0], dtype=np.float32)
