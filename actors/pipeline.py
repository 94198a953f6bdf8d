"""PipelineActor: a Ray actor that holds one loaded diffusers pipeline and renders windows.

The pipeline is loaded once, in `__init__`, and (with `model.warmup`, the default) renders
one throwaway 1-step window of the job's shape before the actor reports ready, so the
first real window does not pay the first-call costs. If Ray restarts the actor
(`max_restarts`), `__init__` runs again and the pipeline is reloaded; the driver resubmits
the window.

A farm actor (the shared farm's pool, scheduler/manager.py) starts with no pipeline and
outlives jobs: `use(spec, key)` switches it to a job's pipeline, warm when it holds it,
keeping at most `max_models` loaded (least recently used out, as Ray Serve's model
multiplexing does). Every window it renders names its pipeline, so a restarted actor
(which holds none) loads it again before rendering.
"""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray

from farm.models.sources import localize, using_env
from farm.tasks import FaultContext, WindowResult, WindowTask
from farm.util import first_line
from farm.spec import JobSpec


class PipelineActor:
    """Wrapped with `ray.remote` by `pipeline_actor_class()`; plain here so it stays readable."""

    def __init__(self, spec: JobSpec | None = None, threads: int | None = None, max_models: int = 1,
                 env: dict[str, str] | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        ctx = ray.get_runtime_context()
        self.node = ctx.get_node_id()
        self.actor = ctx.get_actor_id() or f"local-{os.getpid()}"
        self.host = socket.gethostname()
        self.restarted = ctx.was_current_actor_reconstructed
        self.max_models = max_models
        self.pipelines: OrderedDict[str, tuple] = OrderedDict()  # a shared actor's: key → (renderer, spec)
        self.key = None  # the pipeline in use
        self.renderer = None
        self.shard = None
        self.faults_armed = True
        self.credentials: list[str] = []
        if spec is not None:  # a job's private actor: its one pipeline, loaded now
            self._load(spec, env)

    def _load(self, spec: JobSpec, env: dict[str, str] | None = None) -> None:
        """Load the job's pipeline; `env` holds the driver's credential variables (hub
        token, object storage keys), set only while its models are fetched and loaded."""
        from farm.renderers import make_renderer  # torch and diffusers load here, on the actor

        self.credentials = sorted(env or {})  # their names, for the report; never the values
        context = FaultContext(restarted=self.restarted,
                               node_resources=_node_resources(self.node) if spec.model.faults else {})
        with using_env(env):
            spec, fetched = localize(relocate_inputs(spec), node_cache)  # staged models: this node's copy
            self.renderer = make_renderer(spec, context=context)
        self.renderer.fetched = fetched  # kept with the renderer: a farm actor holds several
        self._set_faults(spec)
        self.warmup_seconds, self.warmup_skipped = None, None
        if spec.model.warmup:
            self._warm_up(spec)

    def use(self, spec: JobSpec, key: str, env: dict[str, str] | None = None) -> dict:
        """A farm actor (scheduler/manager.py) switches to the pipeline `key` renders with:
        warm if it holds it, else loaded now, first evicting the least recently used one
        when it already holds `max_models`. Says what it cost."""
        if key == self.key:
            return self._used(True, 0.0, [])
        self.shard = None  # another job's co-denoising shard holds the pipeline in use: let it go
        if key in self.pipelines:
            self.pipelines.move_to_end(key)
            self.renderer, spec = self.pipelines[key]
            self.key = key
            self._set_faults(spec)
            return self._used(True, 0.0, [])
        evicted = []
        while len(self.pipelines) >= self.max_models:
            gone, (renderer, _) = self.pipelines.popitem(last=False)
            renderer.fetched.release()  # its node-cache copies may be evicted now
            evicted.append(gone)
        self.renderer, self.key = None, None
        if evicted:
            _free_memory()
        t0 = time.perf_counter()
        self._load(spec, env)
        self.pipelines[key] = (self.renderer, spec)
        self.key = key
        return self._used(False, time.perf_counter() - t0 - self.renderer.fetched.seconds, evicted)

    def _set_faults(self, spec: JobSpec) -> None:
        faults = spec.model.faults
        self.crash_on_step, self.step_delay = (faults.crash_on_step, faults.delay) if faults else (None, 0.0)

    def _used(self, warm: bool, seconds: float, evicted: list[str]) -> dict:
        return self.info() | {"warm": warm, "load_seconds": round(seconds, 3), "evicted": evicted,
                              "models": list(self.pipelines)}

    def _warm_up(self, spec: JobSpec) -> None:
        """Render the warm-up window. Running out of GPU memory there is not fatal: the
        first real window's fallback ladder (smaller decode chunk, offload) handles it."""
        import torch

        try:
            from farm.renderers import warmup_task

            self.warmup_seconds = round(self.renderer.warm_up(warmup_task(spec)), 3)
        except torch.OutOfMemoryError as err:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.warmup_skipped = first_line(err)

    def info(self) -> dict:
        if self.renderer is None:  # a farm actor that holds no pipeline yet
            return {"actor": self.actor, "node": self.node, "host": self.host, "pid": os.getpid(),
                    "device": None, "threads": self.threads, "models": list(self.pipelines)}
        return {
            "actor": self.actor,
            "node": self.node,
            "host": self.host,
            "pid": os.getpid(),
            "device": self.renderer.device,
            "threads": self.threads,
            "load_seconds": round(getattr(self.renderer, "load_seconds", 0.0), 3),
            **self.renderer.fetched.report(),  # fetch_seconds, fetch_bytes, from: apart from the load
            "credentials": self.credentials,
            "warmup_seconds": self.warmup_seconds,  # None: off, or skipped (below)
            "warmup_skipped": self.warmup_skipped,
            "memory": self.renderer.memory,
        }

    def render(self, task: WindowTask, spec: JobSpec | None = None, key: str | None = None) -> WindowResult:
        """Render one window. A farm actor is told the job's pipeline with every window
        (`spec`, `key`): after a restart, or with another job's pipeline in use, it
        switches first."""
        from farm.renderers import last_cache  # (torch: imported on the actors only)

        if key is not None and key != self.key:
            self.use(spec, key)
        started = time.time()
        t0 = time.perf_counter()
        frames, fallbacks = self.renderer.render(task)
        w = task.window
        return WindowResult(
            index=w.index,
            start=w.start,
            end=w.end,
            frames=frames,
            seconds=time.perf_counter() - t0,
            started=started,
            node=self.node,
            actor=self.actor,
            device=self.renderer.device,
            fallbacks=fallbacks,
            cache=last_cache(self.renderer),
        )

    def render_apart(self, task: WindowTask, spec: JobSpec | None = None,
                     key: str | None = None) -> tuple[WindowResult, np.ndarray]:
        """`render` with the frames as a second return (`num_returns=2`): the driver takes
        the small result and passes the frames' ref on to a segment task (the segment path,
        scheduler/segments.py), so the frames never reach it."""
        result = self.render(task, spec, key)
        return replace(result, frames=None), result.frames

    # Co-denoising (window.reconcile: latent): one shard of the video, stepped in lockstep
    # with the other actors' shards; farm/latent.py does the work, scheduler/codenoise.py
    # makes the calls.
    def latent_begin(self, job, shard, tasks, start_step: int, latents=None, faults: bool = True,
                     spec: JobSpec | None = None, key: str | None = None) -> dict:
        """Hold `shard`'s latents (from `latents`, a checkpoint, or the noise at step 0).
        `faults`: whether injected faults (crash_on_step) may fire in this attempt. A farm
        actor is told the job's pipeline (`spec`, `key`): it switches first if needed (after
        a restart it holds none)."""
        from farm.latent import ShardRunner
        from farm.renderers import latent_model

        self.shard = None  # a shard of an earlier attempt goes first (its memory, too)
        if key is not None and key != self.key:
            self.use(spec, key)
        self.faults_armed = faults
        self.shard = ShardRunner(latent_model(self.renderer), job, shard, tasks, start_step, latents)
        return self.info() | {"shard": shard.index, "windows": list(shard.windows)}

    def latent_step(self, apply: bool, *received):
        """Finish the step the peers' predictions `received` complete (`apply`), then
        evaluate the next one. Returns the predictions for each peer, in `peers` order, and
        last this shard's latents when a checkpoint is due (else None)."""
        runner = self.shard
        if apply:
            runner.apply(received)
        due = apply and runner.step in runner.job.checkpoints
        checkpoint = runner.owned_latents() if due else None
        if runner.step < runner.job.steps:
            self._maybe_crash(runner)
            sent = runner.evaluate()
        else:
            sent = [None] * len(runner.shard.peers)
        return (*sent, checkpoint) if sent else checkpoint

    def _maybe_crash(self, runner) -> None:
        """Fault injection: `model.faults.delay` sleeps before every step; `crash_on_step`:
        the actor of the last shard exits hard on reaching that step, in its first life and
        the job's first attempt."""
        time.sleep(self.step_delay)
        last = runner.shard.owns[1] == runner.job.windows[-1].end
        if self.crash_on_step == runner.step and last and not self.restarted and self.faults_armed:
            os._exit(17)

    def latent_decode(self, start: int, end: int, carry=None, hand_over: bool = False):
        """The frames of latent frames [start, end) of this shard, final, as uint8, and the
        decoder's state for the next shard when `hand_over` (see ShardRunner.decode)."""
        return self.shard.decode(start, end, carry, hand_over)

    def latent_stats(self) -> dict:
        return self.shard.stats.to_dict() | {"actor": self.actor, "node": self.node}


def node_cache():
    """This node's model cache (farm/models/nodecache.py): FARM_NODE_CACHE, else next to
    Ray's temp dir, which is on the node's local disk."""
    from farm.models.nodecache import NodeCache, default_limit, default_root

    try:
        temp_dir = ray._private.worker.global_worker.node.get_temp_dir_path()
    except AttributeError:  # not in a Ray worker
        temp_dir = None
    return NodeCache(default_root(temp_dir), default_limit())


def relocate_inputs(spec: JobSpec, cwd: Path | None = None) -> JobSpec:
    """Find the job's local model files on this node. `farm submit` ships them in the Ray
    job's working_dir (`inputs/<n>-<name>`), which every worker node gets as its cwd, but
    the spec names them by their path on the head; a path missing here is looked up there."""
    cwd = cwd or Path.cwd()

    def here(path: str) -> str:
        if Path(path).exists():
            return path
        shipped = cwd / "inputs" / Path(path).name
        return str(shipped) if shipped.exists() else path

    model = spec.model
    update = {}
    for field in ("base", "motion_adapter", "vae", "config"):
        ref = getattr(model, field)
        if ref is not None and ref.startswith("/"):
            update[field] = here(ref)
    loras = [lora.model_copy(update={"path": here(lora.path)}) if lora.path else lora for lora in model.loras]
    model = model.model_copy(update={**update, "loras": loras})
    control = spec.control
    if control is not None and control.model.startswith("/"):
        control = control.model_copy(update={"model": here(control.model)})
    return spec.model_copy(update={"model": model, "control": control})


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _node_resources(node_id: str) -> dict:
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return dict(node.get("Resources", {}))
    return {}


def pipeline_actor_class():
    return ray.remote(PipelineActor)
