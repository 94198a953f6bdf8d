"""The one actor pool: its policy without Ray, and both stages on real Ray actors, with a
RIFE actor killed mid-job."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from farm.errors import InterpolationError
from farm.spec import parse_spec
from farm.states import Failure, Ledger
from scheduler.dispatch import may_start
from scheduler.driver import render
from scheduler.pool import PoolPolicy, Slot
from scheduler.progress import NullProgress
from tests.conftest import base_spec


# -- the policy, no Ray ----------------------------------------------------------------------
def _policy(n=3, per_actor=2, blocklist_after=3, nodes=None):
    nodes = nodes or [f"n{i}" for i in range(n)]
    return PoolPolicy([Slot(actor=None, name=f"a{i}", node=nodes[i]) for i in range(n)], per_actor, blocklist_after)


def test_work_goes_to_the_least_busy_actor_with_room():
    p = _policy(per_actor=2)
    p.slots[0].in_flight, p.slots[1].in_flight, p.slots[2].in_flight = 1, 0, 2
    assert p.pick(0).name == "a1"
    p.slots[1].in_flight = 2
    assert p.pick(0).name == "a0"
    p.slots[0].in_flight = 2
    assert p.pick(0) is None  # every actor is full: the caller waits


def test_retried_work_avoids_the_actor_it_failed_on_while_another_is_usable():
    p = _policy(n=2)
    assert p.failed(p.slots[0], 7, "boom", lost=False, final=False) == []
    assert p.pick(7).name == "a1"
    p.slots[1].in_flight = 2
    assert p.pick(7) is None  # waits for a1 rather than going back to a0
    p.slots[1].blocked = True
    assert p.pick(7).name == "a0"  # the only usable actor left


def test_an_actor_and_its_node_are_blocklisted_after_three_different_failures():
    p = _policy(n=3, nodes=["x", "x", "y"])
    for index in (1, 2):
        assert p.failed(p.slots[0], index, "boom", lost=False, final=False) == []
    assert p.failed(p.slots[0], 2, "boom", lost=False, final=False) == []  # the same work twice counts once
    stopped = p.failed(p.slots[1], 3, "boom", lost=False, final=False)
    assert [s.name for s in stopped] == ["a0", "a1"]  # node x failed 3 different pieces of work
    assert {(b["kind"], b["id"]) for b in p.blocklist.report()} == {("node", "x")}
    assert [s.name for s in p.slots if s.usable] == ["a2"]


def test_a_lost_actor_is_probed_not_blamed_and_a_final_error_blames_nobody():
    p = _policy(n=2)
    for index in range(5):
        p.failed(p.slots[0], index, "lost", lost=True, final=False)
        p.failed(p.slots[1], index, "out of steps", lost=False, final=True)
    assert p.slots[0].probing and not p.slots[0].usable
    assert p.blocklist.report() == []
    assert p.back(p.slots[0], "n9") is False and p.slots[0].usable and p.slots[0].node == "n9"


def test_an_actor_restarted_onto_a_blocklisted_node_is_stopped():
    p = _policy(n=3, nodes=["x", "y", "z"], blocklist_after=1)
    p.failed(p.slots[1], 0, "boom", lost=False, final=False)
    p.slots[0].probing = True
    assert p.back(p.slots[0], "y") is True and p.slots[0].blocked
    assert "no pipeline actor is left" in p.no_actors_left("pipeline")


def test_windows_start_within_the_lookahead_and_a_chain_waits_for_the_window_before():
    ledger = Ledger(range(6))
    assert may_start(3, need_from=0, lookahead=4, chained=False, ledger=ledger)
    assert not may_start(4, need_from=0, lookahead=4, chained=False, ledger=ledger)
    assert not may_start(1, need_from=0, lookahead=4, chained=True, ledger=ledger)
    ledger.start(0)
    ledger.done(0)
    assert may_start(1, need_from=0, lookahead=4, chained=True, ledger=ledger)
    ledger.start(1)
    ledger.failed_attempt(1, Failure("a", "n", "boom", lost=False), final=True)
    assert not may_start(2, need_from=0, lookahead=4, chained=True, ledger=ledger)


# -- on Ray ----------------------------------------------------------------------------------
def _rife_job(tmp_path, name, **faults):
    data = base_spec(tmp_path, frames=40, output=str(tmp_path / name), encode={"crf": 0, "preset": "ultrafast"},
                     interpolate={"factor": 2, "chunk": 2, "workers": 2, "scene_threshold": 0})
    if faults:
        data["model"] = {**data["model"], "faults": faults}
    return parse_spec(data)


def _rife_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RifeActor"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


class _KillOneRifeActor(NullProgress):
    """Kills one RIFE actor's process (SIGKILL, as the OOM killer would) as soon as the
    first interpolated frames reach the encoder, while other chunks are in flight."""

    def __init__(self):
        self.killed: int | None = None

    def frames_written(self, n: int) -> None:
        if n and self.killed is None:
            self.killed = _rife_pids()[0]
            os.kill(self.killed, signal.SIGKILL)


@pytest.fixture(scope="module")
def undisturbed(shared_ray, tmp_path_factory):
    from farm.rife import weights

    weights.pull()
    tmp = tmp_path_factory.mktemp("undisturbed")
    report = render(_rife_job(tmp, "calm.mp4"), workers=1, threads=1, store=tmp / "store")  # the windows, stored
    assert report["state"] == "DONE" and report["interpolate"]["frames_out"] == 80
    return tmp, (tmp / "calm.mp4").read_bytes()


def test_a_lost_rife_actor_s_chunk_is_retried_on_another_and_the_video_is_unchanged(undisturbed):
    tmp, calm = undisturbed
    killer = _KillOneRifeActor()
    # The windows come from the store, so the RIFE actors are the only actors at work.
    report = render(_rife_job(tmp, "killed.mp4"), workers=2, threads=1, store=tmp / "store", progress=killer)
    assert killer.killed is not None
    ip = report["interpolate"]
    assert report["state"] == "DONE" and report["windows_cached"] == 3
    assert ip["failed_attempts"] >= 1  # at least one chunk was on the killed actor
    assert ip["frames_out"] == 80 and report["output_frames"] == 80
    assert (tmp / "killed.mp4").read_bytes() == calm


def test_a_chunk_that_fails_on_every_rife_actor_fails_the_job_with_a_report(undisturbed, tmp_path):
    tmp, _ = undisturbed
    spec = _rife_job(tmp_path, "poison.mp4", fail_chunks=[3]).model_copy(update={"retries": 2})
    with pytest.raises(InterpolationError, match=r"chunk 3 .*failed all 3 attempts.*injected"):
        render(spec, workers=2, threads=1, store=tmp / "store")
    assert not (tmp_path / "poison.mp4").exists()  # no partial video
    report = (tmp_path / "poison.mp4.report.json").read_text()
    assert '"state": "FAILED"' in report and "chunk 3" in report


def test_when_every_chunk_fails_the_error_says_what_the_rife_actors_hit(undisturbed, tmp_path):
    """Every chunk raises: the RIFE actors' node is blocklisted (an actor may be first)
    before any chunk spends its attempts, and the job's error still names the chunks' own error, not only 'no actor'."""
    tmp, _ = undisturbed
    spec = _rife_job(tmp_path, "all.mp4", fail_chunks=list(range(20)))
    with pytest.raises(InterpolationError, match=r"no RIFE actor is left.*The last chunk error \(chunk \d+\): "
                                                 r"the RIFE actor raised InjectedFault: injected: chunk \d+ always fails"):
        render(spec, workers=2, threads=1, store=tmp / "store")
    report = json.loads((tmp_path / "all.mp4.report.json").read_text())
    assert report["state"] == "FAILED" and "InjectedFault" in report["error"]
    assert report["interpolate"]["failed_attempts"] >= 3
    kinds = [b["kind"] for b in report["interpolate"]["blocklist"]]
    # the node goes; an actor that happened to fail three chunks first may be listed before it
    assert "node" in kinds and set(kinds) <= {"node", "actor"} and kinds.count("node") == 1
