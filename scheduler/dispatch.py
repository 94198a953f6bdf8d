"""Windows to the pipeline actors: which window goes next, the store in front, and results
as they finish. The actors, retries, probes and blocklist are the pool's (scheduler/pool.py).

Bounds keep the driver small and the actors busy:
- the pool keeps at most `per_actor` windows queued on each actor;
- a window is only started (or read from the store) if it lies fewer than `lookahead`
  windows ahead of the first window the caller still needs (`limit()`), so finished but
  unconsumed windows cannot pile up in the driver when an early window is slow;
- with `chained` (a pipeline whose windows start from the window before), a window waits
  until the one before it is back, and a failed window ends the chain.

`may_start` is that policy as a pure function; `WindowDispatcher.run` is the loop.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence

from farm.states import Ledger, WindowState
from farm.tasks import WindowResult, WindowTask
from scheduler.pool import ActorPool

DONE_STATES = (WindowState.DONE, WindowState.CACHED)


def may_start(index: int, need_from: int, lookahead: int, chained: bool, ledger: Ledger) -> bool:
    """Whether window `index` may be started (or read from the store) now."""
    if index >= need_from + lookahead:
        return False  # too far ahead of what the caller still needs
    return not (chained and index > 0 and ledger.windows[index - 1].state not in DONE_STATES)


class WindowDispatcher:
    def __init__(self, pool: ActorPool, ledger: Ledger, *, lookahead: int | None = None, extra_lookahead: int = 0):
        self.pool = pool
        self.ledger = ledger
        slots = len(pool.policy.slots)
        self.lookahead = (lookahead if lookahead is not None else 2 * pool.policy.per_actor * max(1, slots)
                          ) + extra_lookahead

    def run(self, tasks: Sequence[WindowTask], limit: Callable[[], int] = lambda: 0,
            cached: Callable[[WindowTask], WindowResult | None] = lambda task: None,
            prepare: Callable[[WindowTask], WindowTask] = lambda task: task,
            chained: bool = False) -> Iterator[WindowResult]:
        """Yield each window's result as soon as it is back (completion order, not
        submission), or as soon as `cached(task)` finds it in the store.

        `limit()` returns the lowest window index the caller still needs. `prepare(task)`
        adds a window's inputs just before it is looked up or sent; it is asked again while
        the window waits, so it must be idempotent. Windows that fail for good are left
        FAILED in the ledger; the loop goes on with the others (or, when chained, stops:
        nothing after a failed window can run).
        """
        queue = [(t.window.index, t) for t in tasks]
        heapq.heapify(queue)
        pool = self.pool
        while queue or pool.busy():
            if chained and self.ledger.failed and not pool.busy():
                break  # nothing after a failed link of the chain can run
            yield from self._fill(queue, limit, cached, prepare, chained)
            if queue and not pool.busy():
                # The caller still needs a window beyond the lookahead (more windows cover a
                # frame than the lookahead allows, e.g. overlap > length/2): the bound gives way.
                yield from self._fill(queue, lambda: queue[0][0], cached, prepare, chained)
            if not queue and not pool.busy():
                break
            done = pool.collect(waiting=bool(queue) and not pool.busy())
            if done is not None:
                yield done[1]

    def _fill(self, queue: list, need_from: Callable[[], int], cached, prepare, chained: bool) -> Iterator[WindowResult]:
        while queue and may_start(queue[0][0], need_from(), self.lookahead, chained, self.ledger):
            index = queue[0][0]
            task = prepare(queue[0][1])
            hit = cached(task)
            if hit is not None:
                heapq.heappop(queue)
                self.ledger.cached(index)
                yield hit
                continue
            if not self.pool.submit(index, task):
                return
            heapq.heappop(queue)
