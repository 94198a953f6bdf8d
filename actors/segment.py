"""The segment task: one segment of the video reconciled, metered, interpolated and encoded
wherever Ray places it (farm/segments.py does the work; scheduler/segments.py sends them).

Its frames arrive as the task's arguments: object refs of the windows (or decoded chunks)
the segment reads, which Ray fetches to this node straight from the actors that rendered
them. The RIFE model is loaded once per worker process and kept for its next segments.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import ray

from farm.encode import write_segment
from farm.segments import SegmentJob, SegmentOutput, run_segment


@dataclass(frozen=True)
class RifeSetup:
    """How a segment task builds its interpolation backend (farm.rife.backends)."""

    backend: str  # "torch" or "ncnn"
    weights: list | None = None  # [object ref of the torch weights' bytes], fetched only to load
    model_dir: str | None = None
    gpuid: int = 0

    @property
    def key(self) -> tuple:
        return self.backend, self.weights[0].hex() if self.weights else None, self.model_dir, self.gpuid


_BACKENDS: dict[tuple, object] = {}


def encode_segment(job: SegmentJob, rife: RifeSetup | None, *arrays) -> SegmentOutput:
    if job.crash:  # fault injection (model.faults.crash_segments): the worker process dies
        os._exit(17)
    backend = _backend(rife) if job.interpolation is not None else None
    out = run_segment(job, arrays, backend, write_segment)
    out.node = ray.get_runtime_context().get_node_id()
    return out


def _backend(rife: RifeSetup):
    if rife.key not in _BACKENDS:
        from farm.rife.backends import NcnnRife, TorchRife

        _BACKENDS.clear()  # one model per worker process
        _BACKENDS[rife.key] = (TorchRife(ray.get(rife.weights[0])) if rife.backend == "torch"
                               else NcnnRife(rife.model_dir, rife.gpuid))
    return _BACKENDS[rife.key]


def ready(hold: float = 0.3) -> int:
    """A no-op segment-shaped task: started before the render, it leaves a worker process
    with the segment code imported, so the first segments do not pay for starting one.
    It holds its worker a moment, so that several start side by side."""
    time.sleep(hold)
    return os.getpid()


def segment_task():
    return ray.remote(encode_segment)
