"""Bounded dispatch of windows to a pool of actors, collected with `ray.wait` as they finish.

Two bounds keep the driver small and the actors busy:
- at most `per_actor` windows are queued on each actor (one running, the rest waiting, so
  an actor never idles between windows);
- a window is only submitted if it lies fewer than `lookahead` windows ahead of the first
  window the caller still needs (`limit()`), so finished-but-unconsumed windows cannot pile
  up in the driver when an early window is slow.

Ray's exceptions are translated into the farm's error tree here, at the edge.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, NodeDiedError, RayTaskError

from farm.errors import WindowFatal, WindowRetryable
from farm.render import WindowResult, WindowTask


@dataclass
class _Slot:
    actor: object
    name: str
    in_flight: int = 0


class Dispatcher:
    def __init__(self, actors: Sequence[object], per_actor: int = 2, lookahead: int | None = None):
        if not actors:
            raise ValueError("no actors to dispatch to")
        self.slots = [_Slot(a, f"actor-{i}") for i, a in enumerate(actors)]
        self.per_actor = per_actor
        self.lookahead = lookahead if lookahead is not None else 2 * per_actor * len(actors)

    def run(self, tasks: Sequence[WindowTask], limit: Callable[[], int] = lambda: 0) -> Iterator[WindowResult]:
        """Yield each window's result as soon as it is back (completion order, not submission).

        `limit()` returns the lowest window index the caller still needs; windows more than
        `lookahead` beyond it wait.
        """
        queue = deque(sorted(tasks, key=lambda t: t.window.index))
        pending: dict[ray.ObjectRef, tuple[WindowTask, _Slot]] = {}
        while queue or pending:
            self._fill(queue, pending, limit())
            if not pending:
                # The caller still needs a window beyond the lookahead (more windows cover a
                # frame than the lookahead allows, e.g. overlap > length/2): the bound gives way.
                self._fill(queue, pending, queue[0].window.index)
            done, _ = ray.wait(list(pending), num_returns=1)
            task, slot = pending.pop(done[0])
            slot.in_flight -= 1
            yield self._result(done[0], task)

    def _fill(self, queue: deque, pending: dict, needed_from: int) -> None:
        while queue and queue[0].window.index < needed_from + self.lookahead:
            slot = min(self.slots, key=lambda s: s.in_flight)
            if slot.in_flight >= self.per_actor:
                return
            task = queue.popleft()
            pending[slot.actor.render.remote(task)] = (task, slot)
            slot.in_flight += 1

    @staticmethod
    def _result(ref: ray.ObjectRef, task: WindowTask) -> WindowResult:
        index = task.window.index
        try:
            return ray.get(ref)
        except (ActorDiedError, ActorUnavailableError, NodeDiedError) as err:
            raise WindowRetryable(index, f"its actor was lost ({type(err).__name__}): {err}") from err
        except RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            raise WindowFatal(index, f"the pipeline raised {type(cause).__name__}: {cause}") from err
