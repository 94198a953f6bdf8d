"""RifeActor: a Ray actor holding one loaded interpolation backend; interpolates chunks."""

from __future__ import annotations

import os
import time

import numpy as np
import ray

from farm.interpolate import Chunk, ChunkOutput, interpolate_chunk
from farm.rife.backends import NcnnRife, TorchRife


class RifeActor:
    def __init__(self, backend: str, weights: bytes | None = None, model_dir: str | None = None,
                 gpuid: int = 0, threads: int | None = None, fail_chunks: tuple[int, ...] = ()):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.backend = TorchRife(weights) if backend == "torch" else NcnnRife(model_dir, gpuid)
        self.actor = ray.get_runtime_context().get_actor_id() or "local"
        self.fail_chunks = tuple(fail_chunks)  # fault injection (model.faults.fail_chunks)

    def info(self) -> dict:
        return {"actor": self.actor, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "backend": self.backend.name, "device": self.backend.device}

    def interpolate(self, frames: np.ndarray, chunk: Chunk, level: int, threshold: float,
                    declared_cuts: tuple[int, ...] = ()) -> ChunkOutput:
        if chunk.index in self.fail_chunks:
            from farm.faults import InjectedFault

            raise InjectedFault(f"injected: chunk {chunk.index} always fails")
        t0 = time.perf_counter()
        out = interpolate_chunk(self.backend, frames, chunk, level, threshold, declared_cuts)
        out.seconds = time.perf_counter() - t0
        out.actor = self.actor
        return out


def rife_actor_class():
    return ray.remote(RifeActor)
