"""Connecting to Ray and placing the pipeline actors."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.autoscaler.sdk import request_resources
from ray.exceptions import GetTimeoutError

from actors.pipeline import pipeline_actor_class
from actors.rife import rife_actor_class
from farm.errors import ClusterError
from farm.models.sources import credentials_env
from farm.spec import JobSpec

#: Longest the driver waits for every actor to load its pipeline.
ACTOR_START_TIMEOUT_S = float(os.environ.get("FARM_ACTOR_START_TIMEOUT_S", "900"))


@dataclass
class Session:
    started_here: bool
    gpus: int
    cpus: int

    def close(self) -> None:
        if self.started_here and ray.is_initialized():
            ray.shutdown()


def connect(address: str | None, cpus_wanted: int = 1) -> Session:
    """Join the cluster at `address`, or start a local one (dashboard off, loopback only)."""
    if ray.is_initialized():
        started = False
    elif address:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as err:  # noqa: BLE001 - Ray raises many types for an unreachable address
            raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {err}") from err
        started = False
    else:
        cpus = max(os.cpu_count() or 1, cpus_wanted)
        token = Path.home() / ".ray" / "auth_token"
        had_token = token.exists()
        ray.init(
            # a private cluster, even when a `ray start` head runs on this machine (which a
            # bare ray.init() would join); RAY_ADDRESS, when set, is still honoured
            address=None if os.environ.get("RAY_ADDRESS") else "local",
            num_cpus=cpus,
            include_dashboard=False,  # no dashboard, no jobs API: nothing listens for HTTP
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        if token.exists() and not had_token:
            token.chmod(0o600)  # Ray writes the token it just created world-readable
        started = True
    res = ray.cluster_resources()
    return Session(started, int(res.get("GPU", 0)), int(res.get("CPU", 0)))


def wants_gpus(session: Session, gpus_per_worker: float | None) -> bool:
    """Whether the pipeline actors are GPU actors: by default when the cluster has GPUs."""
    return bool(session.gpus) if gpus_per_worker is None else gpus_per_worker > 0


def pool_shape(session: Session, workers: int | None, threads: int | None,
               reserved_cpus: int = 0, gpus_per_worker: float | None = None) -> tuple[int, int]:
    """(workers, torch threads per CPU actor). Default pool: one actor per GPU, or on a
    CPU-only cluster half the cores left after `reserved_cpus` (the RIFE pool), at most 4,
    each with an equal share of threads. With `gpus_per_worker`, the actors are GPU actors
    even if the cluster has no GPU yet (an autoscaler adds them)."""
    gpu = wants_gpus(session, gpus_per_worker)
    cpus = max(1, session.cpus - (0 if gpu else reserved_cpus))
    if workers is None:
        workers = max(1, int(session.gpus // (gpus_per_worker or 1))) if gpu else max(1, min(4, cpus // 2))
    if threads is None:
        threads = 1 if gpu else max(1, cpus // workers)
    return workers, threads


#: On a GPU cluster with interpolation on, a pipeline actor takes this much of its GPU and
#: leaves the rest for a RIFE actor, so one GPU can hold one of each.
RIFE_GPU_SHARE = 0.25


#: Times Ray restarts a lost pipeline actor (re-running `__init__`, so reloading the
#: pipeline) before the dispatcher gives up on it.
ACTOR_MAX_RESTARTS = int(os.environ.get("FARM_ACTOR_MAX_RESTARTS", "3"))


def start_pipeline_actors(spec: JobSpec, session: Session, workers: int, threads: int,
                          share_gpu: bool = False, resources: dict | None = None,
                          gpus_per_worker: float | None = None, on_wait=None,
                          partial_after: float | None = None) -> tuple[list, list[dict]]:
    """Start `workers` PipelineActors and wait until each has loaded its pipeline.
    `resources`: custom Ray resources each actor requires (e.g. one per GPU node type).
    GPU actors are asked of the autoscaler up front (`request_resources`), so a cluster
    with no GPU node yet grows to fit; `on_wait(ready, total)` reports progress meanwhile.
    With `partial_after` (seconds), the job goes on with the actors ready that long after
    the first one was; the others (waiting for resources the cluster does not have) are
    stopped."""
    gpus = (1.0 if session.gpus else 0.0) if gpus_per_worker is None else gpus_per_worker
    if gpus:
        opts = {"num_gpus": gpus * (1 - RIFE_GPU_SHARE) if share_gpu else gpus, "num_cpus": 1}
        request_resources(bundles=[{"GPU": opts["num_gpus"], "CPU": 1}] * workers)
    else:
        opts = {"num_cpus": min(threads, max(1, session.cpus))}
    if resources:
        opts["resources"] = dict(resources)
    # Ray restarts a lost actor; the dispatcher, not Ray, resubmits its windows.
    opts.update(max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=0)
    env = credentials_env()  # with the call, never in a runtime_env (farm/models/sources.py)
    actors = [pipeline_actor_class().options(**opts).remote(spec, threads, env=env) for _ in range(workers)]
    return _wait_ready(actors, opts, "pipeline", on_wait, partial_after)


def start_rife_actors(ip, weights: bytes | None, session: Session,
                      fail_chunks: tuple[int, ...] = ()) -> tuple[list, list[dict]]:
    """Start the RIFE actors: `ip.workers` actors, each holding a loaded interpolation model.
    `fail_chunks` injects faults (tests): those chunks raise on every attempt."""
    opts = {"num_gpus": RIFE_GPU_SHARE, "num_cpus": 1} if session.gpus else {"num_cpus": 1}
    weights_ref = ray.put(weights) if weights is not None else None  # shipped once, to any node
    actors = [
        rife_actor_class().options(**opts).remote(ip.backend, weights_ref, ip.model_dir, ip.gpuid, 1, fail_chunks)
        for _ in range(ip.workers)
    ]
    return _wait_ready(actors, opts, "RIFE")


def release_request() -> None:
    """Withdraw this driver's `request_resources`, so the autoscaler may scale down."""
    request_resources(bundles=[])


def _wait_ready(actors: list, opts: dict, what: str, on_wait=None,
                partial_after: float | None = None) -> tuple[list, list[dict]]:
    """(the actors that are ready, their infos)."""
    refs = [a.info.remote() for a in actors]
    t0 = time.monotonic()
    first_ready = None
    try:
        while True:  # report progress while actors wait for nodes or load their models
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
            if on_wait is not None:
                on_wait(len(ready), len(refs))
            if len(ready) == len(refs):
                break
            waited = time.monotonic() - t0
            first_ready = first_ready or (time.monotonic() if ready else None)
            # actors that were placed load their models side by side: once one is ready, the
            # others that ever will be are ready soon after
            if partial_after is not None and first_ready and time.monotonic() - first_ready > partial_after:
                placed = [a for a, r in zip(actors, refs) if r in ready]
                stop_actors([a for a, r in zip(actors, refs) if r not in ready])
                actors, refs = placed, [r for r in refs if r in ready]
                break
            if waited > ACTOR_START_TIMEOUT_S:
                raise GetTimeoutError(f"{len(refs) - len(ready)} actors not ready")
        infos = ray.get(refs)
    except GetTimeoutError as err:
        stop_actors(actors)
        raise ClusterError(
            f"{len(actors)} {what} actors asking for {opts} each could not all start within "
            f"{ACTOR_START_TIMEOUT_S:.0f}s; the cluster has {ray.cluster_resources()}"
        ) from err
    except ray.exceptions.RayActorError as err:
        stop_actors(actors)
        said = _farm_cause(err)  # a model that cannot be fetched or loaded says why, in one line
        if said is not None:
            raise ClusterError(f"a {what} actor could not load its model: {said}") from err
        raise ClusterError(f"a {what} actor died while loading its model: {err}") from err
    except ray.exceptions.RayTaskError as err:
        stop_actors(actors)
        cause = err.cause if getattr(err, "cause", None) is not None else err
        raise ClusterError(f"a {what} actor failed to start: {cause}") from err
    except BaseException:  # Ctrl-C, or a progress callback that raised: the actors go too
        stop_actors(actors)
        raise
    return actors, infos


def _farm_cause(err: BaseException) -> str | None:
    """What a FarmError raised in an actor's constructor said (e.g. a model that arrived
    corrupt), from the traceback Ray's error carries as text; None when it was not one."""
    said = re.findall(r"^farm\.[\w.]+Error: (.+)$", str(err), flags=re.MULTILINE)
    return said[-1] if said else None


def stop_actors(actors: list) -> None:
    for a in actors:
        ray.kill(a, no_restart=True)
