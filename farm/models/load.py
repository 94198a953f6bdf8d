"""Load a diffusers pipeline from a ModelSpec: `tiny`, a local folder, or a hub id.

`tiny` goes through exactly the same `from_pretrained` calls as a real checkpoint; it
only decides which folder to read. A hub id downloads through huggingface_hub as usual
(or reads its cache); with `HF_HUB_OFFLINE=1` a missing model fails at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from farm.errors import FarmError
from farm.identity import TINY_LORAS
from farm.models.schedulers import SCHEDULERS
from farm.models.tiny import TINY_BASE, TINY_MOTION_ADAPTER, tiny_model_path

if TYPE_CHECKING:
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


def quiet_progress() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def set_scheduler(pipe, name: str) -> None:
    """Swap in scheduler `name` with the farm's settings (farm.models.schedulers)."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)


def load_loras(pipe, loras) -> None:
    """`load_lora_weights` for each LoRA under its name, then `set_adapters` with the weights.
    A LoRA for the motion modules (zoom-in, pan-left, …) and one for the SD UNet load the
    same way; diffusers routes each key to its module."""
    if not loras:
        return
    for lora in loras:
        source = lora.path or lora.id
        if lora.id in TINY_LORAS:
            from farm.models.tiny_lora import tiny_lora_path

            source = str(tiny_lora_path(TINY_LORAS[lora.id]))
        kwargs = {"adapter_name": lora.name}
        if lora.weight_name:
            kwargs["weight_name"] = lora.weight_name
        _load(f"model.loras[{lora.name}]", source, lambda: pipe.load_lora_weights(source, **kwargs))
    pipe.set_adapters([lora.name for lora in loras], adapter_weights=[lora.weight for lora in loras])


def apply_memory(pipe, memory, device: str, denoisers: list | None = None) -> dict:
    """Apply the `model.memory` knobs once, at load. Returns what was applied. `denoisers`
    are the modules the offload and casting knobs act on (the UNet by default; a DiT
    pipeline's transformers). Offloading only means something on CUDA and is skipped, and
    said so, on a CPU actor."""
    applied = {}
    denoisers = denoisers if denoisers is not None else [pipe.unet]
    cuda = device.startswith("cuda")
    if memory.forward_chunking:
        pipe.unet.enable_forward_chunking(chunk_size=1, dim=1)
        applied["forward_chunking"] = True
    if memory.vae_slicing:
        pipe.vae.enable_slicing()
        applied["vae_slicing"] = True
    if memory.vae_tiling:
        pipe.vae.enable_tiling()
        applied["vae_tiling"] = True
    if memory.layerwise_casting:
        for module in denoisers:
            module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=module.dtype)
        applied["layerwise_casting"] = "float8_e4m3fn"
    if memory.group_offload:
        if cuda:
            for module in denoisers:
                module.enable_group_offload(torch.device(device), offload_device=torch.device("cpu"),
                                            offload_type="block_level", num_blocks_per_group=1)
            applied["group_offload"] = "block_level, 1 block per group"
        else:
            applied["group_offload"] = "skipped: the actor runs on CPU"
    if memory.cpu_offload:
        if cuda:
            pipe.enable_model_cpu_offload(device=device)
            applied["cpu_offload"] = True
        else:
            applied["cpu_offload"] = "skipped: the actor runs on CPU"
    if memory.decode_chunk_size:
        applied["decode_chunk_size"] = memory.decode_chunk_size
    return applied


def place(pipe, memory, device: str, denoisers: list | None = None):
    """Move to `device`, unless offloading manages placement itself (group offload moves
    the denoisers block by block; the rest of the pipeline still goes to the device)."""
    if memory.cpu_offload and device.startswith("cuda"):
        return pipe
    if memory.group_offload and device.startswith("cuda"):
        offloaded = {id(m) for m in (denoisers if denoisers is not None else [pipe.unet])}
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module) and id(module) not in offloaded:
                module.to(device)
        return pipe
    return pipe.to(device)


def load_motion_adapter(model: ModelSpec, dtype):
    from diffusers import MotionAdapter

    ref = resolve_ref(model.motion_adapter, TINY_MOTION_ADAPTER)
    return _load("model.motion_adapter", model.motion_adapter, lambda: MotionAdapter.from_pretrained(ref, dtype=dtype))


def load_animatediff(model: ModelSpec, device: str):
    """AnimateDiffPipeline = an SD1.5 base + a motion adapter, with the job's scheduler
    (farm.models.schedulers), LoRAs and memory knobs. Returns (pipe, applied memory knobs)."""
    from diffusers import AnimateDiffPipeline

    quiet_progress()
    dtype = resolve_dtype(model.dtype, device)
    adapter = load_motion_adapter(model, dtype)
    base_ref = resolve_ref(model.base, TINY_BASE)
    pipe = _load(
        "model.base",
        model.base,
        lambda: AnimateDiffPipeline.from_pretrained(base_ref, motion_adapter=adapter, dtype=dtype),
    )
    return finish_animatediff(pipe, model, device)


def finish_animatediff(pipe, model: ModelSpec, device: str):
    """The steps every AnimateDiff variant shares after loading: scheduler, LoRAs, memory,
    placement. Returns (pipe, applied memory knobs)."""
    set_scheduler(pipe, model.scheduler_name)
    load_loras(pipe, model.loras)
    pipe.set_progress_bar_config(disable=True)
    applied = apply_memory(pipe, model.memory, device)
    return place(pipe, model.memory, device), applied
