"""A stopwatch for stages that interleave (blend and encode run inside the render loop)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.totals: defaultdict[str, float] = defaultdict(float)
        self._open: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def start(self, name: str) -> None:
        self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self.totals[name] += time.perf_counter() - self._open.pop(name)

    def stop_open(self) -> None:
        """Stop every stage still running (an error cut it short)."""
        for name in list(self._open):
            self.stop(name)

    @contextmanager
    def lap(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def timed_iter(self, name: str, items: Iterable) -> Iterator:
        """Yield from `items`, charging the time spent producing each item to `name`."""
        it = iter(items)
        while True:
            self.start(name)
            try:
                item = next(it)
            except StopIteration:
                self.stop(name)
                return
            self.stop(name)
            yield item
