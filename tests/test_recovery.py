"""Nothing lost, nothing rendered twice: real multi-node Ray (`ray.cluster_utils.Cluster`),
nodes killed mid-job, crashing actors, a poison window and a bad node.

Every node carries one `farm_pipe` resource, which each pipeline actor requires, as a GPU
node type would. Each recovered job is compared frame for frame, and byte for byte, with
an undisturbed render of the same job.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from farm.video import read_frames
from farm.errors import WindowFatal
from farm.keys import model_identity, task_key
from farm.plan import plan_windows
from farm.tasks import WindowTask
from farm.spec import parse_spec
from farm.store import WindowStore
from scheduler.driver import render
from scheduler.progress import NullProgress
from tests.conftest import base_spec

PIPE = {"farm_pipe": 1}
FRAMES = 148  # 12 windows of 16 frames, overlap 4


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1, resources=PIPE) for _ in range(4)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level=logging.ERROR, log_to_driver=False)
    c.farm_workers = workers
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """The undisturbed render every recovered job must match. On one actor: a window's frames
    do not depend on which actor renders it (tests/test_ray_render.py), and one actor starts
    in a quarter of the CPU time of four."""
    tmp = tmp_path_factory.mktemp("reference")
    report = _render(tmp, "reference.mp4", tmp / "store", workers=1)
    assert report["state"] == "DONE" and report["windows_rendered"] == 12
    path = tmp / "reference.mp4"
    return path.read_bytes(), read_frames(path)


def _spec(tmp_path, name, faults=None):
    data = base_spec(tmp_path, frames=FRAMES, output=str(tmp_path / name))
    if faults:
        data["model"] = {**data["model"], "faults": faults}
    return parse_spec(data)


def _render(tmp_path, name, store, workers, faults=None, progress=None, retries=None):
    spec = _spec(tmp_path, name, faults)
    if retries is not None:
        spec = spec.model_copy(update={"retries": retries})
    return render(spec, workers=workers, threads=1, store=store, actor_resources=PIPE, progress=progress)


def _assert_matches(reference, path):
    ref_bytes, ref_frames = reference
    frames = read_frames(path)
    assert len(frames) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(frames, ref_frames))
    assert path.read_bytes() == ref_bytes


def _published_once(report):
    assert [w["index"] for w in report["windows"]] == list(range(12))
    assert all(w["state"] == "DONE" for w in report["windows"])


class _KillNodes(NullProgress):
    """Removes two worker nodes, hard, when the first window comes back: the other
    windows queued on their actors are in flight."""

    def __init__(self, cluster, nodes):
        self.cluster, self.nodes, self.done = cluster, nodes, 0

    def window_done(self, result) -> None:
        self.done += 1
        if self.done == 1:
            for node in self.nodes:
                self.cluster.remove_node(node, allow_graceful=False)


def test_an_actor_that_crashes_is_restarted_and_its_window_rerun_once(cluster, reference, tmp_path):
    # Each actor's process exits (os._exit) on its 2nd window, in its first life only.
    report = _render(tmp_path, "crash.mp4", tmp_path / "store", workers=2, faults={"crash_on_call": 2})
    _published_once(report)
    retried = [w for w in report["windows"] if w["attempts"] > 1]
    assert len(retried) >= 2  # one per actor at least
    assert all(w["failures"][0]["lost"] and "its actor was lost" in w["failures"][0]["error"] for w in retried)
    assert report["windows_rendered"] == 12 and report["blocklist"] == []
    _assert_matches(reference, tmp_path / "crash.mp4")


def test_a_poison_window_fails_the_job_and_keeps_every_other_window(cluster, tmp_path):
    store = WindowStore(tmp_path / "store")
    with pytest.raises(WindowFatal, match=r"window 5: failed all 3 attempts .*InjectedFault") as err:
        _render(tmp_path, "poison.mp4", store.root, workers=2, faults={"fail_windows": [5]}, retries=2)
    assert "11 other windows are kept in the store" in str(err.value)
    assert not (tmp_path / "poison.mp4").exists()  # no partial video

    import json
    report = json.loads((tmp_path / "poison.mp4.report.json").read_text())
    assert report["state"] == "FAILED"
    assert report["failed"]["window"] == 5 and report["failed"]["attempts"] == 3
    assert "window 5 always fails" in report["failed"]["error"]
    poisoned = report["windows"][5]
    assert poisoned["state"] == "FAILED" and len(poisoned["failures"]) == 3
    assert len({f["actor"] for f in poisoned["failures"]}) == 2  # retried on the other actor

    spec = _spec(tmp_path, "poison.mp4")
    model_id = model_identity(spec, "cpu")
    keys = [task_key(model_id, WindowTask.from_spec(spec, w)) for w in plan_windows(spec).windows]
    assert sorted(e.key for e in store.entries()) == sorted(keys[:5] + keys[6:])

    # Fixed: only the poison window is rendered; the others come from the store.
    fixed = _render(tmp_path, "poison.mp4", store.root, workers=1)  # one window to render
    assert fixed["state"] == "DONE" and fixed["windows_rendered"] == 1 and fixed["windows_cached"] == 11
    assert [w["index"] for w in fixed["windows"] if not w["cached"]] == [5]


def test_a_bad_node_is_blocklisted_and_the_job_completes_elsewhere(cluster, reference, tmp_path):
    bad = cluster.add_node(num_cpus=1, resources={**PIPE, "farm_bad_gpu": 1})
    cluster.wait_for_nodes()
    try:
        report = _render(tmp_path, "bad.mp4", tmp_path / "store", workers=5,
                         faults={"fail_on_resource": "farm_bad_gpu"})
    finally:
        cluster.remove_node(bad)
    _published_once(report)
    bad_node = bad.node_id
    kinds = {(b["kind"], b["id"]) for b in report["blocklist"]}
    assert ("node", bad_node) in kinds
    assert all(b["failures"] >= 3 and "farm_bad_gpu" in b["last_error"] for b in report["blocklist"])
    # No window ever ran on the bad node successfully; each failed there at most once.
    assert all(w["node"] != bad_node for w in report["windows"])
    assert all(sum(f["node"] == bad_node for f in w["failures"]) <= 1 for w in report["windows"])
    _assert_matches(reference, tmp_path / "bad.mp4")


def test_losing_two_of_four_nodes_mid_job_loses_no_window(cluster, reference, tmp_path):
    doomed = cluster.farm_workers[:2]
    try:
        report = _render(tmp_path, "lost.mp4", tmp_path / "store", workers=4,
                         progress=_KillNodes(cluster, doomed))
    finally:
        cluster.farm_workers = cluster.farm_workers[2:] + [cluster.add_node(num_cpus=1, resources=PIPE)
                                                           for _ in doomed]
    _published_once(report)
    lost = [w for w in report["windows"] if any(f["lost"] for f in w["failures"])]
    assert lost, "no window was in flight on the killed nodes"
    dead = {n.node_id for n in doomed}
    assert all(w["node"] not in dead for w in lost)  # rerun elsewhere
    assert report["windows_rendered"] == 12
    # On the segment path a finished window's frames stay on its node until its segments are
    # encoded: those lost with the nodes were read from the store or rendered again.
    assert report["encode"]["path"] == "segments"
    again = [report["windows"][i] for i in report["encode"]["windows_lost"]]
    assert all(w["cached"] or w["node"] not in dead for w in again)
    _assert_matches(reference, tmp_path / "lost.mp4")


# -- co-denoised jobs (window.reconcile: latent) ----------------------------------------------
LATENT = {"frames": 64, "steps": 4, "window": {"length": 16, "overlap": 4, "reconcile": "latent", "checkpoint_every": 1},
          "encode": {"crf": 0}}


def _latent(tmp_path, name, workers, faults=None, progress=None):
    data = base_spec(tmp_path, output=str(tmp_path / name), **LATENT)
    data["model"] = {**data["model"], "warmup": False, **({"faults": faults} if faults else {})}
    return render(parse_spec(data), workers=workers, threads=1, store=tmp_path / "store", actor_resources=PIPE,
                  progress=progress)


@pytest.fixture(scope="module")
def latent_reference(one_thread, tmp_path_factory):
    """The job's frames with its shards run in turn in this process (tests/lockstep.py),
    through the same lossless encoder: what every recovered job must give."""
    from farm.encode import open_writer
    from farm.renderers import renderer_class
    from tests.lockstep import lockstep

    tmp = tmp_path_factory.mktemp("latent_reference")
    data = base_spec(tmp, output=str(tmp / "reference.mp4"), **LATENT)
    spec = parse_spec(data)
    frames = lockstep(renderer_class("animatediff")(spec, "cpu"), spec, 1)
    with open_writer(tmp / "reference.mp4", 64, 64, spec.fps, 0, spec.encode.preset) as out:
        for frame in frames:
            out.write(frame)
    return read_frames(tmp / "reference.mp4")


def test_a_co_denoising_actor_that_crashes_resumes_from_the_last_checkpoint_with_the_same_frames(
        cluster, latent_reference, tmp_path):
    # the last shard's actor exits hard on reaching step 3: its step-3 part dies with it,
    # so the last whole checkpoint is after step 2
    report = _latent(tmp_path, "crash.mp4", workers=2, faults={"crash_on_step": 3})
    latent = report["latent"]
    assert [r["from_step"] for r in latent["recoveries"]] == [2]
    assert latent["actors"] == 2 and latent["recoveries"][0]["actors_left"] == 2  # Ray restarted it
    assert np.array_equal(read_frames(tmp_path / "crash.mp4"), latent_reference)


class _KillNodeAtStep(NullProgress):
    """Removes `node` once every shard has finished `step` (its checkpoint is whole), and
    keeps the driver's notices, each with whether the node was gone by then."""

    def __init__(self, cluster, node, step: int):
        self.cluster, self.node, self.step, self.killed = cluster, node, step, False
        self.notices: list[tuple[bool, str]] = []

    def stage(self, name: str) -> None:
        if not self.killed and name == f"denoising: step {self.step}/4":
            self.killed = True
            self.cluster.remove_node(self.node, allow_graceful=False)

    def notice(self, text: str) -> None:
        self.notices.append((self.killed, text))


# slow (about a minute on 2 cores: four actors, then three restarted beside the lost one): `-m slow`, run by CI after the default run
@pytest.mark.slow
def test_a_node_lost_for_good_moves_its_windows_to_the_survivors_with_the_same_frames(
        cluster, latent_reference, tmp_path):
    from scheduler.codenoise import ACTOR_RETURN_WAIT_S

    # the production wait (300 s): the survivors restart and reload their pipelines side by side
    # on 2 cores, the other test worker busy too (25 s was once too short, 40 s once, and once
    # they took about 80 s); the lost node's actor must not use it up
    doomed = cluster.farm_workers[0]
    killer = _KillNodeAtStep(cluster, doomed, 1)
    try:  # four actors on the four pipe nodes: the lost one has nowhere to restart
        report = _latent(tmp_path, "lost.mp4", workers=4, faults={"delay": 0.6},  # steps slow enough to die in
                         progress=killer)
    finally:
        cluster.farm_workers = cluster.farm_workers[1:] + [cluster.add_node(num_cpus=1, resources=PIPE)]
    latent = report["latent"]
    assert len(latent["recoveries"]) == 1 and latent["recoveries"][0]["actors_left"] == 3
    # the loss comes after the step-1 checkpoint is whole: the job goes on from it (or a later one)
    assert latent["recoveries"][0]["from_step"] >= 1, (latent["recoveries"], killer.notices)
    # the lost node's actor is given up LOST_NODE_GRACE_S after the survivors answered, not after the whole wait
    assert latent["recoveries"][0]["seconds"] < ACTOR_RETURN_WAIT_S, latent["recoveries"]
    assert latent["actors"] == 3 and latent["actors_asked"] == 4
    assert doomed.node_id not in {w["node"] for w in report["windows"]}
    assert np.array_equal(read_frames(tmp_path / "lost.mp4"), latent_reference)
