"""Window keys: the hash of everything that determines a window's frames.

    model      pipeline, base model (`tiny` by build name, a hub id by name, a local folder
               by the sha256 of its files: farm/identity.py), the dtype it runs in on this
               cluster (fp16 on CUDA, fp32 on CPU for `auto`), and what the pipeline's
               descriptor adds (`key_fields`): AnimateDiff's motion adapter, scheduler and
               LoRAs; the ControlNet and its scale; SVD's knobs and decode chunk
    window     its frame range, the prompt(s) of each of its frames (farm.prompts), the
               negative prompt, seed, size, steps, guidance, and its inputs by content:
               the SVD conditioning frame (the spec's image, or the last frame of the
               window before) and the window's control frames

Not in the key: the blend, encoding and interpolation (they act after the store), the
fault-injection settings (they never change a successful window's frames), and library
versions (upgrading torch or diffusers keeps the store; `farm store gc` clears it).
"""

from __future__ import annotations

from pydantic import BaseModel

from farm.identity import ref_identity
from farm.pipelines import descriptor
from farm.spec import JobSpec
from farm.store import frames_digest, window_key


def model_identity(spec: JobSpec, device_kind: str) -> dict:
    """The part of every window key that the job's models contribute. `device_kind` is
    `cuda` or `cpu`: the device class the pipeline actors run on."""
    model = spec.model
    if model.faults is not None and model.faults.simulate_seconds is not None:
        return {"pipeline": "simulation"}
    pipeline = descriptor(model.pipeline)
    return {
        "pipeline": model.pipeline,
        "base": ref_identity(model.base, pipeline.tiny_base),
        "dtype": model.dtype_on(device_kind),
    } | pipeline.key_fields(spec)


def task_key(model_id: dict, task) -> str:
    """The store key of a `farm.tasks.WindowTask` rendered by the model `model_id`, with
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


def latent_job_key(window_keys: list[str], scheme: str) -> str:
    """The key of a co-denoised job as a whole: every frame may depend on every window (a
    change anywhere reaches everywhere through the fused overlaps), so it is made of all
    the windows' keys, in order, and the fuse weights' scheme."""
    return window_key({"reconcile": "latent", "blend": scheme, "windows": list(window_keys)})


#: Blocks of a spec that act on the frames after the pipeline (or on the job): not part of
#: what a loaded pipeline holds. Every other block (the model, a pipeline's own) is.
_JOB_BLOCKS = ("window", "encode", "interpolate")


def pipeline_key(spec: JobSpec, device_kind: str) -> str:
    """Which loaded pipeline renders a job's windows, for the shared farm's warm actors
    (scheduler/manager.py): the models' identity, and every setting a loaded pipeline holds
    beyond it (the model block, the pipeline's own block, the fault injection). Two jobs
    with the same key can render on the same loaded pipeline."""
    blocks = {name: value.model_dump(mode="json") for name, value in spec
              if isinstance(value, BaseModel) and name not in _JOB_BLOCKS}
    return window_key({"pipeline_of": model_identity(spec, device_kind), "blocks": blocks})[:16]
