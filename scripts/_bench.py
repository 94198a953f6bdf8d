"""Helpers the benchmark scripts share (they run as `python scripts/bench_*.py`, so this
folder is on sys.path)."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name, for the machine line every benchmark prints."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Periodic:
    """A background thread that calls `tick()` every `period` s inside a `with` block, and
    once more as the block ends. Subclasses say what a tick samples."""

    def __init__(self, period: float):
        import threading

        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.tick()

