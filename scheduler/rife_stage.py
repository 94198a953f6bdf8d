"""The interpolation stage between the blend and the encoder.

Frames arrive in order from the reconciler (`push`). Every `chunk` pairs, the stage sends
the chunk's frames to the RIFE actors and keeps the chunk's last frame as the first of the
next one. Results come back in any order and leave in order (`ready`, `finish`), so the
encoder sees one ordered stream. Interpolation therefore starts on the finished prefix
while later windows are still rendering.

The RIFE actors are an `ActorPool` (scheduler/pool.py) like the pipeline actors: at most
`per_actor` chunks wait on each actor (beyond that `push` blocks on the oldest, which keeps
memory bounded), a chunk whose actor raised or was lost is retried on another actor, and a
chunk that fails every attempt fails the job (InterpolationError), as a window does.

`PassThrough` has the same interface and is used when the job does not interpolate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np

from farm.errors import ClusterError, InterpolationError
from farm.interpolate import Retiming, plan_chunks
from farm.states import Ledger
from scheduler.pool import ActorPool


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


def rife_pool(actors: Sequence, infos: Sequence[dict], retime: Retiming, chunk: int, retries: int,
              per_actor: int = 2) -> ActorPool:
    """An ActorPool of RIFE actors with a ledger over the chunks of `retime`."""
    ledger = Ledger(range(len(plan_chunks(retime, chunk))), retries=retries)
    return ActorPool(actors, infos, ledger, method="interpolate", what="RIFE", per_actor=per_actor)


class InterpolationStage:
    def __init__(self, pool: ActorPool, retime: Retiming, chunk: int, threshold: float,
                 declared_cuts: Sequence[int] = (), backend: str = "torch"):
        self.pool = pool
        self.retime = retime
        self.chunks = plan_chunks(retime, chunk)
        self.threshold = threshold
        self.declared = tuple(sorted(declared_cuts))
        self.backend = backend
        self._buffer: list[np.ndarray] = []
        self._next_submit = 0
        self._next_emit = 0
        self._done: dict[int, object] = {}
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
        frames = np.stack(self._buffer[: chunk.last - chunk.first + 1])
        declared = tuple(f for f in self.declared if chunk.first < f <= chunk.last)
        while not self.pool.submit(chunk.index, frames, chunk, self.retime.level, self.threshold, declared):
            self._collect(waiting=True)  # backpressure: wait for a chunk to come back
        if self.first_submit_at is None:
            self.first_submit_at = time.perf_counter()
        self._buffer = [self._buffer[chunk.last - chunk.first]]  # the shared frame starts the next chunk
        self._next_submit += 1

    # -- output --------------------------------------------------------------------------
    def _collect(self, waiting: bool = False) -> None:
        try:
            done = self.pool.collect(waiting=waiting)
        except ClusterError as err:  # every RIFE actor lost or blocklisted: say what they hit
            raise InterpolationError(f"{err}. {self._last_failure()}") from err
        self._keep(done)

    def _last_failure(self) -> str:
        failed = [(f.finished_at or 0.0, c.index, f.error) for c in self.pool.ledger.windows.values()
                  for f in c.failures]
        if not failed:
            return "No chunk had failed."
        _, index, error = max(failed)
        return f"The last chunk error (chunk {index}): {error}"

    def _keep(self, done: tuple[int, object] | None) -> None:
        failed = self.pool.ledger.failed
        if failed:
            c = self.chunks[failed[0].index]
            raise InterpolationError(
                f"interpolation of chunk {c.index} (input frames {c.first}–{c.last}) failed all "
                f"{failed[0].attempts} attempts; last error: {failed[0].last_error}")
        if done is not None:
            self._done[done[0]] = done[1]

    def ready(self) -> Iterator[np.ndarray]:
        for done in self.pool.poll():
            self._keep(done)
        self._keep(None)
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
            raise InterpolationError(
                f"interpolation got {self.frames_in} frames, expected {self.retime.frames_in}"
            )
        while self.pool.busy() or self._next_emit in self._done:
            yield from self.ready()
            if self.pool.busy():
                self._collect()
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
            "failed_attempts": sum(len(c.failures) for c in self.pool.ledger.windows.values()),
            "blocklist": self.pool.blocklist.report(),
        }
