"""Bounded dispatch of windows to a pool of actors, with retries and a blocklist.

Bounds keep the driver small and the actors busy:
- at most `per_actor` windows are queued on each actor (one running, the rest waiting, so
  an actor never idles between windows);
- a window is only started (or read from the store) if it lies fewer than `lookahead`
  windows ahead of the first window the caller still needs (`limit()`), so finished but
  unconsumed windows cannot pile up in the driver when an early window is slow.

Failures, with Ray's semantics used on purpose (actor calls are at-most-once; Ray does not
resubmit them, we do):
- The pipeline raised (`RayTaskError`): the attempt failed; the window goes back to the
  queue, preferably to another actor. It counts against the actor and its node. An error
  that says retrying is pointless (`retryable = False`, e.g. a fallback ladder that ran
  out of steps) fails the window at once.
- The actor or node was lost (`ActorDiedError`, `ActorUnavailableError`, `NodeDiedError`):
  the window goes back to the queue. Ray restarts the actor (`max_restarts`), which re-runs
  `__init__` and reloads the pipeline; a probe call (`info()`) tells when it is back, and
  until then it gets no work. An actor that cannot be restarted is dropped.
- Each window has `retries` retries (1 + retries attempts). A window that spends them is
  FAILED; the others go on, so they reach the store, and the job fails at the end.
- An actor, or a node, that fails `blocklist_after` different windows of the job is
  blocklisted for the job: its actors get no more work and are stopped.

Every status change goes through `farm.states.Ledger`. Ray's exceptions are translated
into the farm's error tree here, at the edge.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorUnavailableError, RayError, RayTaskError

from farm.errors import ClusterError
from scheduler.cluster import ACTOR_START_TIMEOUT_S
from farm.render import WindowResult, WindowTask
from farm.states import Failure, Ledger, WindowState

DONE_STATES = (WindowState.DONE, WindowState.CACHED)

#: Pause before asking a restarting actor again whether it is back.
PROBE_INTERVAL_S = 0.2

#: How long one `ray.wait` blocks before stuck probes are looked at.
PROBE_WAIT_S = 5.0

#: An actor or node that fails this many different windows of one job is blocklisted.
BLOCKLIST_AFTER = 3


@dataclass
class _Slot:
    actor: object
    name: str
    node: str
    in_flight: int = 0
    probing: bool = False  # lost; waiting for Ray to bring it back
    dead: bool = False  # could not be restarted
    blocked: bool = False

    @property
    def usable(self) -> bool:
        return not (self.probing or self.dead or self.blocked)


@dataclass
class Blocklist:
    """Counts the different windows each actor and node failed; blocks at `threshold`."""

    threshold: int = BLOCKLIST_AFTER
    failed: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    blocked: dict[tuple[str, str], dict] = field(default_factory=dict)

    def record(self, actor: str, node: str, window: int, error: str) -> list[tuple[str, str]]:
        """Count a failure; return the (kind, id) pairs that this failure blocklists."""
        newly = []
        for who in (("actor", actor), ("node", node)):
            windows = self.failed.setdefault(who, set())
            windows.add(window)
            if len(windows) >= self.threshold and who not in self.blocked:
                self.blocked[who] = {"kind": who[0], "id": who[1], "failures": len(windows), "last_error": error}
                newly.append(who)
            elif who in self.blocked:
                self.blocked[who].update(failures=len(windows), last_error=error)
        return newly

    def report(self) -> list[dict]:
        return list(self.blocked.values())


class Dispatcher:
    def __init__(self, actors: Sequence[object], infos: Sequence[dict], ledger: Ledger, *,
                 per_actor: int = 2, lookahead: int | None = None, blocklist_after: int = BLOCKLIST_AFTER,
                 clock: Callable[[], float] = time.time,
                 on_failure: Callable[[int, str, bool], None] = lambda index, error, retrying: None):
        self.slots = [_Slot(a, info["actor"], info["node"]) for a, info in zip(actors, infos)]
        self.ledger = ledger
        self.per_actor = per_actor
        self.lookahead = lookahead if lookahead is not None else 2 * per_actor * max(1, len(actors))
        self.blocklist = Blocklist(blocklist_after)
        self.clock = clock
        self.on_failure = on_failure
        self._pending: dict[ray.ObjectRef, tuple[str, WindowTask | None, _Slot, float]] = {}
        self._avoid: dict[int, set[str]] = {}

    # -- the loop --------------------------------------------------------------------------
    def run(self, tasks: Sequence[WindowTask], limit: Callable[[], int] = lambda: 0,
            cached: Callable[[WindowTask], WindowResult | None] = lambda task: None,
            prepare: Callable[[WindowTask], WindowTask] = lambda task: task,
            chained: bool = False) -> Iterator[WindowResult]:
        """Yield each window's result as soon as it is back (completion order, not
        submission), or as soon as `cached(task)` finds it in the store.

        `limit()` returns the lowest window index the caller still needs; windows more than
        `lookahead` beyond it wait. `prepare(task)` adds a window's inputs just before it is
        looked up or sent; it is asked again while the window waits, so it must be idempotent. With `chained`, a window waits until the one
        before it is back (SVD: each window starts from the last frame of the one before).
        Windows that fail for good are left FAILED in the ledger; the loop goes on with the
        others (or, when chained, stops: nothing after a failed window can run).
        """
        self._prepare, self._chained = prepare, chained
        queue = [(t.window.index, t) for t in tasks]
        heapq.heapify(queue)
        while queue or self._windows_in_flight():
            if chained and self.ledger.failed and not self._windows_in_flight():
                break  # nothing after a failed link of the chain can run
            yield from self._fill(queue, limit, cached)
            if queue and not self._windows_in_flight():
                # The caller still needs a window beyond the lookahead (more windows cover a
                # frame than the lookahead allows, e.g. overlap > length/2): the bound gives way.
                yield from self._fill(queue, lambda: queue[0][0], cached)
            if not self._pending:
                if queue:
                    raise ClusterError(self._no_actors_left())
                break
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=PROBE_WAIT_S)
            if not done:
                self._give_up_on_stuck_probes()
                continue
            result = self._collect(done[0], queue)
            if result is not None:
                yield result

    def _windows_in_flight(self) -> bool:
        return any(kind == "window" for kind, *_ in self._pending.values())

    def _fill(self, queue: list, limit: Callable[[], int], cached) -> Iterator[WindowResult]:
        while queue and queue[0][0] < limit() + self.lookahead:
            index = queue[0][0]
            if self._chained and index > 0 and self.ledger.windows[index - 1].state not in DONE_STATES:
                return  # the window before is not back yet
            task = self._prepare(queue[0][1])
            if self.ledger.windows[index].attempts == 0:  # first time at the front: try the store
                hit = cached(task)
                if hit is not None:
                    heapq.heappop(queue)
                    self.ledger.cached(index)
                    yield hit
                    continue
            slot = self._pick(index)
            if slot is None:
                return
            heapq.heappop(queue)
            self.ledger.start(index)
            self._pending[slot.actor.render.remote(task)] = ("window", task, slot, self.clock())
            slot.in_flight += 1

    def _pick(self, index: int) -> _Slot | None:
        """The least busy usable actor with room; a retried window avoids the actors it
        failed on while any other usable actor exists (waiting for it if it is busy)."""
        usable = [s for s in self.slots if s.usable]
        avoid = self._avoid.get(index, set())
        preferred = [s for s in usable if s.name not in avoid] or usable
        free = [s for s in preferred if s.in_flight < self.per_actor]
        return min(free, key=lambda s: s.in_flight) if free else None

    # -- results and failures --------------------------------------------------------------
    def _give_up_on_stuck_probes(self) -> None:
        """An actor whose restart cannot be placed (its node type is gone) never answers:
        after ACTOR_START_TIMEOUT_S it is dropped, so the loop cannot wait on it forever."""
        now = self.clock()
        for ref, (kind, _, slot, started) in list(self._pending.items()):
            if kind == "probe" and now - started > ACTOR_START_TIMEOUT_S:
                del self._pending[ref]
                slot.dead = True
                ray.kill(slot.actor, no_restart=True)

    def _collect(self, ref: ray.ObjectRef, queue: list) -> WindowResult | None:
        kind, task, slot, submitted = self._pending.pop(ref)
        if kind == "probe":
            try:
                slot.node = ray.get(ref)["node"]  # back, possibly on another node
                slot.probing = False
                if ("node", slot.node) in self.blocklist.blocked:  # restarted onto a blocklisted node
                    slot.blocked = True
                    ray.kill(slot.actor, no_restart=True)
            except ActorUnavailableError:  # still restarting: ask again shortly (the probe keeps its start)
                if self.clock() - submitted > ACTOR_START_TIMEOUT_S:
                    slot.dead = True
                    ray.kill(slot.actor, no_restart=True)
                    return None
                time.sleep(PROBE_INTERVAL_S)
                self._pending[slot.actor.info.remote()] = ("probe", None, slot, submitted)
            except RayError:  # dead for good (restarts spent, or its pipeline no longer loads)
                slot.dead = True
            return None
        slot.in_flight -= 1
        index = task.window.index
        try:
            result = ray.get(ref)
        except RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            self._failed(task, slot, f"the pipeline raised {type(cause).__name__}: {cause}",
                         lost=False, submitted=submitted, queue=queue,
                         final=not getattr(cause, "retryable", True))
            return None
        except RayError as err:  # ActorDied/Unavailable, NodeDied, lost objects
            if slot.blocked:  # we stopped this actor ourselves: the window is not to blame
                self.ledger.requeue(index)
                heapq.heappush(queue, (index, task))
                return None
            self._failed(task, slot, f"its actor was lost ({type(err).__name__}): {_first_line(err)}",
                         lost=True, submitted=submitted, queue=queue)
            return None
        self.ledger.done(index)
        return result

    def _failed(self, task: WindowTask, slot: _Slot, error: str, *, lost: bool, submitted: float,
                queue: list, final: bool = False) -> None:
        index = task.window.index
        failure = Failure(actor=slot.name, node=slot.node, error=error, lost=lost,
                          started_at=submitted, finished_at=self.clock())
        retrying = self.ledger.failed_attempt(index, failure, final=final)
        if retrying:
            self._avoid.setdefault(index, set()).add(slot.name)
            heapq.heappush(queue, (index, task))
        self.on_failure(index, error, retrying)
        if lost:
            if not (slot.probing or slot.dead or slot.blocked):
                slot.probing = True
                self._pending[slot.actor.info.remote()] = ("probe", None, slot, self.clock())
            return
        if final:
            return  # the window's own problem (a fallback ladder ran out), not the actor's
        for kind, who in self.blocklist.record(slot.name, slot.node, index, error):
            for s in self.slots:
                if (s.name if kind == "actor" else s.node) == who and not s.blocked:
                    s.blocked = True
                    ray.kill(s.actor, no_restart=True)

    def _no_actors_left(self) -> str:
        blocked = ", ".join(f"{b['kind']} {b['id'][:12]}" for b in self.blocklist.report()) or "none"
        dead = sum(s.dead for s in self.slots)
        return (f"no pipeline actor is left to render the remaining windows: {dead} could not be "
                f"restarted; blocklisted: {blocked}")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
