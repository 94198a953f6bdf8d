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
