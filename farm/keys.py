"""Window keys: the hash of everything that determines a window's frames.

    model      pipeline, base model (`tiny` by build name, a hub id by name, a local folder
               by the sha256 of its files: farm/identity.py), the dtype it runs in on this
               cluster (fp16 on CUDA, fp32 on CPU for `auto`), and what the pipeline's
               descriptor adds (`key_fields`): AnimateDiff's motion adapter, scheduler and
               LoRAs; the ControlNet and its scale; SVD's knobs and decode chunk
    window     its frame range, the prompt(s) of each of its frames (farm.prompts), the
               negative prompt, seed, size, steps, guidance, and its inputs by content:
               the SVD conditioning frame (the spec's image, or the last frame of the
               window before), the window's control frames, its identity anchor
               (the reference picture and its scale; absent when there is none), and
               its shot's own LoRA weights (absent when they are the job's)

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
    if task.reference is not None:
        inputs["reference"] = {"image": frames_digest(task.reference), "scale": task.reference_scale}
    if task.lora_weights is not None:
        inputs["lora_weights"] = list(task.lora_weights)
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


def local_job_key(key: str, last_key: str, region) -> str:
    """The key a local re-render (farm/rerender.py) of the co-denoised job `key` from the
    render stored under `last_key` is stored under: not `key`, whose latents are those of
    a whole render (what `--full` and a fresh render give), but that and where it came from."""
    return window_key({"local": key, "from": last_key, "windows": [region.windows.start, region.windows.stop],
                       "free": list(region.free)})


#: Blocks of a spec that act on the frames after the pipeline, or on the job, or are read
#: per window (the identity anchor): not part of what a loaded pipeline holds. Every other
#: block (the model, a pipeline's own) is.
_JOB_BLOCKS = ("window", "encode", "interpolate", "reference")


def pipeline_key(spec: JobSpec, device_kind: str) -> str:
    """Which loaded pipeline renders a job's windows, for the shared farm's warm actors
    (scheduler/manager.py): the models' identity, and every setting a loaded pipeline holds
    beyond it (the model block, the pipeline's own block, the fault injection). Two jobs
    with the same key can render on the same loaded pipeline."""
    blocks = {name: value.model_dump(mode="json") for name, value in spec
              if isinstance(value, BaseModel) and name not in _JOB_BLOCKS}
    return window_key({"pipeline_of": model_identity(spec, device_kind), "blocks": blocks})[:16]


def stored_windows(spec: JobSpec, plan, store) -> dict:
    """What the window store `store` holds of a planned job (`farm.plan.Plan`), by key
    alone (no frame is read), for `farm plan`: {"windows": {index: the device class it is
    stored under}}, and for a co-denoised job "latent_step" (the last whole checkpoint's
    step; 0: none), "latent_device" and "rendered_again" (`why_rendered_again`); a film of
    shots gives those per run under "runs" (each run is stored on its own), and the least
    step of them. The device class (cpu, cuda) is part of every key, and a plan does not
    know where its job will run: both are looked up. A chained pipeline's later windows
    depend on the frames before them: only the first of each run is looked up."""
    from farm.shots import compile_film, run_label

    pipeline, film = descriptor(spec.model.pipeline), compile_film(spec)
    kinds = ("cpu", "cuda")
    if spec.window.reconcile == "latent":
        runs = []
        for run in film.runs:
            tasks = [pipeline.window_inputs(run.spec, run.task(w), None) for w in run.plan.windows]
            keys = {kind: [task_key(model_identity(spec, kind), t) for t in tasks] for kind in kinds}
            latent_frames = run.plan.latent_windows[-1].end
            steps = {kind: store.checkpoints(latent_job_key(keys[kind], spec.window.blend)).latest(latent_frames)
                     for kind in kinds}
            kind = max(kinds, key=steps.get)
            last = None if steps[kind] else store.last_latent_job(run_label(spec.output, run))
            near = max(kinds, key=lambda k: sum(a == b for a, b in zip(last["window_keys"], keys[k]))) if last else kind
            again = why_rendered_again(last, keys[near], spec.window.blend, run.plan.windows)
            region = _local(spec, run, store, keys)[0] if not steps[kind] else None
            runs.append({"shots": list(run.shots), "latent_step": steps[kind],
                         "latent_device": kind if steps[kind] else None,
                         "rendered_again": region.describe() if region else again,
                         "local": region.to_dict() if region else None})
        if not film.has_shots:
            return {"windows": {}} | runs[0]
        return {"windows": {}, "latent_step": min(r["latent_step"] for r in runs),
                "latent_device": next((r["latent_device"] for r in runs if r["latent_device"]), None),
                "rendered_again": None, "runs": runs}
    indices = [i for i in range(len(film.windows)) if not pipeline.chained or film.local(i).start == 0]
    tasks = [pipeline.window_inputs(film.spec_of(i), film.task(i), None) for i in indices]
    found: dict[int, str] = {}
    for kind in kinds:
        model_id = model_identity(spec, kind)
        for task in tasks:
            if task.window.index not in found and store.has(task_key(model_id, task)):
                found[task.window.index] = kind
    return {"windows": found}


def _local(spec: JobSpec, run, store, keys: dict[str, list[str]]):
    """`local_rerender` for `farm plan`, which has the windows' keys for each device class:
    those nearest the last render's."""
    kept = store.kept_steps_job(_label(spec, run))
    near = max(keys, key=lambda k: sum(a == b for a, b in zip(kept["window_keys"], keys[k]))) if kept else "cpu"
    return local_rerender(spec, run, store, keys[near])


def local_rerender(spec: JobSpec, run, store, window_keys: list[str]):
    """Where an edit lets `run` (of the job `spec`) render again locally (farm/rerender.py):
    (the region of windows near the changed ones, the last render's entry, which kept every
    step: `window.keep_steps`); (None, None) when the run renders whole."""
    from farm.rerender import local_region

    kept = store.kept_steps_job(_label(spec, run)) if spec.window.keep_steps else None
    if kept is None or kept["blend"] != spec.window.blend or kept["steps"] != spec.steps:
        return None, None
    region = local_region(kept["window_keys"], window_keys, run.plan.latent_windows, spec.window.rerender_radius)
    return (region, kept) if region is not None else (None, None)


def _label(spec: JobSpec, run) -> str:
    from farm.shots import run_label

    return run_label(spec.output, run)


def why_rendered_again(last: dict | None, window_keys: list[str], blend: str, windows) -> str | None:
    """Why a co-denoised job renders every window although its output was rendered before
    (`last`, from the store): which windows an edit changed. None if it is new."""
    if last is None:
        return None
    if len(last["window_keys"]) != len(window_keys):
        what = f"the job has {len(window_keys)} windows now, {len(last['window_keys'])} before"
    else:
        changed = [w for w, a, b in zip(windows, last["window_keys"], window_keys) if a != b]
        if changed:
            what = "changed since the last render: " + ", ".join(
                f"window {w.index} (frames {w.start}–{w.end - 1})" for w in changed[:5]) + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        elif last["blend"] != blend:
            what = f"the fuse weights changed (window.blend {last['blend']} → {blend})"
        else:
            return None  # the same job: its checkpoints were removed (farm store gc)
    return (f"co-denoised: every window is rendered again; {what}. Every window of a co-denoised "
            "job depends on every other, so no stored step applies (window.reconcile: crossfade "
            "renders again only the windows an edit reaches)")
