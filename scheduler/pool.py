"""One actor pool for every stage: pipeline actors render windows, RIFE actors interpolate
chunks, and both get the same bounds, retries, probes and blocklist.

Policy apart from mechanism, as Ray Data keeps its operator selection apart from its loop:

- `PoolPolicy` (pure, no Ray) decides which actor gets a piece of work, what a failure
  means for the actor and its node, and who is blocklisted. Unit tests drive it directly.
- `ActorPool` makes the Ray calls: submit, `ray.wait`, collect, probe, kill. It asks the
  policy at every decision and translates Ray's exceptions into the farm's at this one edge.

Semantics (Ray's used on purpose: actor calls are at-most-once, Ray does not resubmit them,
we do):
- At most `per_actor` pieces of work wait on each actor (one running, the rest queued, so
  an actor never idles between two).
- The work raised (`RayTaskError`): the attempt failed; the work is retried, preferably on
  another actor. It counts against the actor and its node. An error that says retrying is
  pointless (`retryable = False`, e.g. a fallback ladder that ran out) fails it at once.
- The actor or node was lost (`ActorDiedError`, `ActorUnavailableError`, `NodeDiedError`):
  the work is retried elsewhere. Ray restarts the actor (`max_restarts`), which re-runs
  `__init__` (reloading its model); a probe call (`info()`) tells when it is back, and
  until then it gets no work. An actor that cannot be restarted is dropped.
- Each piece of work has `retries` retries (1 + retries attempts), counted in its
  `farm.states.Ledger`; one that spends them is FAILED and the caller decides what follows.
- An actor, or a node, that fails `blocklist_after` different pieces of work is
  blocklisted: it gets no more work and its actors are stopped. Work it was running when
  it was stopped goes back to the queue without counting as an attempt.
- The set of actors may change while work runs (a job of the shared farm, whose actors
  the farm manager lends: scheduler/lease.py). `add` lends one more; `retire` asks one
  back: it gets no new work, and once its current piece is done `drained` hands it back.
  Such a pool has a `lease`, which it lets bring its changes in before every wait; with
  no actor at all, it waits for the lease instead of failing.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import ActorUnavailableError, RayError, RayTaskError

from farm.errors import ClusterError
from farm.states import Failure, Ledger
from farm.util import first_line
from scheduler.cluster import ACTOR_START_TIMEOUT_S

#: Pause before asking a restarting actor again whether it is back.
PROBE_INTERVAL_S = 0.2

#: How long one `ray.wait` blocks before stuck probes are looked at.
PROBE_WAIT_S = 5.0

#: An actor or node that fails this many different pieces of work is blocklisted.
BLOCKLIST_AFTER = 3

#: How long one wait lasts in a pool whose actors are lent (the lease's changes come in
#: between waits).
LEASE_POLL_S = 0.1


# -- policy: plain code ----------------------------------------------------------------------
@dataclass
class Slot:
    """One actor as the policy sees it."""

    actor: object
    name: str
    node: str
    in_flight: int = 0
    probing: bool = False  # lost; waiting for Ray to bring it back
    dead: bool = False  # could not be restarted
    blocked: bool = False
    retiring: bool = False  # lent by the farm and asked back: no new work

    @property
    def usable(self) -> bool:
        return not (self.probing or self.dead or self.blocked or self.retiring)


@dataclass
class Blocklist:
    """Counts the different pieces of work each actor and node failed; blocks at `threshold`."""

    threshold: int = BLOCKLIST_AFTER
    failed: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    blocked: dict[tuple[str, str], dict] = field(default_factory=dict)

    def record(self, actor: str, node: str, index: int, error: str) -> list[tuple[str, str]]:
        """Count a failure; return the (kind, id) pairs that this failure blocklists."""
        newly = []
        for who in (("actor", actor), ("node", node)):
            indices = self.failed.setdefault(who, set())
            indices.add(index)
            if len(indices) >= self.threshold and who not in self.blocked:
                self.blocked[who] = {"kind": who[0], "id": who[1], "failures": len(indices), "last_error": error}
                newly.append(who)
            elif who in self.blocked:
                self.blocked[who].update(failures=len(indices), last_error=error)
        return newly

    def report(self) -> list[dict]:
        return list(self.blocked.values())


class PoolPolicy:
    """Who gets work, and what a failure means. No Ray: the pool carries out its answers."""

    def __init__(self, slots: Sequence[Slot], per_actor: int = 2, blocklist_after: int = BLOCKLIST_AFTER):
        self.slots = list(slots)
        self.per_actor = per_actor
        self.blocklist = Blocklist(blocklist_after)
        self._avoid: dict[int, set[str]] = {}

    def pick(self, index: int) -> Slot | None:
        """The least busy usable actor with room; retried work avoids the actors it failed
        on while any other usable actor exists (waiting for it if it is busy)."""
        usable = [s for s in self.slots if s.usable]
        avoid = self._avoid.get(index, set())
        preferred = [s for s in usable if s.name not in avoid] or usable
        free = [s for s in preferred if s.in_flight < self.per_actor]
        return min(free, key=lambda s: s.in_flight) if free else None

    def any_usable(self) -> bool:
        return any(s.usable for s in self.slots)

    def failed(self, slot: Slot, index: int, error: str, *, lost: bool, final: bool) -> list[Slot]:
        """Record a failed attempt of `index` on `slot`. Returns the slots to stop now
        (newly blocklisted). A lost actor is probed instead of blamed; a final error is the
        work's own problem, not the actor's."""
        self._avoid.setdefault(index, set()).add(slot.name)
        if lost:
            slot.probing = not (slot.dead or slot.blocked)
            return []
        if final:
            return []
        stop = []
        for kind, who in self.blocklist.record(slot.name, slot.node, index, error):
            for s in self.slots:
                if (s.name if kind == "actor" else s.node) == who and not s.blocked:
                    s.blocked = True
                    stop.append(s)
        return stop

    def back(self, slot: Slot, node: str) -> bool:
        """A probed actor answered (possibly from another node). True: it came back on a
        blocklisted node and must be stopped."""
        slot.node, slot.probing = node, False
        if ("node", node) in self.blocklist.blocked:
            slot.blocked = True
            return True
        return False

    def no_actors_left(self, what: str) -> str:
        blocked = ", ".join(f"{b['kind']} {b['id'][:12]}" for b in self.blocklist.report()) or "none"
        dead = sum(s.dead for s in self.slots)
        return (f"no {what} actor is left to run the remaining work: {dead} could not be "
                f"restarted; blocklisted: {blocked}")


# -- mechanism: the Ray calls ----------------------------------------------------------------
@dataclass
class _Call:
    kind: str  # "work" or "probe"
    slot: Slot
    submitted: float
    index: int = -1
    payload: tuple = ()
    frames: object = None  # `apart`: the ref of the work's second return, its frames


class ActorPool:
    """Runs numbered pieces of work (`index`, `*payload`) as `actor.<method>.remote(*payload)`
    on a fixed set of actors. The caller decides what to submit and when; the pool retries
    failed work itself (retries first, in index order) and hands back results as they
    finish. With `apart`, the method returns (result, frames) and the pool fetches only
    the result, a dataclass whose `frames` it replaces with the frames' object ref."""

    def __init__(self, actors: Sequence[object], infos: Sequence[dict], ledger: Ledger, *, method: str,
                 what: str = "pipeline", per_actor: int = 2, blocklist_after: int = BLOCKLIST_AFTER,
                 apart: bool = False, extra_args: tuple = (), lease=None,
                 clock: Callable[[], float] = time.time,
                 on_failure: Callable[[int, str, bool], None] = lambda index, error, retrying: None):
        slots = [Slot(a, info["actor"], info["node"]) for a, info in zip(actors, infos)]
        self.extra_args = extra_args  # passed after the payload of every call
        self.lease = lease  # lends and asks back actors: `lease.sync(pool)` before every wait
        self.policy = PoolPolicy(slots, per_actor, blocklist_after)
        self.ledger = ledger
        self.method, self.what = method, what
        self.apart = apart  # the method returns (result, frames): results carry the frames' ref
        self.clock = clock
        self.on_failure = on_failure
        self._calls: dict[ray.ObjectRef, _Call] = {}
        self._retry: list[tuple[int, tuple]] = []  # heap of (index, payload) waiting for an actor

    @property
    def blocklist(self) -> Blocklist:
        return self.policy.blocklist

    # -- submitting ----------------------------------------------------------------------
    def submit(self, index: int, *payload) -> bool:
        """Start `index` on the actor the policy picks. False: no actor has room now (the
        work is not taken; ask again after `collect`)."""
        self._resubmit()
        if self._retry:
            return False  # retries go first
        return self._start(index, payload)

    def _start(self, index: int, payload: tuple) -> bool:
        slot = self.policy.pick(index)
        if slot is None:
            return False
        self.ledger.start(index)
        if self.apart:
            ref, frames = getattr(slot.actor, self.method).options(num_returns=2).remote(*payload, *self.extra_args)
        else:
            ref, frames = getattr(slot.actor, self.method).remote(*payload, *self.extra_args), None
        self._calls[ref] = _Call("work", slot, self.clock(), index, payload, frames)
        slot.in_flight += 1
        return True

    def _resubmit(self) -> None:
        while self._retry and self._start(*self._retry[0]):
            heapq.heappop(self._retry)

    # -- lent actors ---------------------------------------------------------------------
    def add(self, actor: object, info: dict) -> None:
        """One more actor (lent by the farm manager)."""
        self.policy.slots.append(Slot(actor, info["actor"], info["node"]))

    def retire(self, name: str) -> None:
        """Ask `name` back: it gets no new work; `drained` hands it back once idle."""
        for slot in self.policy.slots:
            if slot.name == name:
                slot.retiring = True

    def drained(self) -> list[str]:
        """Retired actors with no work left, now out of the pool."""
        probing = {c.slot.name for c in self._calls.values()}
        out = [s for s in self.policy.slots if s.retiring and s.in_flight == 0 and s.name not in probing]
        self.policy.slots = [s for s in self.policy.slots if s not in out]
        return [s.name for s in out]

    def lost(self) -> list[str]:
        """Actors that are gone for good: could not be restarted, or blocklisted (stopped)."""
        return [s.name for s in self.policy.slots if s.dead or s.blocked]

    def names(self) -> list[str]:
        return [s.name for s in self.policy.slots]

    def busy(self) -> bool:
        """Work is running or waiting to be retried."""
        return bool(self._retry) or any(c.kind == "work" for c in self._calls.values())

    # -- collecting ----------------------------------------------------------------------
    def collect(self, timeout: float | None = PROBE_WAIT_S, waiting: bool = False) -> tuple[int, object] | None:
        """Wait (at most `timeout`) for one call to finish. Returns (index, result) for
        finished work, None for anything else (a failure handled, a probe, nothing yet).
        `waiting`: the caller holds work that `submit` refused. Raises ClusterError when
        work is left and nothing is running that could ever free an actor for it (in a pool
        with a lease: waits a moment for the lease to lend one)."""
        if self.lease is not None:
            self.lease.sync(self)
            timeout = LEASE_POLL_S if timeout is None else min(timeout, LEASE_POLL_S)
        self._resubmit()
        if not self._calls:
            if self._retry or waiting:
                if self.lease is None:
                    raise ClusterError(self.policy.no_actors_left(self.what))
                time.sleep(LEASE_POLL_S)
            return None
        done, _ = ray.wait(list(self._calls), num_returns=1, timeout=timeout)
        if not done:
            self._give_up_on_stuck_probes()
            return None
        return self._handle(done[0])

    def poll(self) -> list[tuple[int, object]]:
        """Every piece of work that has finished by now, without waiting."""
        out = []
        while self._calls:
            done, _ = ray.wait(list(self._calls), num_returns=1, timeout=0)
            if not done:
                break
            got = self._handle(done[0])
            if got is not None:
                out.append(got)
        self._resubmit()
        return out

    def _handle(self, ref: ray.ObjectRef) -> tuple[int, object] | None:
        call = self._calls.pop(ref)
        if call.kind == "probe":
            self._probed(ref, call)
            return None
        return self._finished(ref, call)

    def _finished(self, ref: ray.ObjectRef, call: _Call) -> tuple[int, object] | None:
        slot, index = call.slot, call.index
        slot.in_flight -= 1
        try:
            result = ray.get(ref)
        except RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            self._failed(call, f"{self._raised()} {type(cause).__name__}: {cause}", lost=False,
                         final=not getattr(cause, "retryable", True))
            return None
        except RayError as err:  # ActorDied/Unavailable, NodeDied, lost objects
            if slot.blocked:  # we stopped this actor ourselves: the work is not to blame
                self.ledger.requeue(index)
                heapq.heappush(self._retry, (index, call.payload))
                return None
            self._failed(call, f"its actor was lost ({type(err).__name__}): {first_line(err)}", lost=True)
            return None
        self.ledger.done(index)
        if call.frames is not None:
            result = replace(result, frames=call.frames)  # the frames stay in the object store
        return index, result

    def _raised(self) -> str:
        return "the pipeline raised" if self.what == "pipeline" else f"the {self.what} actor raised"

    def _failed(self, call: _Call, error: str, *, lost: bool, final: bool = False) -> None:
        slot, index = call.slot, call.index
        failure = Failure(actor=slot.name, node=slot.node, error=error, lost=lost,
                          started_at=call.submitted, finished_at=self.clock())
        retrying = self.ledger.failed_attempt(index, failure, final=final)
        if retrying:
            heapq.heappush(self._retry, (index, call.payload))
        self.on_failure(index, error, retrying)
        was_probing = slot.probing
        for s in self.policy.failed(slot, index, error, lost=lost, final=final):
            ray.kill(s.actor, no_restart=True)
        if slot.probing and not was_probing:
            self._calls[slot.actor.info.remote()] = _Call("probe", slot, self.clock())

    def _probed(self, ref: ray.ObjectRef, call: _Call) -> None:
        slot = call.slot
        try:
            if self.policy.back(slot, ray.get(ref)["node"]):
                ray.kill(slot.actor, no_restart=True)  # restarted onto a blocklisted node
        except ActorUnavailableError:  # still restarting: ask again shortly (the probe keeps its start)
            if self.clock() - call.submitted > ACTOR_START_TIMEOUT_S:
                self._drop(slot)
                return
            time.sleep(PROBE_INTERVAL_S)
            self._calls[slot.actor.info.remote()] = _Call("probe", slot, call.submitted)
        except RayError:  # dead for good (restarts spent, or its model no longer loads)
            slot.dead = True

    def _give_up_on_stuck_probes(self) -> None:
        """An actor whose restart cannot be placed (its node type is gone) never answers:
        after ACTOR_START_TIMEOUT_S it is dropped, so the loop cannot wait on it forever."""
        now = self.clock()
        for ref, call in list(self._calls.items()):
            if call.kind == "probe" and now - call.submitted > ACTOR_START_TIMEOUT_S:
                del self._calls[ref]
                self._drop(call.slot)

    def _drop(self, slot: Slot) -> None:
        slot.dead = True
        ray.kill(slot.actor, no_restart=True)
