"""The farm driver: one job, top to bottom, in the order the data flows.

    spec ─► plan ─► actors ─► dispatch ─► reconcile overlaps ─► interpolate ─► encode ─► report

Rendering, blending, interpolation and encoding overlap: each window is blended as soon as
its neighbours are back, finished frames go to the RIFE pool in chunks, and interpolated
frames stream to ffmpeg in order. The driver holds only the windows and chunks around the
front of the video, never the whole video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from farm.blend import Reconciler
from farm.encode import VideoWriter, probe
from farm.interpolate import retiming
from farm.plan import plan_windows
from farm.render import WindowTask
from farm.report import report_path, versions, write_json_atomic
from farm.rife import backends, weights
from farm.spec import InterpolateJob, JobSpec
from scheduler.cluster import connect, pool_shape, start_pipeline_actors, start_rife_actors, stop_actors
from scheduler.dispatch import Dispatcher
from scheduler.interp import InterpolationStage, PassThrough
from scheduler.progress import NullProgress
from scheduler.timing import Stopwatch

PER_ACTOR_IN_FLIGHT = 2


def render(
    spec: JobSpec,
    *,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    rife_weights: str | None = None,
    progress: NullProgress | None = None,
) -> dict:
    """Render `spec` to `spec.output` and write its report. Returns the report."""
    progress = progress or NullProgress()
    clock = Stopwatch()
    stages: dict[str, float] = {}
    ip = spec.interpolate

    # 1. Validate: the spec arrives validated; check what lives outside it (weights, ncnn).
    if not isinstance(spec, JobSpec):
        raise TypeError("render() takes a validated JobSpec; use farm.spec.load_spec()")
    rife_bytes = _interpolation_inputs(ip, rife_weights)

    # 2. Plan the windows (pure).
    with clock.lap("plan"):
        plan = plan_windows(spec)
        tasks = [WindowTask.from_spec(spec, w) for w in plan.windows]

    # 3. Start the actors: join or start Ray, load one pipeline per actor, and the RIFE pool.
    progress.stage("starting actors")
    rife_cpus = ip.workers if ip else 0
    clock.start("startup")
    session = connect(address, cpus_wanted=(workers or 1) * (threads or 1) + rife_cpus)
    actors, rife_actors = [], []
    try:
        workers, threads = pool_shape(session, workers, threads, reserved_cpus=rife_cpus)
        actors, actor_infos = start_pipeline_actors(spec.model, session, workers, threads, share_gpu=bool(ip))
        if ip:
            rife_actors, rife_infos = start_rife_actors(ip, rife_bytes, session)
            retime = retiming(spec.frames, spec.fps, fps=ip.fps, factor=ip.factor)
            stage = InterpolationStage(rife_actors, retime, ip.chunk, ip.scene_threshold, ip.cuts,
                                       backend=ip.backend)
        else:
            stage = PassThrough()
        clock.stop("startup")

        # 4-6. Dispatch and collect; reconcile each overlap as soon as both sides are back;
        #      feed the finished prefix to interpolation and its output to the encoder.
        progress.stage("rendering")
        progress.windows_total(len(tasks))
        frames_total = retime.frames_out if ip else spec.frames
        progress.frames_total(frames_total)
        reconciler = Reconciler(plan.windows, spec.window.blend)
        dispatcher = Dispatcher(actors, per_actor=PER_ACTOR_IN_FLIGHT)
        records: dict[int, dict] = {}
        t_render = clock.elapsed()
        with VideoWriter(spec.output, spec.width, spec.height, spec.output_fps, spec.encode.crf,
                         spec.encode.preset) as out:

            def encode(frames) -> None:
                for frame in frames:
                    with clock.lap("encode"):
                        out.write(frame)
                progress.frames_written(out.frames_written)

            for result in dispatcher.run(tasks, limit=lambda: reconciler.first_unfinished_window):
                records[result.index] = _window_record(result, clock.elapsed() - t_render)
                progress.window_done(result)
                reconciler.add(result.index, result.frames)
                for frame in clock.timed_iter("blend", reconciler.ready()):
                    stage.push(frame)
                encode(stage.ready())
            stages["render"] = clock.elapsed() - t_render

            # 7. Interpolate the tail and encode: closing the stream moves the file into place.
            progress.stage("finishing")
            encode(stage.finish())
            clock.start("encode")
        clock.stop("encode")
        frames_out = out.frames_written
    finally:
        stop_actors(actors + rife_actors)
        session.close()
    stages.update(plan=clock.totals["plan"], startup=clock.totals["startup"],
                  blend=clock.totals["blend"], encode=clock.totals["encode"], total=clock.elapsed())

    # 8. Write the report next to the video.
    report = {
        "output": spec.output,
        "frames": spec.frames,
        "output_frames": frames_out,
        "output_fps": spec.output_fps,
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
    if ip:
        report["interpolate"] = stage.summary() | {
            "actors": rife_infos,
            "first_chunk_at": round(stage.first_submit_at - clock.t0 - t_render, 4),
        }
    write_json_atomic(report_path(spec.output), report)
    progress.close()
    return report


def interpolate_file(
    job: InterpolateJob,
    *,
    address: str | None = None,
    rife_weights: str | None = None,
    progress: NullProgress | None = None,
) -> dict:
    """`farm interpolate`: stream an existing video through the RIFE pool into a new mp4."""
    import imageio_ffmpeg

    progress = progress or NullProgress()
    clock = Stopwatch()
    ip = job.interpolate

    # 1. Validate: the job arrives validated; the input must decode; find the weights.
    source = probe(job.input)
    rife_bytes = _interpolation_inputs(ip, rife_weights)
    retime = retiming(source.frames, source.fps, fps=ip.fps, factor=ip.factor)

    # 2. Start the RIFE pool.
    progress.stage("starting actors")
    session = connect(address, cpus_wanted=ip.workers)
    rife_actors = []
    try:
        rife_actors, rife_infos = start_rife_actors(ip, rife_bytes, session)
        stage = InterpolationStage(rife_actors, retime, ip.chunk, ip.scene_threshold, ip.cuts, backend=ip.backend)

        # 3. Read, interpolate and encode, streaming.
        progress.stage("interpolating")
        progress.frames_total(retime.frames_out)
        reader = imageio_ffmpeg.read_frames(job.input, pix_fmt="rgb24")
        next(reader)  # metadata
        with VideoWriter(job.output, source.width, source.height, retime.fps_out) as out:
            for buf in reader:
                stage.push(np.frombuffer(buf, np.uint8).reshape(source.height, source.width, 3))
                for frame in stage.ready():
                    out.write(frame)
                progress.frames_written(out.frames_written)
            for frame in stage.finish():
                out.write(frame)
            progress.frames_written(out.frames_written)
    finally:
        stop_actors(rife_actors)
        session.close()

    # 4. Report.
    report = {
        "input": job.input,
        "output": job.output,
        "frames": source.frames,
        "output_frames": out.frames_written,
        "output_fps": retime.fps_out,
        "stages": {"total": round(clock.elapsed(), 4)},
        "interpolate": stage.summary() | {"actors": rife_infos},
        "versions": versions(),
    }
    write_json_atomic(report_path(job.output), report)
    progress.close()
    return report


def _interpolation_inputs(ip, rife_weights: str | None) -> bytes | None:
    """Find and check the interpolation model before Ray starts; the weights travel as bytes,
    so nodes need no shared disk."""
    if ip is None:
        return None
    backends.preflight(ip.backend, ip.model_dir)
    if ip.backend != "torch":
        return None
    return Path(weights.resolve(rife_weights or ip.weights)).read_bytes()


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
