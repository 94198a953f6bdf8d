"""The segment path (`encode.path: segments`): the driver sends each segment of the video
(farm/segments.py) to a Ray task (actors/segment.py) as soon as the frames it reads are in
the object store, and writes the encoded segments that come back next to the output; at the
end it joins them in order (farm.encode.SegmentFiles). It holds object refs and small
figures, never a frame.

- A segment is sent when every source it reads has arrived: the windows that cover its
  frames (crossfade), or decoded chunks covering them (latent). Its sources' refs are kept
  until it is done, so a segment task that dies can be sent again; then they are dropped
  and the object store frees the frames.
- A segment task that fails (its worker died, its node was lost, ffmpeg failed) is sent
  again, up to `retries` times; one that fails every attempt fails the job (EncodeError).
- A window's frames live on the node that rendered it until its segments are done. If
  that node is lost first, the segments that read it fail with lost inputs: the window is
  given back to the driver (`lost_windows`), which reads it from the store or renders it
  again, and the segments are sent again when it is back (that does not count against
  their retries).
- The window store lives on the driver's node: windows are written to it and read from it
  by small tasks pinned to this node (`store_put`, `store_get`), not by the driver.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import ObjectLostError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.segment import RifeSetup, ready, segment_task
from farm.color import color_distance
from farm.encode import SegmentFiles
from farm.errors import EncodeError
from farm.filmstrip import SeamStrip, ranked
from farm.segments import SegmentJob, SegmentOutput, Source, with_sources
from farm.store import WindowStore
from farm.util import first_line



#: How often, at most, the driver looks for finished segments while windows arrive.
POLL_EVERY_S = 1.0


class SegmentStage:
    """The driver's side of the segment path: `window` / `chunk` as frames arrive,
    `lost_windows` after the windows are dispatched, `finish` at the end; `curve`,
    `disagreement`, `strips`, `drift`, `interpolation` and `report` for the report."""

    def __init__(self, jobs: Sequence[SegmentJob], files: SegmentFiles, retries: int, *,
                 rife: RifeSetup | None = None, gpus: float = 0.0, crash: Sequence[int] = (),
                 on_done=lambda output: None, previews=None):
        self.jobs = list(jobs)
        self.files, self.retries, self.rife = files, retries, rife
        self.on_done = on_done
        self.previews = previews  # scheduler.lease.Previews: each segment's last frame, for the farm's web UI
        opts = {"num_cpus": 1, "max_retries": 0}  # the stage retries, counting attempts
        if gpus:
            opts["num_gpus"] = gpus
        self._task = segment_task().options(**opts)
        self._crash = set(crash)
        self._refs: dict[tuple, ray.ObjectRef] = {}  # source → its frames in the object store
        self._sources: list[Source] = []  # decoded chunks, in frame order (latent)
        self._arrived: set[int] = set()  # windows in the object store (crossfade)
        self._node: dict[int, str] = {}  # window → the node holding its frames
        self._lost: set[int] = set()  # windows whose frames were lost with their node
        self.windows_lost: set[int] = set()  # every window that ever was
        self._resend: list[tuple[SegmentJob, int]] = []  # segments waiting for lost windows
        self._covered = 0  # decoded frames [0, covered) are in the object store (latent)
        self._next = 0  # first segment not sent yet (they are sent in order)
        self._running: dict[ray.ObjectRef, tuple[SegmentJob, int]] = {}
        self.outputs: dict[int, SegmentOutput] = {}
        self.attempts: dict[int, list[str]] = {}
        self._polled = 0.0
        self.widest = max((len(job.sources) for job in self.jobs), default=0)  # windows one segment reads

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # the job failed: its segments are not wanted
            for ref in self._running:
                try:
                    ray.cancel(ref, force=True)
                except (RayError, ValueError):  # already finished
                    pass
        self.files.__exit__(exc_type, exc, tb)

    @property
    def frames_written(self) -> int:
        return self.files.frames_written

    # -- sources arrive --------------------------------------------------------------------
    def window(self, result) -> None:
        """A window is back; its frames (`result.frames`, a ref) stay in the object store,
        on the node that rendered it (or, read from the store, on this one)."""
        self._refs[("window", result.index)] = result.frames
        self._node[result.index] = _this_node() if result.device == "store" else result.node
        self._arrived.add(result.index)
        self._lost.discard(result.index)
        self._send_ready()

    def chunk(self, source: Source, ref: ray.ObjectRef) -> None:
        """A decoded chunk of a co-denoised job (they arrive in frame order)."""
        self._refs[_key(source)] = ref
        self._sources.append(source)
        self._covered = max(self._covered, source.end)
        self._send_ready()

    def first_needed_window(self) -> int:
        """The lowest window a segment not yet done reads (the dispatcher's look-ahead is
        counted from it, so windows cannot pile up in the object store)."""
        for job in self.jobs:
            if job.index not in self.outputs:
                return min((s.window for s in job.sources), default=0)
        return len(self._arrived)

    # -- segments go out ---------------------------------------------------------------------
    def _ready(self, job: SegmentJob) -> bool:
        if job.sources:
            return all(s.window in self._arrived for s in job.sources)
        return self._covered > job.last

    def _send_ready(self) -> None:
        while self._next < len(self.jobs) and self._ready(self.jobs[self._next]):
            job = self.jobs[self._next]
            if not job.sources:
                job = self.jobs[self._next] = with_sources(job, self._sources)
            self._send(job, attempt=0)
            self._next += 1
        for job, attempt in [r for r in self._resend if self._ready(r[0])]:
            self._resend.remove((job, attempt))
            self._send(job, attempt)
        if time.monotonic() - self._polled > POLL_EVERY_S:  # a look per window would cost a Ray call each
            self.poll()

    def _send(self, job: SegmentJob, attempt: int) -> None:
        refs = [self._refs[_key(s)] for s in job.sources]
        ref = self._task.remote(replace(job, crash=attempt == 0 and job.index in self._crash), self.rife, *refs)
        self._running[ref] = (job, attempt)

    # -- segments come back --------------------------------------------------------------------
    def poll(self, timeout: float = 0) -> None:
        """Take every segment that has finished (waiting up to `timeout` for one)."""
        self._polled = time.monotonic()
        while self._running:
            done, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
            if not done:
                return
            self._take(done[0])
            timeout = 0

    def _take(self, ref: ray.ObjectRef) -> None:
        job, attempt = self._running.pop(ref)
        try:
            output = ray.get(ref)
        except RayError as err:
            error = f"{type(err).__name__}: {first_line(err)}"
            self.attempts.setdefault(job.index, []).append(error)
            forgot = _lost_input(err) and self._forget_lost_windows()
            if forgot or any(s.window in self._lost for s in job.sources):
                self._resend.append((job, attempt))  # when its windows are back; not the segment's fault
                return
            if attempt >= self.retries:
                raise EncodeError(f"segment {job.index} (frames {job.start}–{job.end - 1}) failed all "
                                  f"{attempt + 1} attempts; last error: {error}") from err
            self._send(job, attempt + 1)  # its sources are still referenced
            return
        self.files.add(job.index, output.data, output.frames_out)
        output.data = b""
        if output.preview is not None and self.previews is not None:  # the farm's web UI
            self.previews.publish(*output.preview)
        output.preview = None
        self.outputs[job.index] = output
        self._release()
        self.on_done(output)

    def _forget_lost_windows(self) -> bool:
        """The windows a segment still reads whose node is gone: no longer there. True if
        there were any (the driver renders them again: `lost_windows`)."""
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        lost = [w for w in self._arrived if ("window", w) in self._refs and self._node.get(w) not in alive]
        for w in lost:
            self._arrived.discard(w)
            self._refs.pop(("window", w), None)
            self._lost.add(w)
        self.windows_lost.update(lost)
        return bool(lost)

    def lost_windows(self) -> list[int]:
        """Wait for the segments sent, then the windows whose frames were lost with their
        node and that a segment still needs: the driver reads or renders them again and
        gives them back through `window`."""
        while self._running:
            self.poll(timeout=None)
        wanted = {s.window for job in self.jobs if job.index not in self.outputs for s in job.sources}
        self._lost &= wanted  # a segment that had fetched them before the node died needs them no more
        return sorted(self._lost)

    def _release(self) -> None:
        """Drop the refs no segment still to finish reads: the object store frees them."""
        wanted = {_key(s) for job in self.jobs if job.index not in self.outputs for s in job.sources}
        if self._next < len(self.jobs):  # segments not sent yet read decoded chunks from their start
            start = self.jobs[self._next].start
            wanted |= {_key(s) for s in self._sources if s.end > start}
        self._sources = [s for s in self._sources if _key(s) in wanted]
        for key in [k for k in self._refs if k not in wanted]:
            del self._refs[key]

    def finish(self) -> None:
        """Wait for every segment; the files are joined when the writer closes."""
        self._send_ready()
        if self._resend:
            job = self._resend[0][0]
            raise EncodeError(f"segment {job.index} (frames {job.start}–{job.end - 1}) lost windows "
                              f"{sorted(self._lost)} with their node, and they did not come back")
        if self._next < len(self.jobs):
            job = self.jobs[self._next]
            raise EncodeError(f"segment {job.index} (frames {job.start}–{job.end - 1}) never had all its frames")
        while self._running:
            self.poll(timeout=None)

    # -- what the report needs -------------------------------------------------------------------
    def _in_order(self) -> list[SegmentOutput]:
        return [self.outputs[i] for i in sorted(self.outputs)]

    @property
    def curve(self) -> list[float]:
        return [d for out in self._in_order() for d in out.diffs]

    def disagreement(self) -> dict[int, float]:
        merged: dict[int, tuple[float, int]] = {}
        for out in self._in_order():
            for k, (total, n) in out.disagreement.items():
                t0, n0 = merged.get(k, (0.0, 0))
                merged[k] = (t0 + total, n0 + n)
        return {k: total / n for k, (total, n) in sorted(merged.items()) if n}

    def strips(self, windows) -> list[SeamStrip]:
        parts: dict[int, dict] = {}
        for out in self._in_order():
            for k, part in out.strips.items():
                into = parts.setdefault(k, {"blended": {}, "own": {}})
                into["blended"].update(part["blended"])
                for w, thumbs in part["own"].items():
                    into["own"].setdefault(w, {}).update(thumbs)
        return ranked(windows, parts, self.disagreement())

    def drift(self) -> dict[int, float]:
        first = next((out.first_lab for out in self._in_order() if out.first_lab is not None), None)
        if first is None:
            return {}
        labs = {w: lab for out in self._in_order() for w, lab in out.window_labs.items()}
        return {w: round(color_distance(np.asarray(lab), np.asarray(first)), 3) for w, lab in sorted(labs.items())}

    def interpolation(self, retime, backend: str) -> dict:
        """The report's `interpolate` block, as the RIFE actors' stage writes it."""
        outs = self._in_order()
        nodes: dict[str, int] = {}
        for out in outs:
            nodes[out.node] = nodes.get(out.node, 0) + 1
        return {"backend": backend, "fps_in": retime.fps_in, "fps_out": retime.fps_out,
                "factor": retime.fps_out / retime.fps_in, "grid_level": retime.level,
                "frames_in": sum(o.frames_in for o in outs), "frames_out": sum(o.frames_out for o in outs),
                "chunks": len(outs), "chunks_per_actor": nodes, "model_calls": sum(o.model_calls for o in outs),
                "cuts": sorted({c for o in outs for c in o.cuts}),
                "seconds": round(sum(o.interpolate_seconds for o in outs), 4),
                "failed_attempts": sum(len(a) for a in self.attempts.values()), "blocklist": [],
                "actors": [], "on": "segment tasks"}

    def report(self) -> dict:
        outs = self._in_order()
        return {
            "path": "segments",
            "count": len(self.jobs),
            "done": len(outs),
            "failed_attempts": sum(len(a) for a in self.attempts.values()),
            "windows_lost": sorted(self.windows_lost),  # frames lost with their node: read or rendered again
            "nodes": sorted({o.node for o in outs}),
            "seconds": round(sum(o.seconds for o in outs), 4),
            "segments": [{"index": o.index, "start": self.jobs[o.index].start, "end": self.jobs[o.index].end,
                          "frames_out": o.frames_out, "node": o.node, "seconds": round(o.seconds, 4),
                          "attempts": 1 + len(self.attempts.get(o.index, [])),
                          "failures": self.attempts.get(o.index, [])} for o in outs],
        }


#: Segment workers started before the render, at most (each is one CPU's worth of encoder),
#: and how long the driver waits for them (on a busy shared cluster they may never start).
WARM_WORKERS = 4
WARM_WAIT_S = 20.0


def warm_workers(free_cpus: int) -> list[ray.ObjectRef]:
    """Start up to WARM_WORKERS worker processes for the segment tasks while the actors load
    (Ray keeps idle workers and gives them the next tasks): the first segments then start
    at once, and the processes' start-up is not paid in the middle of the render. Returns
    the calls, for `warmed`."""
    task = _remote(ready).options(num_cpus=1)
    return [task.remote() for _ in range(max(0, min(WARM_WORKERS, free_cpus)))]


def warmed(calls: list[ray.ObjectRef]) -> int:
    """Wait (at most WARM_WAIT_S: on a busy shared cluster they may never start) for the
    workers `warm_workers` started; how many there are."""
    done, waiting = ray.wait(calls, num_returns=len(calls), timeout=WARM_WAIT_S)
    for ref in waiting:
        ray.cancel(ref)
    return len(set(ray.get(done)))


def _lost_input(err: Exception) -> bool:
    """The task failed because an object it reads is gone (its node was lost)."""
    return isinstance(err, ObjectLostError) or isinstance(getattr(err, "cause", None), ObjectLostError)


def _this_node() -> str:
    return ray.get_runtime_context().get_node_id()


def _key(source: Source) -> tuple:
    return ("window", source.window) if source.window is not None else ("chunk", source.start)


# -- the window store, on the driver's node ------------------------------------------------------
def _here() -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(_this_node(), soft=False)


def _put(root: str, key: str, frames: np.ndarray, meta: dict) -> None:
    WindowStore(root).put(key, frames, **meta)


def _get(root: str, key: str):
    frames = WindowStore(root).get(key)
    return (frames is not None), frames


@functools.cache
def _remote(fn):
    return ray.remote(fn)


def store_put(root: str | Path, key: str, frames_ref: ray.ObjectRef, **meta) -> ray.ObjectRef:
    """Write a window into the store from the object store, on this node, in a task."""
    return _remote(_put).options(num_cpus=0, scheduling_strategy=_here()).remote(str(root), key, frames_ref, meta)


def store_get(root: str | Path, key: str) -> ray.ObjectRef | None:
    """A stored window's frames into the object store (a task on this node reads and checks
    them); None if it is absent or failed its check (then it is removed)."""
    found, frames = _remote(_get).options(num_cpus=0, num_returns=2, scheduling_strategy=_here()).remote(
        str(root), key)
    return frames if ray.get(found) else None
