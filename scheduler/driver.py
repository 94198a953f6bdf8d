"""The farm driver: one job, top to bottom, in the order the data flows.

    spec ─► plan ─► actors ─► dispatch ─► reconcile overlaps ─► encode ─► report

Rendering, blending and encoding overlap: each window is blended as soon as its
neighbours are back, and finished frames stream to ffmpeg in order, so the driver
holds only the windows around the front of the video, never the whole video.
"""

from __future__ import annotations

import time

from farm.blend import Reconciler
from farm.encode import VideoWriter
from farm.plan import plan_windows
from farm.render import WindowTask
from farm.report import report_path, versions, write_json_atomic
from farm.spec import JobSpec
from scheduler.cluster import connect, pool_shape, start_pipeline_actors, stop_actors
from scheduler.dispatch import Dispatcher
from scheduler.progress import NullProgress
from scheduler.timing import Stopwatch

PER_ACTOR_IN_FLIGHT = 2


def render(
    spec: JobSpec,
    *,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    progress: NullProgress | None = None,
) -> dict:
    """Render `spec` to `spec.output` and write its report. Returns the report."""
    progress = progress or NullProgress()
    t_start = time.perf_counter()
    stages: dict[str, float] = {}

    # 1. Validate the spec: it arrives validated; refuse anything else.
    if not isinstance(spec, JobSpec):
        raise TypeError("render() takes a validated JobSpec; use farm.spec.load_spec()")

    # 2. Plan the windows (pure).
    progress.stage("planning")
    t = time.perf_counter()
    plan = plan_windows(spec)
    tasks = [WindowTask.from_spec(spec, w) for w in plan.windows]
    stages["plan"] = time.perf_counter() - t

    # 3. Start the actors: join or start Ray, load one pipeline per actor.
    progress.stage("starting actors")
    t = time.perf_counter()
    session = connect(address, workers)
    actors = []
    try:
        workers, threads = pool_shape(session, workers, threads)
        actors, actor_infos = start_pipeline_actors(spec.model, session, workers, threads)
        stages["startup"] = time.perf_counter() - t

        # 4-6. Dispatch and collect; reconcile each overlap as soon as both sides are back;
        #      stream the finished prefix to the encoder.
        progress.stage("rendering")
        progress.windows_total(len(tasks))
        progress.frames_total(spec.frames)
        reconciler = Reconciler(plan.windows, spec.window.blend)
        dispatcher = Dispatcher(actors, per_actor=PER_ACTOR_IN_FLIGHT)
        records: dict[int, dict] = {}
        clock = Stopwatch()
        with VideoWriter(spec.output, spec.width, spec.height, spec.fps, spec.encode.crf, spec.encode.preset) as out:
            for result in dispatcher.run(tasks, limit=lambda: reconciler.first_unfinished_window):
                records[result.index] = _window_record(result, clock.elapsed())
                progress.window_done(result)
                reconciler.add(result.index, result.frames)
                for frame in clock.timed_iter("blend", reconciler.ready()):
                    with clock.lap("encode"):
                        out.write(frame)
                progress.frames_written(out.frames_written)
            stages["render"] = clock.elapsed()

            # 7. Encode: closing the stream lets ffmpeg finish; the file moves onto its name.
            progress.stage("encoding")
            clock.start("encode")
        clock.stop("encode")
        frames_out = out.frames_written
    finally:
        stop_actors(actors)
        session.close()
    stages["blend"] = clock.totals["blend"]
    stages["encode"] = clock.totals["encode"]
    stages["total"] = time.perf_counter() - t_start

    # 8. Write the report next to the video.
    report = {
        "output": spec.output,
        "frames": spec.frames,
        "output_frames": frames_out,
        "output_fps": spec.fps,
        "width": spec.width,
        "height": spec.height,
        "blend": spec.window.blend,
        "windows": [records[i] for i in sorted(records)],
        "stages": {k: round(v, 4) for k, v in stages.items()},
        "plan": plan.to_dict() | {"windows": len(plan.windows)},
        "actors": actor_infos,
        "workers": workers,
        "threads_per_actor": threads,
        "spec": spec.model_dump(mode="json"),
        "versions": versions(),
    }
    write_json_atomic(report_path(spec.output), report)
    progress.close()
    return report


def _window_record(result, finished_at: float) -> dict:
    return {
        "index": result.index,
        "start": result.start,
        "end": result.end,
        "attempts": 1,
        "node": result.node,
        "actor": result.actor,
        "device": result.device,
        "seconds": round(result.seconds, 4),
        "finished_at": round(finished_at, 4),
    }
