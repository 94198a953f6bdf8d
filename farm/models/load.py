"""Load a diffusers pipeline from a ModelSpec: `tiny`, a local folder, or a hub id.

`tiny` goes through exactly the same `from_pretrained` calls as a real checkpoint; it
only decides which folder to read. A hub id downloads through huggingface_hub as usual
(or reads its cache); with `HF_HUB_OFFLINE=1` a missing model fails at once.
"""

from __future__ import annotations

import torch

from farm.errors import FarmError
from farm.models.schedulers import SCHEDULERS
from farm.models.tiny import TINY_BASE, TINY_MOTION_ADAPTER, tiny_model_path
from farm.spec import ModelSpec

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is fp16 on CUDA and fp32 on CPU. Half precision on a CPU is refused, loudly."""
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype == "fp16" and not device.startswith("cuda"):
        raise FarmError("model.dtype fp16 needs a CUDA device; this actor runs on CPU (use auto or fp32)")
    return _DTYPES[dtype]


def resolve_ref(ref: str, tiny_name: str) -> str:
    return str(tiny_model_path(tiny_name)) if ref == "tiny" else ref


def _load(what: str, ref: str, loader):
    try:
        return loader()
    except (OSError, ValueError) as err:
        raise FarmError(
            f"cannot load {what} from {ref!r}: {err}. Give a local folder in diffusers layout, "
            "or a hub id reachable from this node (HF_HUB_OFFLINE=1 allows only cached models)."
        ) from err


def load_animatediff(model: ModelSpec, device: str):
    """AnimateDiffPipeline = an SD1.5 base + a motion adapter, with the DDIM settings of the
    diffusers AnimateDiff guide (linear betas, no sample clipping, linspace timesteps)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    dtype = resolve_dtype(model.dtype, device)
    adapter_ref = resolve_ref(model.motion_adapter, TINY_MOTION_ADAPTER)
    base_ref = resolve_ref(model.base, TINY_BASE)
    adapter = _load(
        "model.motion_adapter", model.motion_adapter, lambda: MotionAdapter.from_pretrained(adapter_ref, dtype=dtype)
    )
    pipe = _load(
        "model.base",
        model.base,
        lambda: AnimateDiffPipeline.from_pretrained(base_ref, motion_adapter=adapter, dtype=dtype),
    )
    _, overrides = SCHEDULERS["ddim"]
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
