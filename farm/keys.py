"""Window keys: the hash of everything that determines a window's frames.

    model      pipeline; base and motion adapter (`tiny` by build name, a hub id by name,
               a local folder by the sha256 of its files); scheduler and its settings;
               the dtype it runs in on this cluster (fp16 on CUDA, fp32 on CPU for `auto`)
    window     its frame range, the prompt(s) of each of its frames (farm.prompts), the
               negative prompt, seed, size, steps, guidance

Not in the key: the blend, encoding and interpolation (they act after the store), the
fault-injection settings (they never change a successful window's frames), and library
versions (upgrading torch or diffusers keeps the store; `farm store gc` clears it).
"""

from __future__ import annotations

from farm.models.schedulers import SCHEDULERS
from farm.models.tiny import TINY_BASE, TINY_MOTION_ADAPTER
from farm.spec import ModelSpec, is_local_ref
from farm.store import folder_digest, window_key


def _ref_identity(ref: str, tiny_name: str) -> str:
    if ref == "tiny":
        return f"tiny:{tiny_name}"
    if is_local_ref(ref):
        return f"folder-sha256:{folder_digest(ref)}"
    return f"hub:{ref}"


def model_identity(model: ModelSpec, device_kind: str) -> dict:
    """The part of every window key that the model contributes. `device_kind` is `cuda` or
    `cpu`: the device class the pipeline actors run on."""
    if model.faults is not None and model.faults.simulate_seconds is not None:
        return {"pipeline": "simulation"}
    scheduler_class, settings = SCHEDULERS["ddim"]
    return {
        "pipeline": model.pipeline,
        "base": _ref_identity(model.base, TINY_BASE),
        "motion_adapter": _ref_identity(model.motion_adapter, TINY_MOTION_ADAPTER),
        "scheduler": {"class": scheduler_class, **settings},
        "dtype": model.dtype_on(device_kind),
    }


def task_key(model_id: dict, task) -> str:
    """The store key of a `farm.render.WindowTask` rendered by the model `model_id`."""
    w = task.window
    return window_key({
        "model": model_id,
        "frames": [w.start, w.end],
        "conditioning": [list(c) for c in task.conditioning],
        "negative_prompt": task.negative_prompt,
        "seed": task.seed,
        "size": [task.width, task.height],
        "steps": task.steps,
        "guidance": task.guidance,
    })
