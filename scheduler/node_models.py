"""Ray tasks that act on every node's model cache (farm/models/nodecache.py): list what
each node holds (`farm models ls`), and fetch a job's staged models onto one node ahead of
its actors (the manager's `--prefetch`)."""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.pipeline import node_cache
from farm.models.remote import read_manifest
from farm.models.sources import using_env


@ray.remote(num_cpus=0)
def _list_here() -> dict:
    cache = node_cache()
    return {"node": ray.get_runtime_context().get_node_id(), "root": str(cache.root),
            "limit_bytes": cache.limit_bytes, "models": cache.entries()}


@ray.remote(num_cpus=0)
def _prefetch_here(uris: list[str], env: dict[str, str]) -> dict:
    cache = node_cache()
    done = {}
    with using_env(env):
        for uri in uris:
            lease = cache.acquire(read_manifest(uri))
            done[uri] = lease.report()
            lease.release()  # held only while fetching: the actors take their own
    return {"node": ray.get_runtime_context().get_node_id(), "models": done}


def _on(node_id: str):
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def list_node_caches(timeout: float = 60) -> list[dict]:
    """What every alive node's cache holds, one entry per node (Ray must be initialised)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [_list_here.options(scheduling_strategy=_on(n["NodeID"])).remote() for n in nodes]
    out = ray.get(refs, timeout=timeout)
    hosts = {n["NodeID"]: n.get("NodeManagerAddress") for n in nodes}
    return [r | {"address": hosts.get(r["node"])} for r in out]


def prefetch(node_id: str, uris: list[str], env: dict[str, str] | None = None):
    """Start fetching `uris` into `node_id`'s cache, with the credential variables `env`
    (farm/models/sources.py); returns the task's ObjectRef."""
    return _prefetch_here.options(scheduling_strategy=_on(node_id)).remote(sorted(set(uris)), env or {})

