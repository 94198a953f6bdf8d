"""Connecting to Ray and placing the pipeline actors."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError

from actors.pipeline import pipeline_actor_class
from farm.errors import ClusterError
from farm.spec import ModelSpec

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


def connect(address: str | None, workers: int | None = None) -> Session:
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
        cpus = max(os.cpu_count() or 1, workers or 1)
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        started = True
    res = ray.cluster_resources()
    return Session(started, int(res.get("GPU", 0)), int(res.get("CPU", 0)))


def pool_shape(session: Session, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, torch threads per CPU actor). Default pool: one actor per GPU, or on a
    CPU-only cluster half the cores capped at 4, each with an equal share of threads."""
    if workers is None:
        workers = session.gpus if session.gpus else max(1, min(4, session.cpus // 2))
    if threads is None:
        threads = 1 if session.gpus else max(1, session.cpus // workers)
    return workers, threads


def start_pipeline_actors(model: ModelSpec, session: Session, workers: int, threads: int) -> tuple[list, list[dict]]:
    """Start `workers` PipelineActors and wait until each has loaded its pipeline."""
    cls = pipeline_actor_class()
    if session.gpus:
        opts = {"num_gpus": 1, "num_cpus": 1}
    else:
        opts = {"num_cpus": min(threads, max(1, session.cpus))}
    actors = [cls.options(**opts).remote(model, threads) for _ in range(workers)]
    try:
        infos = ray.get([a.info.remote() for a in actors], timeout=ACTOR_START_TIMEOUT_S)
    except GetTimeoutError as err:
        stop_actors(actors)
        raise ClusterError(
            f"{workers} pipeline actors asking for {opts} each could not all start within "
            f"{ACTOR_START_TIMEOUT_S:.0f}s; the cluster has {ray.cluster_resources()}"
        ) from err
    except ray.exceptions.RayActorError as err:
        stop_actors(actors)
        raise ClusterError(f"a pipeline actor died while loading its model: {err}") from err
    return actors, infos


def stop_actors(actors: list) -> None:
    for a in actors:
        ray.kill(a, no_restart=True)
