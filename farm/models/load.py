"""Load a diffusers pipeline from a ModelSpec: `tiny`, a local folder, a hub id, or (for
the AnimateDiff pipelines) a single-file checkpoint.

`tiny` goes through exactly the same `from_pretrained` calls as a real checkpoint; it
only decides which folder to read. A hub id downloads through huggingface_hub as usual
(or reads its cache); with `HF_HUB_OFFLINE=1` a missing model fails at once. A single
file goes through `from_single_file` with the configs `model.config` names
(farm/models/single_file.py), offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from farm.errors import FarmError
from farm.identity import TINY_LORAS
from farm.models import single_file
from farm.models.schedulers import SCHEDULERS
from farm.models.single_file import is_single_file
from farm.models.tiny import IP_ADAPTER_SUBFOLDER, TINY_BASE, TINY_IP_ADAPTER, TINY_MOTION_ADAPTER, TINY_VAE, tiny_model_path

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


def _load(what: str, ref: str, loader, config: str | None = None, layout: str = "a local folder in diffusers layout"):
    """`loader()`, with a failure to read `ref` (the value of spec field `what`) turned into
    a FarmError that names the field and says what would load. `config`: the
    `model.config` a single file is read with; `layout`: what a folder of it holds."""
    import pickle

    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        return loader()
    except (OSError, ValueError, KeyError, SingleFileComponentError, pickle.UnpicklingError) as err:
        if _pickled_objects(err):
            hint = ("It holds more than tensors: the farm reads .ckpt and .pth files only with "
                    "torch.load(weights_only=True), which refuses pickled Python objects (they could run code). "
                    "Use the .safetensors release of the model, or convert the file on a machine you trust.")
        elif is_single_file(ref):
            hint = (f"A single file must hold the weights in the original (LDM) layout of the model that "
                    f"model.config describes ({config or 'sd15'}: {single_file.config_folder(config)}); "
                    "for another architecture give model.config a folder of its configs in diffusers layout.")
        else:
            hint = (f"Give {layout}, or a hub id reachable from this node "
                    "(HF_HUB_OFFLINE=1 allows only cached models).")
        raise FarmError(f"cannot load {what} from {ref!r}: {str(err).strip().rstrip('.')}. {hint}") from err


def _pickled_objects(err: BaseException | None) -> bool:
    """Whether `err` (or an error it was raised from or while handling) is torch's refusal to
    unpickle anything but tensors."""
    import pickle

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, pickle.UnpicklingError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


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


def load_ip_adapter(pipe, model: ModelSpec) -> None:
    """`model.ip_adapter` into the pipeline, when given: `load_ip_adapter` reads the weights
    file `model.ip_adapter_weights` from the adapter's models/ folder (h94/IP-Adapter's
    layout; a local folder may also hold it at its top) and the CLIP image encoder beside
    it (models/image_encoder/), in the pipeline's dtype. Loaded once, with the pipeline,
    whether or not a window has an anchor: a window without one runs it at scale 0, which
    diffusers' IP-Adapter attention skips, so its frames are those of no adapter at all."""
    if model.ip_adapter is None:
        return
    ref = resolve_ref(model.ip_adapter, TINY_IP_ADAPTER)
    folder = Path(ref).expanduser()
    subfolder = "" if folder.is_dir() and (folder / model.ip_adapter_weights).is_file() else IP_ADAPTER_SUBFOLDER
    layout = (f"a folder in h94/IP-Adapter's layout ({IP_ADAPTER_SUBFOLDER}/{model.ip_adapter_weights} and "
              f"{IP_ADAPTER_SUBFOLDER}/image_encoder/; or the weights file at its top, beside image_encoder/)")
    _load("model.ip_adapter", model.ip_adapter,
          lambda: pipe.load_ip_adapter(ref, subfolder=subfolder, weight_name=model.ip_adapter_weights,
                                       image_encoder_folder="image_encoder"), layout=layout)


def load_loras(pipe, loras) -> None:
    """`load_lora_weights` for each LoRA under its name, then `set_adapters` with the weights.
    A LoRA for the motion modules (zoom-in, pan-left, …) and one for the SD UNet load the
    same way; diffusers routes each key to its module, and reads kohya-ss files itself. A
    motion LoRA in AnimateDiff's own layout is converted first (farm.models.lora_formats).
    A LoRA that reaches no layer of the pipeline is refused: diffusers would only warn."""
    from farm.models.lora_formats import touched_layers

    if not loras:
        return
    for lora in loras:
        what = f"model.loras[{lora.name}]"
        source = lora.path or lora.id
        if lora.id in TINY_LORAS:
            from farm.models.tiny_lora import tiny_lora_path

            source = str(tiny_lora_path(TINY_LORAS[lora.id]))
        kwargs = {"adapter_name": lora.name}
        if lora.weight_name:
            kwargs["weight_name"] = lora.weight_name
        weights = _load(what, source, lambda: _lora_weights(source))
        _load(what, source, lambda: pipe.load_lora_weights(weights, **kwargs))
        if not touched_layers(pipe, lora.name):
            raise FarmError(
                f"{what}: {source} changed no layer of this pipeline: none of its keys names a module of the "
                "UNet, the motion modules or the text encoder. It is probably a LoRA for another model family "
                "(SDXL, Flux, …); give one trained for SD1.5 or AnimateDiff.")
    pipe.set_adapters([lora.name for lora in loras], adapter_weights=[lora.weight for lora in loras])


def _lora_weights(source: str):
    """What `load_lora_weights` is given for `source`: the path or hub id itself, or, for
    a motion LoRA file in AnimateDiff's layout, its tensors under diffusers' names."""
    from farm.models.lora_formats import animatediff_motion_lora_to_diffusers, is_animatediff_motion_lora, read_keys

    if not Path(source).is_file() or not is_animatediff_motion_lora(read_keys(source)):
        return source
    return animatediff_motion_lora_to_diffusers(single_file.read_checkpoint(source))


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
    if is_single_file(ref):
        return _load("model.motion_adapter", ref, lambda: single_file.load_motion_adapter(ref, model.config, dtype),
                     model.config)
    return _load("model.motion_adapter", model.motion_adapter, lambda: MotionAdapter.from_pretrained(ref, dtype=dtype))


def load_vae(model: ModelSpec, dtype):
    """`model.vae`, the VAE that replaces the base's: None when not given. A folder holds
    the VAE itself (config.json at its top, as a VAE repo such as stabilityai/sd-vae-ft-mse)
    or a whole pipeline (vae/config.json)."""
    from diffusers import AutoencoderKL

    if model.vae is None:
        return None
    ref = resolve_ref(model.vae, TINY_VAE)
    if is_single_file(ref):
        return _load("model.vae", ref, lambda: single_file.load_model(AutoencoderKL, ref, model.config, "vae", dtype),
                     model.config)
    pipeline_folder = Path(ref).is_dir() and not (Path(ref) / "config.json").is_file() and (Path(ref) / "vae").is_dir()
    subfolder = {"subfolder": "vae"} if pipeline_folder else {}
    return _load("model.vae", model.vae, lambda: AutoencoderKL.from_pretrained(ref, dtype=dtype, **subfolder))


def load_base(pipeline_class, model: ModelSpec, dtype, **components):
    """`model.base` as `pipeline_class`, with `components` (motion adapter, ControlNet)
    and `model.vae` given ready-made: `from_pretrained` for `tiny`, a folder or a hub id,
    `from_single_file` for a checkpoint file."""
    vae = load_vae(model, dtype)
    if vae is not None:
        components["vae"] = vae
    ref = resolve_ref(model.base, TINY_BASE)
    if is_single_file(ref):
        return _load("model.base", ref,
                     lambda: single_file.load_pipeline(pipeline_class, ref, model.config, dtype, **components),
                     model.config)
    return _load("model.base", model.base, lambda: pipeline_class.from_pretrained(ref, dtype=dtype, **components))


def load_animatediff(model: ModelSpec, device: str):
    """AnimateDiffPipeline = an SD1.5 base + a motion adapter, with the job's scheduler
    (farm.models.schedulers), LoRAs and memory knobs. Returns (pipe, applied memory knobs)."""
    from diffusers import AnimateDiffPipeline

    quiet_progress()
    dtype = resolve_dtype(model.dtype, device)
    adapter = load_motion_adapter(model, dtype)
    pipe = load_base(AnimateDiffPipeline, model, dtype, motion_adapter=adapter)
    return finish_animatediff(pipe, model, device)


def finish_animatediff(pipe, model: ModelSpec, device: str):
    """The steps every AnimateDiff variant shares after loading: scheduler, IP-Adapter,
    LoRAs, memory, placement. Returns (pipe, applied memory knobs)."""
    set_scheduler(pipe, model.scheduler_name)
    load_ip_adapter(pipe, model)
    load_loras(pipe, model.loras)
    pipe.set_progress_bar_config(disable=True)
    applied = apply_memory(pipe, model.memory, device)
    return place(pipe, model.memory, device), applied
