"""Window keys: the hash of everything that determines a window's frames.

    model      pipeline; base, motion adapter and ControlNet (`tiny` by build name, a hub
               id by name, a local folder by the sha256 of its files); scheduler and its
               settings; LoRAs (file sha256, name, weight); the dtype it runs in on this
               cluster (fp16 on CUDA, fp32 on CPU for `auto`); SVD's knobs; control scale
    window     its frame range, the prompt(s) of each of its frames (farm.prompts), the
               negative prompt, seed, size, steps, guidance, and its inputs by content:
               the SVD conditioning frame (the spec's image, or the last frame of the
               window before) and the window's control frames

Not in the key: the blend, encoding and interpolation (they act after the store), the
fault-injection settings (they never change a successful window's frames), and library
versions (upgrading torch or diffusers keeps the store; `farm store gc` clears it).
"""

from __future__ import annotations

from pathlib import Path

from farm.models.schedulers import SCHEDULERS
from farm.models.tiny import TINY_BASE, TINY_CONTROLNET, TINY_MOTION_ADAPTER, TINY_SVD
from farm.spec import TINY_LORAS, JobSpec, is_local_ref
from farm.store import file_digest, folder_digest, frames_digest, window_key


def _ref_identity(ref: str, tiny_name: str) -> str:
    if ref == "tiny":
        return f"tiny:{tiny_name}"
    if is_local_ref(ref):
        return f"folder-sha256:{folder_digest(ref)}"
    return f"hub:{ref}"


def _lora_identity(lora) -> dict:
    source = f"hub:{lora.id}" if lora.id else _ref_identity(lora.path, "")
    if lora.id in TINY_LORAS:
        source = f"tiny:{lora.id}"
    if lora.path and Path(lora.path).is_file():
        source = f"file-sha256:{file_digest(lora.path)}"
    return {"source": source, "weight_name": lora.weight_name, "name": lora.name, "weight": lora.weight}


def model_identity(spec: JobSpec, device_kind: str) -> dict:
    """The part of every window key that the job's models contribute. `device_kind` is
    `cuda` or `cpu`: the device class the pipeline actors run on."""
    model = spec.model
    if model.faults is not None and model.faults.simulate_seconds is not None:
        return {"pipeline": "simulation"}
    identity = {
        "pipeline": model.pipeline,
        "base": _ref_identity(model.base, TINY_SVD if model.pipeline == "svd" else TINY_BASE),
        "dtype": model.dtype_on(device_kind),
    }
    if model.pipeline == "svd":
        identity["svd"] = spec.svd.model_dump(exclude={"image"})  # the image is keyed per window
        identity["decode_chunk_size"] = model.memory.decode_chunk_size  # SVD's VAE decodes frames together
        return identity
    scheduler_class, settings = SCHEDULERS[model.scheduler_name]
    identity |= {
        "motion_adapter": _ref_identity(model.motion_adapter, TINY_MOTION_ADAPTER),
        "scheduler": {"class": scheduler_class, **settings},
        "loras": [_lora_identity(lora) for lora in model.loras],
    }
    if spec.control is not None:
        identity["controlnet"] = _ref_identity(spec.control.model, TINY_CONTROLNET)
        identity["control_scale"] = spec.control.scale
    return identity


def task_key(model_id: dict, task) -> str:
    """The store key of a `farm.render.WindowTask` rendered by the model `model_id`, with
    its per-window inputs (SVD conditioning frame, control frames) by content."""
    w = task.window
    inputs = {name: frames_digest(getattr(task, name)) for name in ("image", "control")
              if getattr(task, name) is not None}
    return window_key({
        "inputs": inputs,
        "model": model_id,
        "frames": [w.start, w.end],
        "conditioning": [list(c) for c in task.conditioning],
        "negative_prompt": task.negative_prompt,
        "seed": task.seed,
        "size": [task.width, task.height],
        "steps": task.steps,
        "guidance": task.guidance,
    })
