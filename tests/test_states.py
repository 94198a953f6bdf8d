"""The window and job state machine, and the blocklist: pure, no Ray."""

from __future__ import annotations

import pytest

from farm.states import Failure, IllegalTransition, JobState, Ledger, WindowState
from scheduler.pool import Blocklist

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def _fail(ledger, index, actor="a", node="n"):
    return ledger.failed_attempt(index, Failure(actor=actor, node=node, error="boom", lost=False))


def test_a_window_gets_one_attempt_plus_its_retries_then_fails():
    ledger = Ledger(range(2), retries=3)
    for attempt in range(1, 5):
        ledger.start(0)
        assert ledger.windows[0].attempts == attempt
        retrying = _fail(ledger, 0)
        assert retrying == (attempt < 4)
    assert ledger.windows[0].state is WindowState.FAILED
    assert [w.index for w in ledger.failed] == [0] and ledger.windows[0].last_error == "boom"
    assert len(ledger.windows[0].failures) == 4
    with pytest.raises(IllegalTransition, match="window 0: FAILED → RUNNING"):
        ledger.start(0)


def test_retries_zero_means_a_single_attempt():
    ledger = Ledger([0], retries=0)
    ledger.start(0)
    assert _fail(ledger, 0) is False and ledger.windows[0].state is WindowState.FAILED


def test_only_legal_moves_are_allowed():
    ledger = Ledger([0, 1, 2])
    ledger.cached(0)
    with pytest.raises(IllegalTransition):
        ledger.start(0)  # a cached window is never rendered
    with pytest.raises(IllegalTransition):
        ledger.done(1)  # a window that never ran cannot be done
    ledger.start(1)
    ledger.done(1)
    with pytest.raises(IllegalTransition):
        ledger.done(1)  # published once
    with pytest.raises(IllegalTransition):
        ledger.job(JobState.DONE)
    ledger.job(JobState.RUNNING)
    ledger.job(JobState.FAILED)
    with pytest.raises(IllegalTransition):
        ledger.job(JobState.DONE)
    assert ledger.in_state(WindowState.PENDING) == [2]


def test_blocklist_counts_different_windows_per_actor_and_per_node():
    bl = Blocklist(threshold=3)
    # One poison window failing again and again on an actor does not blocklist it.
    for _ in range(5):
        assert bl.record("a1", "n1", 7, "poison") == []
    assert bl.record("a1", "n1", 8, "e") == []
    assert bl.record("a2", "n1", 9, "e") == [("node", "n1")]  # 3 windows on node n1, 2 actors
    assert bl.record("a1", "n1", 10, "last") == [("actor", "a1")]
    assert {(b["kind"], b["id"], b["failures"]) for b in bl.report()} == {("node", "n1", 4), ("actor", "a1", 3)}
    assert [b["last_error"] for b in bl.report() if b["kind"] == "actor"] == ["last"]


def test_a_window_we_interrupted_goes_back_without_spending_an_attempt():
    ledger = Ledger([0], retries=0)
    ledger.start(0)
    ledger.requeue(0)  # its actor was blocklisted while it ran
    assert ledger.windows[0].state is WindowState.PENDING and ledger.windows[0].attempts == 0
    ledger.start(0)
    ledger.done(0)
    assert ledger.windows[0].attempts == 1


def test_a_finished_window_whose_frames_were_lost_goes_back_to_the_queue():
    ledger = Ledger([0, 1])
    ledger.start(0)
    ledger.done(0)
    ledger.cached(1)
    ledger.lost(0)
    ledger.lost(1)
    assert ledger.in_state(WindowState.PENDING) == [0, 1]
    ledger.start(0)
    assert ledger.windows[0].attempts == 2  # rendering it again is another attempt
    with pytest.raises(IllegalTransition, match="not finished"):
        ledger.lost(0)  # only frames that were there can be lost
