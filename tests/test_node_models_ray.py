"""Staged models on a real multi-node Ray cluster (`ray.cluster_utils.Cluster`): three
nodes with a node cache each (FARM_NODE_CACHE per raylet) and two pipeline actors each,
models staged to a real S3 API server (moto, loopback). Each node fetches each file once
(the server's own access log counts the GETs), its two actors read the same copy, and the
frames equal a render from the local folders."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from farm.errors import FarmError
from farm.models.remote import stage
from farm.models.sources import using_env
from farm.models.tiny import TINY_BASE, TINY_MOTION_ADAPTER, tiny_model_path
from farm.spec import parse_spec
from farm.video import read_frames
from click.testing import CliRunner

from scheduler.cli import main
from scheduler.driver import render
from tests.conftest import base_spec
from tests.ray_heads import start_s3_server

SLOT = {"farm_pipe": 1}
NODES = 3


@pytest.fixture(scope="module")
def s3():
    server = start_s3_server()
    try:
        with using_env(server.env):  # set before the cluster starts: its workers inherit it
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("node-caches")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for i in range(NODES):  # two actor slots and a cache of its own on each node
        c.add_node(num_cpus=2, resources={"farm_pipe": 2}, env_vars={"FARM_NODE_CACHE": str(root / f"node{i}")})
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level=logging.ERROR, log_to_driver=False)
    c.cache_root = root
    yield c
    ray.shutdown()
    c.shutdown()


def _spec(tmp_path, name, base, adapter):
    data = base_spec(tmp_path, frames=76, output=str(tmp_path / name))  # 6 windows
    data["model"] = {**data["model"], "base": base, "motion_adapter": adapter}
    return parse_spec(data)


# slow (about 50 s: actors on every node of a multi-node cluster): `-m slow`, run by CI after the default run
@pytest.mark.slow
def test_each_node_fetches_once_and_its_actors_share_the_copy(cluster, s3, tmp_path, monkeypatch):
    staged = {}
    for field, name in (("model.base", TINY_BASE), ("model.motion_adapter", TINY_MOTION_ADAPTER)):
        uri = f"s3://{s3.bucket}/models/{name}"
        staged[field] = (uri, stage(str(tiny_model_path(name)), uri))
    spec = _spec(tmp_path, "staged.mp4", staged["model.base"][0], staged["model.motion_adapter"][0])
    secret = "hf_farm_test_not_for_logs_42"
    monkeypatch.setenv("HF_TOKEN", secret)  # the driver's only: the cluster's workers started without it
    report = render(spec, workers=2 * NODES, threads=1, store=False, actor_resources=SLOT).to_dict()
    assert report["state"] == "DONE"

    actors = report["actors"]
    by_node: dict[str, list[dict]] = {}
    for a in actors:
        by_node.setdefault(a["node"], []).append(a)
    assert sorted(len(v) for v in by_node.values()) == [2] * NODES  # two actors on each node
    for node_actors in by_node.values():
        for field in staged:
            got = sorted(a["sources"][field] for a in node_actors)
            assert got == ["node cache", "object storage"], (field, got)  # one fetch, one reuse
            assert len({a["copies"][field] for a in node_actors}) == 1  # both read the same copy
        assert sum(a["fetch_bytes"] for a in node_actors) == sum(m.total_bytes for _, m in staged.values())
        assert all(a["load_seconds"] > 0 and a["fetch_seconds"] >= 0 for a in node_actors)
    for uri, manifest in staged.values():
        prefix = uri.removeprefix("s3:/")
        for f in manifest.files:  # the object store saw one GET per node for every file
            assert s3.requests("GET", f"{prefix}/{f.path}") == NODES, f.path
    assert all("HF_TOKEN" in a["credentials"] for a in actors)  # passed with the actors' calls
    for path in (tmp_path / "staged.mp4.report.json", tmp_path / "staged.mp4.report.html"):
        assert secret not in path.read_text()  # named, never shown
    homes = sorted(p.name for p in cluster.cache_root.iterdir())
    assert homes == [f"node{i}" for i in range(NODES)]

    # `farm models ls` lists what each node holds, no longer in use once the job is done
    listed = CliRunner().invoke(main, ["models", "ls", "--address", cluster.address, "--json"])
    assert listed.exit_code == 0, listed.output
    held = {n["node"]: {m["uri"]: m for m in n["models"]} for n in json.loads(listed.stdout)}
    assert sorted(held) == sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    for node in by_node:
        assert sorted(held[node]) == sorted(uri for uri, _ in staged.values())
        assert all(not m["in_use"] for m in held[node].values())
        assert {m["bytes"] for m in held[node].values()} == {m.total_bytes for _, m in staged.values()}

    local = render(_spec(tmp_path, "local.mp4", str(tiny_model_path(TINY_BASE)),
                         str(tiny_model_path(TINY_MOTION_ADAPTER))),
                   workers=1, threads=1, store=False, actor_resources=SLOT).to_dict()
    assert local["actors"][0]["from"] == "local"
    a, b = read_frames(tmp_path / "staged.mp4"), read_frames(tmp_path / "local.mp4")
    assert len(a) == len(b) == 76 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_model_that_arrives_corrupt_fails_the_job_by_name_and_keeps_the_stored_windows(cluster, s3, tmp_path):
    """The LoRA's weights on the server are cut short after staging: the actor fetches
    them twice, then the job fails with the file's name; the windows an earlier
    job left in the store (same key: a staged model keys like its local folder) stay."""
    from farm.models.tiny_lora import tiny_lora_path
    from farm.outputs import filesystem
    from farm.store import WindowStore

    folder = tiny_lora_path("sd")
    uri = f"s3://{s3.bucket}/models/sd-lora"
    manifest = stage(str(folder), uri)
    store = tmp_path / "store"

    def spec(frames, lora, name):
        data = base_spec(tmp_path, frames=frames, output=str(tmp_path / name))
        data["model"] = {**data["model"], "loras": [{"path": lora, "name": "style", "weight": 1.0}]}
        return parse_spec(data)

    first = render(spec(16, str(folder), "first.mp4"), workers=1, threads=1, store=store, actor_resources=SLOT)
    assert first.to_dict()["windows_rendered"] == 1  # window 0: the second job's first window

    weights = next(f.path for f in manifest.files if f.path.endswith(".safetensors"))
    fs, path = filesystem(f"{uri}/{weights}")
    with fs.open_input_stream(path) as f:
        whole = f.read()
    with fs.open_output_stream(path) as f:
        f.write(whole[:100])
    gets = s3.requests("GET", f"/{s3.bucket}/models/sd-lora/{weights}")

    with pytest.raises(FarmError) as err:  # the one-paragraph error `farm render` prints
        render(spec(28, uri, "second.mp4"), workers=1, threads=1, store=store, actor_resources=SLOT)
    message = str(err.value)
    assert message.startswith("a pipeline actor could not load its model: ") and "\n" not in message, message
    assert f"{uri}/{weights}" in message and "2 times" in message, message
    assert s3.requests("GET", f"/{s3.bucket}/models/sd-lora/{weights}") - gets == 2
    assert len(WindowStore(store).entries()) == 1  # the first job's window is still there
    assert not (tmp_path / "second.mp4").exists()


def test_the_manager_prefetches_a_queued_jobs_staged_model_onto_every_pool_node(cluster, s3, tmp_path):
    """`farm manager start --prefetch`: a job that waits in the queue has its staged model
    fetched onto every node that can hold a pool actor, once each, before any pipeline loads."""
    from scheduler.manager import ManagerConfig, start_manager, stop_manager
    from scheduler.node_models import list_node_caches

    model = tmp_path / "waiting.safetensors"
    model.write_bytes(os.urandom(1 << 20))
    uri = f"s3://{s3.bucket}/models/waiting"
    stage(str(model), uri)
    manager, _ = start_manager(ManagerConfig(max_actors=1, threads=1, resources=SLOT, prefetch=True,
                                             lease_timeout_s=120))
    try:
        ray.get(manager.register.remote("waiting-job", 50, "key-of-its-pipeline", 1, staged=[uri]))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = [e for e in ray.get(manager.events_log.remote()) if e["event"] == "prefetched"]
            if len(done) >= NODES:
                break
            time.sleep(0.5)
        assert len(done) == NODES, ray.get(manager.events_log.remote())
        assert all(e["models"] == {uri: "object storage"} for e in done)
    finally:
        stop_manager()
    assert s3.requests("GET", f"/{s3.bucket}/models/waiting/waiting.safetensors") == NODES
    pool_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("farm_pipe")}
    for node in list_node_caches():
        uris = [m["uri"] for m in node["models"]]
        assert (uri in uris) == (node["node"] in pool_nodes), node  # the head holds no pool actor
