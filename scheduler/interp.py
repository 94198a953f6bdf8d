"""The interpolation stage between the blend and the encoder.

Frames arrive in order from the reconciler (`push`). Every `chunk` pairs, the stage sends
the chunk's frames to the RIFE pool and keeps the chunk's last frame as the first of the
next one. Results come back in any order and leave in order (`ready`, `finish`), so the
encoder sees one ordered stream. Interpolation therefore starts on the finished prefix
while later windows are still rendering. At most `per_actor` chunks wait on each actor;
beyond that `push` blocks on the oldest chunk, which keeps memory bounded.

`PassThrough` has the same interface and is used when the job does not interpolate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
import ray

from farm.errors import FarmError
from farm.interpolate import Retiming, plan_chunks


class PassThrough:
    def __init__(self):
        self._out: list[np.ndarray] = []

    def push(self, frame: np.ndarray) -> None:
        self._out.append(frame)

    def ready(self) -> Iterator[np.ndarray]:
        out, self._out = self._out, []
        yield from out

    def finish(self) -> Iterator[np.ndarray]:
        yield from self.ready()

    def summary(self) -> dict | None:
        return None


class InterpolationStage:
    def __init__(self, actors: Sequence, retime: Retiming, chunk: int, threshold: float,
                 declared_cuts: Sequence[int] = (), per_actor: int = 2, backend: str = "torch"):
        self.actors = list(actors)
        self.retime = retime
        self.chunks = plan_chunks(retime, chunk)
        self.threshold = threshold
        self.declared = tuple(sorted(declared_cuts))
        self.limit = per_actor * len(self.actors)
        self.backend = backend
        self._buffer: list[np.ndarray] = []
        self._next_submit = 0
        self._next_emit = 0
        self._pending: dict[ray.ObjectRef, tuple[int, int]] = {}  # ref → (chunk, actor slot)
        self._done: dict[int, object] = {}
        self._load = [0] * len(self.actors)
        self.cuts: list[int] = []
        self.frames_in = 0
        self.frames_out = 0
        self.model_calls = 0
        self.actor_seconds = 0.0
        self.first_submit_at: float | None = None
        self.chunks_per_actor: dict[str, int] = {}

    # -- input ---------------------------------------------------------------------------
    def push(self, frame: np.ndarray) -> None:
        self._buffer.append(frame)
        self.frames_in += 1
        c = self.chunks[self._next_submit] if self._next_submit < len(self.chunks) else None
        if c is not None and self.frames_in - 1 == c.last:
            self._submit(c)

    def _submit(self, chunk) -> None:
        while len(self._pending) >= self.limit:  # backpressure: wait for the oldest chunk
            self._collect(block=True)
        frames = np.stack(self._buffer[: chunk.last - chunk.first + 1])
        a = min(range(len(self.actors)), key=lambda i: self._load[i])
        declared = tuple(f for f in self.declared if chunk.first < f <= chunk.last)
        ref = self.actors[a].interpolate.remote(frames, chunk, self.retime.level, self.threshold, declared)
        self._pending[ref] = (chunk.index, a)
        self._load[a] += 1
        if self.first_submit_at is None:
            self.first_submit_at = time.perf_counter()
        self._buffer = [self._buffer[chunk.last - chunk.first]]  # the shared frame starts the next chunk
        self._next_submit += 1

    # -- output --------------------------------------------------------------------------
    def _collect(self, block: bool) -> None:
        if not self._pending:
            return
        done, _ = ray.wait(list(self._pending), num_returns=1, timeout=None if block else 0)
        for ref in done:
            index, a = self._pending.pop(ref)
            self._load[a] -= 1
            try:
                self._done[index] = ray.get(ref)
            except ray.exceptions.RayError as err:
                raise FarmError(f"interpolation of chunk {index} failed: {err}") from err

    def ready(self) -> Iterator[np.ndarray]:
        while self._pending:
            before = len(self._pending)
            self._collect(block=False)
            if len(self._pending) == before:
                break
        while self._next_emit in self._done:
            out = self._done.pop(self._next_emit)
            self.cuts.extend(out.cuts)
            self.model_calls += out.midpoints
            self.actor_seconds += out.seconds
            self.chunks_per_actor[out.actor] = self.chunks_per_actor.get(out.actor, 0) + 1
            self._next_emit += 1
            self.frames_out += len(out.frames)
            yield from out.frames

    def finish(self) -> Iterator[np.ndarray]:
        if self._next_submit != len(self.chunks):
            raise FarmError(
                f"interpolation got {self.frames_in} frames, expected {self.retime.frames_in}"
            )
        while self._pending or self._next_emit in self._done:
            yield from self.ready()
            self._collect(block=True)
        yield from self.ready()

    def summary(self) -> dict:
        r = self.retime
        return {
            "backend": self.backend,
            "fps_in": r.fps_in,
            "fps_out": r.fps_out,
            "factor": r.fps_out / r.fps_in,
            "grid_level": r.level,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "chunks": len(self.chunks),
            "chunks_per_actor": self.chunks_per_actor,
            "model_calls": self.model_calls,
            "cuts": sorted(set(self.cuts)),
            "seconds": round(self.actor_seconds, 4),
        }
