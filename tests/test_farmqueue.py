"""The farm queue's policy (farm/farmqueue.py), driven directly: no Ray, a clock we own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from farm.farmqueue import KEEP_ENDED, FarmQueue, touch
from farm.states import IllegalTransition, QueueState

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def pool(n: int, max_models: int = 1) -> FarmQueue:
    q = FarmQueue(max_actors=n, max_models=max_models)
    for i in range(n):
        q.starting += 1
        q.actor_ready(f"a{i}", f"node{i}", now=0.0)
    return q


def held(q: FarmQueue, job: str) -> list[str]:
    return sorted(a.name for a in q.held_by(job))


def test_jobs_are_served_by_priority_then_submission():
    q = pool(2)
    q.submit("low", 10, "m", wants=2, now=1)
    q.submit("mid-1", 50, "m", wants=2, now=2)
    q.submit("mid-2", 50, "m", wants=2, now=3)
    q.submit("high", 90, "m", wants=1, now=4)
    plan = q.plan()
    assert {job for _, job, _ in plan.grants} == {"high", "mid-1"}
    assert [j.id for j in q.active()] == ["high", "mid-1", "mid-2", "low"]
    assert q.jobs["mid-2"].state is QueueState.QUEUED and q.jobs["mid-1"].state is QueueState.RUNNING
    assert plan.moves == ()  # equal and lower priorities wait; nobody is preempted


def test_a_higher_priority_job_takes_actors_at_their_next_window_boundary():
    q = pool(2)
    q.submit("low", 10, "m", wants=2, now=0)
    q.plan()
    q.tell("low")
    assert held(q, "low") == ["a0", "a1"]
    q.submit("high", 90, "m", wants=1, now=1)
    plan = q.plan()
    assert plan.grants == () and len(plan.moves) == 1 and plan.moves[0][1] == "low"
    moved = plan.moves[0][0]
    assert q.plan().moves == ()  # the move is already on its way: asked once
    # the low job's driver hands it back once its window is done; the high job gets it
    q.release("low", [(moved, q.actors[moved].grant)], now=2)
    plan = q.plan()
    assert plan.grants == ((moved, "high", True),)
    assert q.jobs["low"].preempted == 1 and q.jobs["low"].state is QueueState.RUNNING
    # the high job ends: the actor goes back to the low job, warm
    q.end("high", QueueState.DONE, now=3)
    assert q.plan().grants == ((moved, "low", True),)


def test_a_latent_job_is_asked_too_and_moves_when_its_driver_hands_back():
    q = pool(1)
    q.submit("latent", 10, "m", wants=1, now=0, latent=True)
    q.plan()
    q.submit("high", 90, "m", wants=1, now=1)
    assert q.plan().moves == (("a0", "latent"),)
    assert q.plan().grants == ()  # until the co-denoised job reaches its next checkpoint


def test_warm_actors_first_else_the_least_recently_used_loads():
    q = pool(2, max_models=2)
    q.submit("j1", 50, "A", wants=1, now=0)
    q.plan()
    first = held(q, "j1")[0]
    q.end("j1", QueueState.DONE, now=1)
    q.submit("j2", 50, "A", wants=1, now=2)
    assert q.plan().grants == ((first, "j2", True),)  # the actor that holds A
    q.end("j2", QueueState.DONE, now=3)
    q.submit("j3", 50, "B", wants=1, now=4)
    (name, _, warm), = q.plan().grants
    assert not warm and name != first  # the empty actor loads B; A stays warm on the other
    assert q.actors[name].models == ["B"]


def test_touch_keeps_the_most_recent_models_and_evicts_the_least_recently_used():
    assert touch(["A", "B"], "C", 2) == (["B", "C"], ["A"])
    assert touch(["A", "B"], "A", 2) == (["B", "A"], [])
    assert touch([], "A", 1) == (["A"], [])


def test_unmet_demand_starts_actors_up_to_the_maximum_then_waits():
    q = FarmQueue(max_actors=3)
    q.submit("j", 50, "m", wants=5, now=0)
    assert q.plan().start == 3
    assert q.plan().start == 0  # already starting
    q.actor_ready("x", "n", now=1)
    assert [g[0] for g in q.plan().grants] == ["x"]


def test_a_heartbeat_that_omits_an_actor_releases_it_unless_it_was_just_granted():
    q = pool(2)
    q.submit("j", 50, "m", wants=2, now=0)
    q.plan()
    q.beat("j", held=[], now=0.5)  # a beat sent before the driver heard of its grants
    assert held(q, "j") == ["a0", "a1"]
    q.tell("j")
    q.beat("j", held=["a0"], now=1)
    assert held(q, "j") == ["a0"] and q.actors["a1"].holder is None
    q.beat("j", held=["a0"], now=2, dead=("a0",))
    assert held(q, "j") == [] and "a0" not in q.actors


def test_a_late_hand_back_of_an_earlier_lending_frees_nothing():
    q = pool(1)
    q.submit("j", 50, "m", wants=1, now=0)
    q.plan()
    first = q.actors["a0"].grant
    q.tell("j")
    q.beat("j", held=[], now=1)  # the driver gave it back; this heartbeat freed it ...
    q.plan()  # ... and the job, still wanting an actor, was lent it again
    assert q.actors["a0"].holder == "j" and q.actors["a0"].grant == first + 1
    q.release("j", [("a0", first)], now=2)  # the hand-back that crossed the heartbeat
    assert q.actors["a0"].holder == "j"


def test_the_queue_keeps_the_most_recent_ended_jobs():
    q = pool(1)
    for i in range(KEEP_ENDED + 5):
        q.submit(f"j{i}", 50, "m", wants=1, now=i)
        q.end(f"j{i}", QueueState.DONE, now=i)
    assert len(q.jobs) == KEEP_ENDED and "j0" not in q.jobs and f"j{KEEP_ENDED + 4}" in q.jobs


def test_a_silent_driver_is_expired_and_its_actors_reclaimed():
    q = pool(2)
    q.submit("j", 50, "m", wants=2, now=0)
    q.plan()
    assert q.expired(now=5, lease_s=10) == []
    assert q.expired(now=11, lease_s=10) == ["j"]
    assert sorted(q.end("j", QueueState.LOST, now=11)) == ["a0", "a1"]
    assert all(a.holder is None for a in q.actors.values())
    with pytest.raises(IllegalTransition):
        q._set(q.jobs["j"], QueueState.RUNNING)


def test_priority_change_reorders_and_bad_priorities_are_refused():
    q = pool(1)
    q.submit("a", 50, "m", wants=1, now=0)
    q.submit("b", 50, "m", wants=1, now=1)
    q.submit("c", 50, "m", wants=1, now=2)
    q.plan()
    q.set_priority("c", 60)
    assert [j.id for j in q.active()] == ["c", "a", "b"]
    for bad in (-1, 101, 5.5, True):
        with pytest.raises(ValueError, match="priority must be an integer from 0 to 100"):
            q.set_priority("b", bad)
    with pytest.raises(KeyError, match="no job 'zz'"):
        q.set_priority("zz", 1)


def test_a_stop_is_asked_of_an_active_job_only_and_progress_is_in_windows_or_steps():
    q = pool(1)
    q.submit("w", 50, "m", wants=1, now=0, windows_total=8, submitter="ana@laptop", prompt="a fox " * 100)
    q.submit("l", 40, "m", wants=1, now=1, latent=True, windows_total=5)
    q.plan()
    assert q.jobs["w"].submitter == "ana@laptop" and len(q.jobs["w"].prompt) == 300
    q.beat("w", ["a0"], now=2, windows_done=3)
    q.beat("l", [], now=2, steps=(7, 25))
    assert q.progress(q.jobs["w"]) == {"done": 3, "total": 8, "unit": "windows"}
    assert q.progress(q.jobs["l"]) == {"done": 7, "total": 25, "unit": "steps"}
    assert q.request_stop("l").stop_requested and not q.jobs["w"].stop_requested
    q.end("w", QueueState.DONE, now=3)
    with pytest.raises(KeyError, match="job w has ended"):
        q.request_stop("w")
    with pytest.raises(KeyError, match="no job 'zz'"):
        q.request_stop("zz")


def test_idle_actors_are_stopped_after_the_idle_timeout():
    q = pool(2)
    q.submit("j", 50, "m", wants=1, now=0)
    q.plan()
    assert q.idle_expired(now=100, idle_s=60) == ["a1"]  # the one that worked for nobody
    assert list(q.actors) == ["a0"]


def test_the_queue_survives_a_round_trip_through_its_dict():
    q = pool(2, max_models=2)
    q.submit("j", 70, "m", wants=2, now=0, label="fox.yaml", windows_total=12)
    q.plan()
    back = FarmQueue.from_dict(q.to_dict())
    assert back.snapshot(now=1) == q.snapshot(now=1)
    back.submit("k", 50, "m", wants=1, now=2)
    assert back.jobs["k"].seq == q.jobs["j"].seq + 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 4), st.sampled_from("AB")), min_size=1, max_size=6),
       st.integers(1, 4))
def test_every_actor_has_at_most_one_holder_and_no_job_more_than_it_wants(jobs, n):
    q = pool(n, max_models=1)
    for i, (priority, wants, model) in enumerate(jobs):
        q.submit(f"j{i}", priority, model, wants, now=i)
        plan = q.plan()
        for name, _ in plan.moves:  # drivers release every moved actor at once
            q.release(q.actors[name].holder, [(name, q.actors[name].grant)], now=i + 0.5)
        q.plan()
    holders = [a.holder for a in q.actors.values() if a.holder]
    for job in q.jobs.values():
        assert holders.count(job.id) <= job.wants
    # the actors go to the best jobs: no waiting job outranks a job that holds an actor
    waiting = [j for j in q.active() if holders.count(j.id) < j.wants]
    for job in q.active():
        if holders.count(job.id):
            assert all(w.priority <= job.priority for w in waiting if w.id != job.id)
