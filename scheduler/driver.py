"""The farm driver: one job, top to bottom, in the order the data flows.

    spec ─► plan ─► actors ─► dispatch ─► reconcile overlaps ─► interpolate ─► encode ─► report

Rendering, blending, interpolation and encoding overlap: each window is blended as soon as
its neighbours are back, finished frames go to the RIFE pool in chunks, and interpolated
frames stream to ffmpeg in order. The driver holds only the windows and chunks around the
front of the video, never the whole video.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from farm.blend import Reconciler
from farm.encode import VideoWriter, open_writer, probe
from farm.errors import ClusterError, SeamCheckFailed, WindowFatal
from farm.interpolate import retiming
from farm.metrics import FlickerMeter, flicker_report
from farm.plan import plan_windows
from farm.prompts import window_prompts
from farm.keys import model_identity, task_key
from farm.render import WindowResult, WindowTask
from farm.report import report_path, versions, write_json_atomic
from farm.report_html import html_report_path, write_html_report
from farm.rife import backends, weights
from farm.spec import InterpolateJob, JobSpec
from farm.states import JobState, Ledger, WindowState
from farm.storage import check_destination, is_uri, staged_output
from farm.store import NoStore, WindowStore
from scheduler.cluster import (
    connect,
    pool_shape,
    release_request,
    start_pipeline_actors,
    start_rife_actors,
    stop_actors,
    wants_gpus,
)
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
    store: str | Path | bool | None = None,
    actor_resources: dict | None = None,
    gpus_per_worker: float | None = None,
    check_seams: float | None = None,
    progress: NullProgress | None = None,
) -> dict:
    """Render `spec` to `spec.output` and write its report (json and html). Returns the report.

    Every finished window is kept in the window store (`store`, default under the farm
    cache; `False` turns it off) under a key of everything that determines its frames;
    windows already there are read back instead of rendered. A window that fails all its attempts fails the job
    (WindowFatal) after the other windows have been rendered and stored. With `check_seams`,
    a video whose worst seam jump ratio is above it raises SeamCheckFailed (after the video
    and report are written)."""
    progress = progress or NullProgress()
    clock = Stopwatch()
    stages: dict[str, float] = {}
    ip = spec.interpolate

    # 1. Validate: the spec arrives validated; check what lives outside it (weights, ncnn).
    if not isinstance(spec, JobSpec):
        raise TypeError("render() takes a validated JobSpec; use farm.spec.load_spec()")
    rife_bytes = _interpolation_inputs(ip, rife_weights)
    store = NoStore() if store is False else WindowStore(store)
    if is_uri(spec.output):
        check_destination(spec.output)  # the bucket exists and is ours, before any GPU time

    # 2. Plan the windows (pure).
    with clock.lap("plan"):
        plan = plan_windows(spec)
        tasks = [WindowTask.from_spec(spec, w) for w in plan.windows]
    ledger = Ledger([w.index for w in plan.windows], retries=spec.retries)
    chained = spec.model.pipeline == "svd"  # each SVD window starts from the last frame of the one before
    inputs = _WindowInputs(spec)

    # 3-8 write into `local_out`: the output itself, or a temp file uploaded to the bucket
    # (with its report) once the video is complete.
    with staged_output(spec.output) as local_out:
        # 3. Start the actors: join or start Ray; load one pipeline per actor, unless the store
        #    already holds every window; and the RIFE pool.
        progress.stage("starting actors")
        rife_cpus = ip.workers if ip else 0
        clock.start("startup")
        session = connect(address, cpus_wanted=(workers or 1) * (threads or 1) + rife_cpus)
        actors, actor_infos, rife_actors = [], [], []
        try:
            keys = _Keys(spec, "cuda" if wants_gpus(session, gpus_per_worker) else "cpu")
            workers, threads = pool_shape(session, workers, threads, reserved_cpus=rife_cpus,
                                          gpus_per_worker=gpus_per_worker)
            if chained:
                workers = 1  # a chain runs one window at a time: leave the other GPUs free
            if not _all_stored(store, keys, tasks, inputs):
                actors, actor_infos = start_pipeline_actors(
                    spec, session, workers, threads, share_gpu=bool(ip), resources=actor_resources,
                    gpus_per_worker=gpus_per_worker,
                    on_wait=lambda ready, total: progress.stage(f"starting actors: {ready}/{total} ready "
                                                                "(waiting for nodes or model loads)"))
                keys.use_devices(info["device"] for info in actor_infos)
            if ip:
                rife_actors, rife_infos = start_rife_actors(ip, rife_bytes, session)
                retime = retiming(spec.frames, spec.fps, fps=ip.fps, factor=ip.factor)
                stage = InterpolationStage(rife_actors, retime, ip.chunk, ip.scene_threshold, ip.cuts,
                                           backend=ip.backend)
            else:
                stage = PassThrough()
            clock.stop("startup")
            ledger.job(JobState.RUNNING)

            # 4-6. Dispatch and collect (or read from the store); store each window as soon as
            #      it is back; reconcile each overlap once both sides are in; feed the finished
            #      prefix to interpolation and its output to the encoder.
            progress.stage("rendering")
            progress.windows_total(len(tasks))
            progress.frames_total(retime.frames_out if ip else spec.frames)
            reconciler = Reconciler(plan.windows, spec.window.blend)
            meter = FlickerMeter()  # measured on the blended frames, where the seams are
            dispatcher = Dispatcher(actors, actor_infos, ledger, per_actor=PER_ACTOR_IN_FLIGHT,
                                    on_failure=progress.window_failed)
            records: dict[int, dict] = {}
            t_render, epoch0 = clock.elapsed(), time.time()
            job_name = Path(spec.output).name

            def from_store(task: WindowTask) -> WindowResult | None:
                with clock.lap("store"):
                    return _read_window(store, keys.get(task), task)

            def needed_from() -> int:  # once a window has failed, nothing more is encoded
                return reconciler.first_unfinished_window if not ledger.failed else len(tasks)

            with open_writer(local_out, spec.width, spec.height, spec.output_fps, spec.encode.crf,
                             spec.encode.preset, spec.encode.parallel, spec.encode.segment_frames) as out:

                def encode(frames) -> None:
                    for frame in frames:
                        with clock.lap("encode"):
                            out.write(frame)
                    progress.frames_written(out.frames_written)

                for result in dispatcher.run(tasks, limit=needed_from, cached=from_store, prepare=inputs.prepare,
                                             chained=chained):
                    inputs.finished(result.index, result.frames)
                    status = ledger.windows[result.index]
                    task = inputs.prepared(result.index)
                    if status.state is WindowState.CACHED:
                        key = keys.get(task)
                        progress.window_cached(result.index)
                    else:
                        key = keys.put(task, result.device)
                        if _storable(spec, result):
                            with clock.lap("store"):
                                store.put(key, result.frames, job=job_name, index=result.index, start=result.start,
                                          end=result.end, attempts=status.attempts, node=result.node,
                                          actor=result.actor, seconds=result.seconds)
                        progress.window_done(result)
                    records[result.index] = _window_record(result, status, task, key, epoch0,
                                                           clock.elapsed() - t_render)
                    records[result.index] |= inputs.describe(result.index)
                    if ledger.failed:
                        continue  # the job will fail: keep rendering into the store, stop encoding
                    reconciler.add(result.index, result.frames)
                    for frame in clock.timed_iter("blend", reconciler.ready()):
                        meter.add(frame)
                        stage.push(frame)
                    encode(stage.ready())
                stages["render"] = clock.elapsed() - t_render
                if ledger.failed:
                    ledger.job(JobState.FAILED)
                    _write_report(spec, local_out, plan, ledger, records, dispatcher, store, stages, clock,
                                  workers, threads, actor_infos)
                    raise _job_failed(ledger, store, spec.output)  # no partial video; an older one is kept

                # 7. Interpolate the tail and encode: closing the stream moves the file into place.
                progress.stage("finishing")
                encode(stage.finish())
                clock.start("encode")
            clock.stop("encode")
            frames_out = out.frames_written
            ledger.job(JobState.DONE)
        except ClusterError as err:  # the dispatcher ran out of actors: report what was done
            if ledger.state is JobState.RUNNING:
                stages["render"] = clock.elapsed() - t_render
                ledger.job(JobState.FAILED)
                _write_report(spec, local_out, plan, ledger, records, dispatcher, store, stages, clock, workers,
                              threads, actor_infos, extra={"error": str(err)})
            raise
        finally:
            stop_actors(actors + rife_actors)
            if wants_gpus(session, gpus_per_worker):
                release_request()
            session.close()

        # 8. Measure the flicker and the seams; write the report next to the video.
        extra = flicker_report(meter.curve, plan.windows)
        if ip:
            extra["interpolate"] = stage.summary() | {
                "actors": rife_infos,
                "first_chunk_at": round(stage.first_submit_at - clock.t0 - t_render, 4),
            }
        worst = max(extra["seams"], key=lambda seam: seam["jump_ratio"], default=None)
        if check_seams is not None:
            extra["seam_check"] = {"limit": check_seams, "passed": worst is None or worst["jump_ratio"] <= check_seams,
                                   "worst": worst}
        report = _write_report(spec, local_out, plan, ledger, records, dispatcher, store, stages, clock, workers,
                               threads, actor_infos, frames_out=frames_out, extra=extra)
    progress.close()
    if check_seams is not None and not report["seam_check"]["passed"]:
        raise SeamCheckFailed(worst["frame"], worst["jump_ratio"], check_seams)
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


class _WindowInputs:
    """Each window's own inputs, added just before it is looked up or sent: its control
    frames (ControlNet), or its conditioning frame (SVD: the spec's image for the first
    window, then the last frame of the window before). Holds only what is in flight."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self._tasks: dict[int, WindowTask] = {}
        self._last_frames: dict[int, np.ndarray] = {}

    def prepare(self, task: WindowTask) -> WindowTask:
        """The task with its inputs; asked again while it waits, it returns the same one."""
        spec, w = self.spec, task.window
        if w.index in self._tasks:
            return self._tasks[w.index]
        if spec.control is not None:
            from farm.control import read_control_frames

            task = replace(task, control=read_control_frames(spec.control.video, w.start, w.end,
                                                             spec.width, spec.height))
        if spec.svd is not None:
            image = self._last_frames.pop(w.index - 1) if w.index else _read_image(spec.svd.image)
            task = replace(task, image=image)
        self._tasks[w.index] = task
        return task

    def prepared(self, index: int) -> WindowTask:
        return self._tasks[index]

    def finished(self, index: int, frames: np.ndarray) -> None:
        if self.spec.svd is not None:
            self._last_frames[index] = frames[-1]

    def describe(self, index: int) -> dict:
        """What the report says about a window's inputs; the window's task is then dropped."""
        task = self._tasks.pop(index)
        if self.spec.svd is None:
            return {}
        if index == 0:
            return {"conditioned_on": {"image": self.spec.svd.image}}
        # chained windows share one frame: the last of the window before is this one's first
        return {"conditioned_on": {"window": index - 1, "frame": task.window.start}}


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


class _Keys:
    """Window keys for this job: the models' identity on the device class they run on."""

    def __init__(self, spec: JobSpec, device_kind: str):
        self.spec = spec
        self._ids: dict[str, dict] = {}
        self.kind = device_kind

    def _id(self, kind: str) -> dict:
        if kind not in self._ids:
            self._ids[kind] = model_identity(self.spec, kind)
        return self._ids[kind]

    def use_devices(self, devices) -> None:
        """Look windows up under the device class the actors really got (if they agree)."""
        kinds = {_device_kind(d) for d in devices}
        if len(kinds) == 1:
            self.kind = kinds.pop()

    def get(self, task: WindowTask) -> str:
        return task_key(self._id(self.kind), task)

    def put(self, task: WindowTask, device: str) -> str:
        return task_key(self._id(_device_kind(device)), task)


def _device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _all_stored(store: WindowStore, keys: _Keys, tasks: list[WindowTask], inputs: _WindowInputs) -> bool:
    """True if every window is in the store and passes its check (read one at a time).
    Windows with inputs (control frames, a chained frame) are prepared to find their keys;
    a scratch `_WindowInputs` keeps this from touching the job's own."""
    scratch = _WindowInputs(inputs.spec)
    for task in tasks:
        task = scratch.prepare(task)
        frames = store.get(keys.get(task))
        if frames is None:
            return False
        scratch.finished(task.window.index, frames)
        scratch.describe(task.window.index)
    return True


def _storable(spec: JobSpec, result: WindowResult) -> bool:
    """SVD's temporal VAE makes a window decoded in smaller chunks (the OOM fallback)
    differ slightly from the one its key promises: such a window is used, not kept."""
    return not (spec.model.pipeline == "svd" and any(step.startswith("oom") for step in result.fallbacks))


def _read_window(store: WindowStore, key: str, task: WindowTask) -> WindowResult | None:
    frames = store.get(key)
    if frames is None:
        return None
    entry = store.entry(key)
    w = task.window
    return WindowResult(index=w.index, start=w.start, end=w.end, frames=frames, seconds=0.0,
                        started=time.time(), node=entry.node if entry else "", actor=entry.actor if entry else "",
                        device="store")


def _job_failed(ledger: Ledger, store: WindowStore, output: str) -> WindowFatal:
    w = ledger.failed[0]
    kept = len(ledger.in_state(WindowState.DONE)) + len(ledger.in_state(WindowState.CACHED))
    return WindowFatal(
        w.index,
        f"failed all {w.attempts} attempts (1 + {ledger.retries} retries); last error: {w.last_error}. "
        f"The job FAILED; {kept} other windows are kept in the store at {store.root} "
        f"and will not be rendered again. Report: {output}.report.json",
    )


def _write_report(spec, local_out, plan, ledger, records, dispatcher, store, stages, clock, workers, threads,
                  actor_infos, frames_out: int = 0, extra: dict | None = None) -> dict:
    stages.update(plan=clock.totals["plan"], startup=clock.totals["startup"], blend=clock.totals["blend"],
                  encode=clock.totals["encode"], store=clock.totals["store"], total=clock.elapsed())
    for index, status in ledger.windows.items():  # windows that never came back
        records.setdefault(index, {"index": index, "state": status.state.value, "cached": False,
                                   "attempts": status.attempts, "failures": [f.to_dict() for f in status.failures]})
    cached = ledger.in_state(WindowState.CACHED)
    report = {
        "output": spec.output,
        "state": ledger.state.value,
        "frames": spec.frames,
        "output_frames": frames_out,
        "output_fps": spec.output_fps,
        "width": spec.width,
        "height": spec.height,
        "blend": spec.window.blend,
        "windows": [records[i] for i in sorted(records)],
        "windows_rendered": len(ledger.in_state(WindowState.DONE)),
        "windows_cached": len(cached),
        "store": {"path": str(store.root), "reused": cached, "corrupt_removed": list(store.corrupt)},
        "blocklist": dispatcher.blocklist.report(),
        "stages": {k: round(v, 4) for k, v in stages.items()},
        "plan": plan.to_dict() | {"windows": len(plan.windows)},
        "actors": actor_infos,
        "workers": workers,
        "threads_per_actor": threads,
        "spec": spec.model_dump(mode="json"),
        "versions": versions(),
    }
    if ledger.failed:
        w = ledger.failed[0]
        report["failed"] = {"window": w.index, "attempts": w.attempts, "error": w.last_error}
    report.update(extra or {})
    write_html_report(report, html_report_path(local_out))
    write_json_atomic(report_path(local_out), report)
    return report


def _window_record(result: WindowResult, status, task: WindowTask, key: str, epoch0: float,
                   finished_at: float) -> dict:
    cached = status.state is WindowState.CACHED
    return {
        "index": result.index,
        "start": result.start,
        "end": result.end,
        "state": status.state.value,
        "cached": cached,
        "key": key,
        "prompts": window_prompts(task.conditioning, task.window.start),
        "attempts": status.attempts,
        "failures": [f.to_dict() | {k: _rel(getattr(f, k), epoch0) for k in ("started_at", "finished_at")}
                     for f in status.failures],
        "node": result.node,
        "actor": result.actor,
        "device": result.device,
        "seconds": round(result.seconds, 4),
        "fallbacks": list(result.fallbacks),
        "started_at": None if cached else _rel(result.started, epoch0),
        "finished_at": round(finished_at, 4),
    }


def _rel(t: float | None, epoch0: float) -> float | None:
    return None if t is None else round(t - epoch0, 4)
