"""The farm driver: one job, top to bottom, in the order the data flows.

    spec ─► plan ─► actors ─► dispatch ─► reconcile overlaps ─► splice shots ─► interpolate
        ─► encode ─► report

`RenderJob.run` is the whole flow on one screen; each numbered step is one method, and the
job's state lives on the object. Rendering, blending, interpolation and encoding overlap:
each window is blended as soon as its neighbours are back, finished frames go to the RIFE
actors in chunks, and interpolated frames stream to ffmpeg in order. The driver holds only
the windows and chunks around the front of the video, never the whole video.

Steps 4-5 come in two kinds (`window.reconcile`): `crossfade` renders each window on its
own and blends the decoded overlaps; `latent` denoises all windows together on the actors
(scheduler/codenoise.py), fusing the overlaps at every step, and the actors decode the
frames, final and in order.

A film of shots (`shots:`, farm/shots.py) is planned as runs of fused shots, each a job of
its own in its own frames: in crossfade mode all runs' windows are dispatched together;
in latent mode the runs are co-denoised one after another on the same actors, each under
its own key. Between reconciling and interpolating, the runs are spliced into the video:
cuts, dissolves, and the frames a video VAE rendered past a shot's end dropped.

Steps 5-7 run in one of two places (`encode.path`): here, in the driver (`_InDriver`), or
on the cluster, where segment tasks reconcile, meter, interpolate and encode consecutive
segments of the video from the frames in the object store, and the driver only joins the
encoded segments (scheduler/segments.py): it never touches a frame.

Step 3 gets the pipeline actors in one of two ways: the job starts its own (private
actors, stopped at its end), or, on a cluster with a farm manager (scheduler/manager.py),
the manager lends it warm actors from the farm's pool, by priority, and may ask some back
at a window boundary for a job of higher priority (scheduler/lease.py); the pool loop
takes those changes in as it goes.

What is specific to a pipeline (chained windows, per-window inputs, what may be stored)
comes from its descriptor (farm/pipelines/); the driver never asks for a pipeline's name.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import ray

from actors.segment import RifeSetup
from farm.blend import Reconciler
from farm.codenoise import LatentJob, checkpoint_steps, fuse_weights
from farm.color import DriftMeter
from farm.encode import SegmentFiles, VideoWriter, open_writer
from farm.errors import ClusterError, FarmError, SeamCheckFailed, WindowFatal
from farm.filmstrip import Filmstrips, Storyboard
from farm.interpolate import retiming
from farm.farmqueue import DEFAULT_PRIORITY
from farm.keys import (latent_job_key, local_job_key, local_rerender, model_identity, pipeline_key, task_key,
                       why_rendered_again)
from farm.metrics import FlickerMeter, flicker_report
from farm.models.sources import check_sources
from farm.outputs import check_destination, is_uri, staged_output
from farm.pipelines import descriptor
from farm.prompts import window_prompts
from farm.report import Report, cache_summary, report_path, versions
from farm.segments import Encoding, Interpolation, choose_path, plan_latent_segments, plan_segments
from farm.shots import compile_film, merge_latent_reports, run_label, shot_span, shot_table
from farm.rife import backends, weights
from farm.spec import InterpolateJob, JobSpec
from farm.states import JobState, Ledger, WindowState
from farm.store import NoStore, WindowStore
from farm.tasks import WindowResult, WindowTask
from farm.util import write_json_atomic
from farm.video import iter_frames, probe
from scheduler.cluster import (
    connect,
    RIFE_GPU_SHARE,
    pool_shape,
    release_request,
    start_pipeline_actors,
    start_rife_actors,
    stop_actors,
    wants_gpus,
)
from scheduler.codenoise import CoDenoiser, rerender_locally
from scheduler.dispatch import WindowDispatcher
from scheduler.jobs import submitted_by
from scheduler.lease import Lease
from scheduler.manager import default_config, find_manager, start_manager
from scheduler.pool import ActorPool
from scheduler.progress import NullProgress
from scheduler.rife_stage import InterpolationStage, PassThrough, rife_pool
from scheduler.segments import SegmentStage, store_get, store_put, warm_workers, warmed
from scheduler.timing import Stopwatch

PER_ACTOR_IN_FLIGHT = 2
#: A co-denoised job waits this long after its first actor is ready for the others, then
#: starts on those that are; its frames do not depend on how many.
LATENT_PLACEMENT_S = float(os.environ.get("FARM_LATENT_PLACEMENT_S", "120"))


def render(spec: JobSpec, **options) -> Report:
    """Render `spec` to `spec.output` and write its report (json and html). Returns the
    report. The options are `RenderJob`'s."""
    return RenderJob(spec, **options).run()


class RenderJob:
    """One render job. Every finished window is kept in the window store (`store`, default
    under the farm cache; `False` turns it off) under a key of everything that determines
    its frames; windows already there are read back instead of rendered. A window that
    fails all its attempts fails the job (WindowFatal) after the other windows have been
    rendered and stored. With `check_seams`, a video whose worst seam jump ratio is above
    it raises SeamCheckFailed (after the video and report are written). Any FarmError
    after planning ends the job FAILED, with a report that says what was done."""

    def __init__(self, spec: JobSpec, *, address: str | None = None, workers: int | None = None,
                 threads: int | None = None, rife_weights: str | None = None, store: str | Path | bool | None = None,
                 actor_resources: dict | None = None, gpus_per_worker: float | None = None,
                 check_seams: float | None = None, progress: NullProgress | None = None,
                 farm: bool | None = None, priority: int | None = None, job_id: str | None = None):
        if not isinstance(spec, JobSpec):
            raise TypeError("render() takes a validated JobSpec; use farm.spec.load_spec()")
        self.spec, self.pipeline = spec, descriptor(spec.model.pipeline)
        self.latent = spec.window.reconcile == "latent"
        self.address, self.workers, self.threads = address, workers, threads
        self.rife_weights, self.actor_resources = rife_weights, actor_resources
        self.gpus_per_worker, self.check_seams = gpus_per_worker, check_seams
        self.store = NoStore() if store is False else WindowStore(store)
        self.progress = progress or NullProgress()
        self.clock = Stopwatch()
        self.stages: dict[str, float] = {}
        self.records: dict[int, dict] = {}
        # the shared farm: None uses a manager if the cluster joined has one; True starts one
        # if needed (a submitted job); False keeps private actors
        self.farm, self.priority = farm, DEFAULT_PRIORITY if priority is None else priority
        self.job_id = job_id or f"farm-{Path(spec.output).stem}-{os.urandom(4).hex()}"
        self.lease: Lease | None = None
        self.private_why: str | None = None  # a farm job that had to start its own actors
        self.interrupted = False
        self.session = self.pool = self.stream = self.interp = None
        self.latent_runs: list[dict] = []  # per run of shots: its CoDenoiser, key, from_store, why rendered again
        self.actors, self.actor_infos, self.rife_actors, self.rife_infos = [], [], [], []
        self.t_render: float | None = None
        self.frames_out = 0
        self.store_writes: list = []  # the segment path's store writes, running on this node

    def run(self) -> Report:
        # 1. Validate what lives outside the spec (RIFE weights, ncnn, the bucket, staged models).
        self.validate()
        # 2. Plan the windows (pure).
        self.plan_windows()
        # 3-8 write into `local_out`: the output itself, or a temp file uploaded to the
        #     bucket (with its report) once the video is complete.
        with staged_output(self.spec.output) as self.local_out:
            try:
                # 3. Start the actors: pipelines (unless the store holds every window) and RIFE.
                self.start_actors()
                # 4-7. Dispatch and collect; reconcile the overlaps; interpolate; encode.
                self.render_and_encode()
            except FarmError as err:  # the one failure path: the report says what was done
                self.write_failure_report(err)
                raise
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from `farm stop` on the shared farm
                self.interrupted = True
                raise
            finally:
                self.stop_actors()
            # 8. Measure the flicker and the seams; write the report next to the video.
            report = self.write_report()
        self.progress.close()
        if report.seam_check is not None and not report.seam_check["passed"]:
            worst = report.seam_check["worst"]
            raise SeamCheckFailed(worst["frame"], worst["jump_ratio"], self.check_seams)
        return report

    # 1. ------------------------------------------------------------------------------------
    def validate(self) -> None:
        self.rife_bytes = _interpolation_inputs(self.spec.interpolate, self.rife_weights)
        if is_uri(self.spec.output):
            check_destination(self.spec.output)  # the bucket exists and is ours, before any GPU time
        check_sources(self.spec)  # staged models: credentials and a manifest, before any actor starts

    # 2. ------------------------------------------------------------------------------------
    def plan_windows(self) -> None:
        with self.clock.lap("plan"):
            self.film = compile_film(self.spec)  # one run, unless the job is a film of shots
            self.plan = self.film.plan
            self.tasks = self.film.tasks()
        self.ledger = Ledger([w.index for w in self.plan.windows], retries=self.spec.retries)
        self.inputs = _WindowInputs(self.film)
        self.path = choose_path(self.spec, len(self.plan.windows))  # `auto` may still become `driver` (step 3)
        self.segmented = self.path == "segments"
        ip = self.spec.interpolate
        self.retime = retiming(self.spec.frames, self.spec.fps, fps=ip.fps, factor=ip.factor) if ip else None

    # 3. ------------------------------------------------------------------------------------
    def start_actors(self) -> None:
        spec, ip, progress = self.spec, self.spec.interpolate, self.progress
        progress.stage("starting actors")
        self.clock.start("startup")
        segments = self.path != "driver"  # a CPU for the segment tasks, if it may come to that
        rife_cpus = ip.workers if ip and spec.encode.path != "segments" else 0  # RIFE actors, if it may come to that
        self.session = connect(self.address, cpus_wanted=(self.workers or 1) * (self.threads or 1) + rife_cpus
                               + segments)
        manager = self._farm_manager()  # None: this job starts its own actors
        gpus, actors_take = self._shape_pool(manager, reserved_cpus=rife_cpus + segments)
        self.keys = _Keys(spec, "cuda" if gpus else "cpu")
        self.path = _place_path(self.path, spec.encode.path == "auto", self.session, actors_take)
        self.segmented = self.path == "segments"
        # worker processes for the segment tasks start while the actors load
        warming = warm_workers(self.session.cpus - actors_take) if self.segmented else []
        self.workers_asked = self.workers
        if self.latent or not self._all_stored():
            if manager is None:
                self.actors, self.actor_infos = self._start_own_actors()
            else:
                self.actors, self.actor_infos = self._borrow_actors(manager)
            self.keys.use_devices(info["device"] for info in self.actor_infos)
        lent = self.lease is not None and not self.latent
        self.pool = ActorPool(self.actors, self.actor_infos, self.ledger,
                              per_actor=1 if lent else PER_ACTOR_IN_FLIGHT,  # a lent actor moves after one window
                              method="render_apart" if self.segmented else "render", apart=self.segmented,
                              extra_args=(self.lease.spec_ref, self.lease.key) if lent else (),
                              lease=self.lease if lent else None, on_failure=progress.window_failed)
        self.interp = PassThrough()
        warmed(warming)
        if ip and not self.segmented:  # the segment tasks interpolate their own segments
            faults = spec.model.faults
            self.rife_infos, self.interp = _start_interpolation(
                ip, self.rife_bytes, self.session, self.retime, self.rife_actors, spec.retries,
                fail_chunks=tuple(faults.fail_chunks) if faults else (), cuts=self.film.cuts)
        self.clock.stop("startup")
        self.ledger.job(JobState.RUNNING)

    def _farm_manager(self):
        """The farm manager that lends this job its actors, or None for private actors."""
        if self.farm is False or self.session.started_here:
            return None
        shipped = _shipped_inputs(self.spec)
        if shipped:  # files in this job's working_dir: the farm's actors cannot see them
            self.private_why = (f"{', '.join(shipped)} shipped with the job, which the farm's shared actors cannot "
                                "read; name models by hub id or by a path every node has")
            self.progress.notice(f"private actors: {self.private_why}")
            return None
        if self.farm:  # a manager started here takes this job's actor options as its pool's shape
            return start_manager(default_config(self.workers, self.threads, self.gpus_per_worker,
                                                resources=dict(self.actor_resources or {})))[0]
        return find_manager()

    def _shape_pool(self, manager, reserved_cpus: int) -> tuple[bool, int]:
        """Workers and threads: this job's own, or the farm's pool's (shaped when its
        manager started). Returns (GPU actors?, CPUs the pipeline actors take)."""
        if manager is None:
            gpus = wants_gpus(self.session, self.gpus_per_worker)
            self.workers, self.threads = pool_shape(self.session, self.workers, self.threads,
                                                    reserved_cpus=reserved_cpus, gpus_per_worker=self.gpus_per_worker)
            actors_take = self.workers * (1 if gpus else self.threads)
        else:
            try:
                config = ray.get(manager.pool_config.remote(), timeout=60)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as err:
                raise ClusterError(f"the farm manager did not answer: {str(err).splitlines()[0]}") from err
            gpus = config["gpus_per_actor"] > 0
            self.workers = min(self.workers or config["max_actors"], config["max_actors"])
            self.threads = config["threads"]
            actors_take = config["max_actors"] * (1 if gpus else self.threads)
        if self.pipeline.chained:
            self.workers = 1  # a chain runs one window at a time: leave the other GPUs free
        return gpus, actors_take

    def _start_own_actors(self) -> tuple[list, list[dict]]:
        """Private actors; a co-denoised job starts on those that could be placed (its
        frames are the same)."""
        progress = self.progress
        return start_pipeline_actors(
            self.spec, self.session, self.workers, self.threads, share_gpu=bool(self.spec.interpolate),
            resources=self.actor_resources, gpus_per_worker=self.gpus_per_worker,
            on_wait=lambda ready, total: progress.stage(f"starting actors: {ready}/{total} ready "
                                                        "(waiting for nodes or model loads)"),
            partial_after=LATENT_PLACEMENT_S if self.latent else None)

    def _borrow_actors(self, manager) -> tuple[list, list[dict]]:
        """Register with the farm manager and wait for its first actor. Windows go to lent
        actors through the pool, which takes them in as they come (none here); a
        co-denoised job takes the actors lent now, and changes them at checkpoints."""
        spec = self.spec
        self.lease = Lease(manager, self.job_id, spec, pipeline_key(spec, self.keys.kind),
                           priority=self.priority, wants=min(self.workers, len(self.tasks)), latent=self.latent,
                           label=Path(spec.output).name, model_name=_model_name(spec),
                           windows_total=len(self.tasks), submitter=submitted_by(),
                           prompt=spec.prompt or next(iter(spec.schedule.values()), ""), output=spec.output)
        self.progress = self.lease.watch(self.progress)  # the steps of a co-denoised job reach the farm too
        self.lease.wait_for_actors(on_wait=self.progress.stage)
        return self.lease.take_all() if self.latent else ([], [])

    # 4-7. ----------------------------------------------------------------------------------
    def render_and_encode(self) -> None:
        """Frames reach the encoder in order: blended from windows that come back (or out of
        the store) in any order, or final from the co-denoising actors; interpolated and
        encoded as they come, in the driver or in segment tasks (`self.stream`)."""
        spec, progress = self.spec, self.progress
        progress.stage("rendering")
        if not self.latent:
            progress.windows_total(len(self.tasks))
        progress.frames_total(self.retime.frames_out if spec.interpolate else spec.frames)
        self.t_render, self.epoch0 = self.clock.elapsed(), time.time()
        self.cpu0 = time.process_time()  # the driver's own CPU time, every thread of it
        with self._open_stream() as self.stream:
            if self.latent:
                self.co_denoise()
            else:
                self.dispatch_windows()
            self.stages["render"] = self.clock.elapsed() - self.t_render
            if self.ledger.failed:
                raise _job_failed(self.ledger, self.store, spec.output)  # no partial video; an older one is kept
            progress.stage("finishing")
            self.stream.finish()  # the tail of the interpolation and the encoding
            self._stored()
            self.clock.start("encode")  # closing the stream moves the file into place
        self.clock.stop("encode")
        self.driver_cpu = time.process_time() - self.cpu0
        self.frames_out = self.stream.frames_written
        self.ledger.job(JobState.DONE)

    def _open_stream(self):
        spec, ip = self.spec, self.spec.interpolate
        previews = self.lease.previews() if self.lease is not None else None  # the farm's web UI
        if not self.segmented:
            writer = open_writer(self.local_out, spec.width, spec.height, spec.output_fps, spec.encode.crf,
                                 spec.encode.preset, spec.encode.parallel, spec.encode.segment_frames)
            return _InDriver(self.film, spec.window.blend, self.interp, writer, self.clock, self.progress,
                             previews)
        encoding = Encoding(spec.width, spec.height, spec.output_fps, spec.encode.crf, spec.encode.preset)
        interpolation = Interpolation(self.retime, ip.chunk, ip.scene_threshold, tuple(ip.cuts)) if ip else None
        if self.latent:
            jobs = plan_latent_segments(self.plan.windows, spec.encode.segment_frames, encoding, interpolation)
        else:
            jobs = plan_segments(self.plan.windows, spec.window.blend, spec.encode.segment_frames, encoding,
                                 interpolation)
        rife = None
        if ip:
            weights = [ray.put(self.rife_bytes)] if self.rife_bytes is not None else None
            rife = RifeSetup(ip.backend, weights, ip.model_dir, ip.gpuid)
        faults = spec.model.faults
        return SegmentStage(jobs, SegmentFiles(self.local_out, len(jobs)), spec.retries, rife=rife,
                            gpus=RIFE_GPU_SHARE if ip and self.session.gpus else 0.0,
                            crash=tuple(faults.crash_segments) if faults else (),
                            on_done=lambda output: self.progress.frames_written(self.stream.frames_written),
                            previews=previews)

    # 4-5 (crossfade): each window alone, the decoded overlaps blended.
    def dispatch_windows(self) -> None:
        # on the segment path the look-ahead spans two segments' windows, so that one can be
        # encoded while the next one's windows render
        lent = 2 * PER_ACTOR_IN_FLIGHT * self.workers if self.lease is not None else None  # the pool starts empty
        dispatcher = WindowDispatcher(self.pool, self.ledger, lookahead=lent, extra_lookahead=2 * self.stream.widest)
        tasks = self.tasks
        while tasks:
            for result in dispatcher.run(tasks, limit=self._needed_from, cached=self._from_store,
                                         prepare=self.inputs.prepare, chained=self.pipeline.chained):
                result = self.film.placed(result)  # numbered as in the video
                self._keep(result)
                if not self.ledger.failed:  # once a window has failed, nothing more is encoded
                    self.stream.window(result)
            # segment path: windows whose frames were lost with their node go round again
            lost = self.stream.lost_windows() if not self.ledger.failed else []
            for index in lost:
                self.ledger.lost(index)
            tasks = [self.tasks[index] for index in lost]

    # 4-5 (latent): each run's windows denoised together on the actors, the frames decoded there.
    def co_denoise(self) -> None:
        actors = (self.actors, self.actor_infos)
        for run in self.film.runs:  # a film's runs one after another; any other job is one run
            actors = self.co_denoise_run(run, actors)

    def co_denoise_run(self, run, actors: tuple[list, list[dict]]) -> tuple[list, list[dict]]:
        """One run's windows (in the run's own frames) on `actors`; returns the actors that
        are left (a recovery may leave some out). After an edit, a run whose last render
        kept every step's latents renders again only the windows near the edit (a local
        re-render, farm/rerender.py), then decodes the whole run from its last step."""
        spec = run.spec
        windows = run.plan.latent_windows  # in latent frames: the same as the windows but for a video VAE
        job = LatentJob(windows, fuse_weights(windows, spec.window.blend), spec.steps, spec.seed, spec.height,
                        spec.width, checkpoint_steps(spec.steps, spec.window.checkpoint_every, spec.window.keep_steps),
                        causal_decode=self.pipeline.causal_decode)
        tasks = [run.task(w) for w in run.plan.windows]
        prepare = lambda task: self.pipeline.window_inputs(spec, task, None)  # noqa: E731
        window_keys = [self.keys.get(prepare(t)) for t in tasks]
        checkpoints, region, last = self._latent_checkpoints(run, window_keys)
        key = checkpoints.key
        stored, again = self._look_up_latent(run, checkpoints.latest(windows[-1].end), key, window_keys, region)
        if len(self.film.runs) > 1:
            self.progress.notice(f"run {run.index + 1}/{len(self.film.runs)} (shots {shot_span(run.shots)}): "
                                 + ("decoding its stored latents" if stored else f"{len(tasks)} windows"))
        t0 = self.clock.elapsed()
        rendered = set() if stored else set(region.windows) if region else set(range(len(tasks)))
        for w in range(len(tasks)):
            (self.ledger.start if w in rendered else self.ledger.cached)(run.first_window + w)
        args = dict(actors=actors[0], infos=actors[1], prepare=prepare, retries=self.spec.retries,
                    progress=self.progress, resizer=self.lease,
                    pipeline=(self.lease.spec_ref, self.lease.key) if self.lease is not None else ())
        local = None
        if region is not None and not stored:  # its span denoised, every step of the run is whole: it only decodes
            span = rerender_locally(args, job, tasks, region, checkpoints, last)
            args |= dict(actors=span.actors, infos=span.infos)
            local = _local_record(region, span, run.out_start)
        codenoiser = CoDenoiser(job=job, tasks=tasks, checkpoints=checkpoints, **args)
        self.latent_runs.append({"run": run, "codenoiser": codenoiser, "key": key, "from_store": stored,
                                 "rendered_again": again, "local": local})
        if self.segmented:  # the decoded chunks stay in the object store
            for source, ref in codenoiser.chunk_refs():
                self.stream.chunk(source, ref)
        else:
            for frame in codenoiser.frames():
                self.stream.frame(frame)
        self.latent_runs[-1]["seconds"] = round(self.clock.elapsed() - t0, 4)
        for task in tasks:
            index = run.first_window + task.window.index
            if task.window.index in rendered:
                self.ledger.done(index)
            record = _latent_record(task, codenoiser, key, task.window.index not in rendered, run.out_start)
            self.records[index] = record | self.pipeline.describe_inputs(spec, task) | {"index": index}
        frames = windows[-1].end
        if spec.window.keep_steps and all(checkpoints.whole(s, frames) for s in range(1, spec.steps + 1)):
            # what a later edit re-renders from (farm/rerender.py)
            self.store.remember_kept_steps(run_label(self.spec.output, run), key, window_keys, spec.window.blend,
                                           spec.steps)
        return codenoiser.actors, codenoiser.infos

    def _latent_checkpoints(self, run, window_keys: list[str]):
        """Where a co-denoised run's latents are stored: under its key (made of its windows'
        keys), or, when it is re-rendered locally (nothing under that key yet, and the last
        render kept every step), under a key of its own, apart from a whole render of the
        same windows. Returns (its checkpoints, the region re-rendered, the last render's
        checkpoints); the last two None unless local."""
        spec = run.spec
        checkpoints = self.store.checkpoints(latent_job_key(window_keys, spec.window.blend))
        region, last = (None, None) if checkpoints.latest(run.plan.latent_windows[-1].end) else \
            self._local_region(run, window_keys)
        if region is not None:
            checkpoints = self.store.checkpoints(local_job_key(checkpoints.key, last.key, region))
        checkpoints.keep_all = spec.window.keep_steps
        return checkpoints, region, last

    def _local_region(self, run, window_keys: list[str]):
        """Where an edit lets a run render again locally (farm/rerender.py): the region of
        windows near the changed ones, and the checkpoints of the last render, which kept
        every step's latents (`window.keep_steps`). (None, None): the run renders whole."""
        region, last = local_rerender(self.spec, run, self.store, window_keys)
        if region is None:
            return None, None
        checkpoints, frames = self.store.checkpoints(last["key"]), run.plan.latent_windows[-1].end
        if any(not checkpoints.whole(step, frames) for step in range(1, self.spec.steps + 1)):
            return None, None  # (its steps were removed: farm store gc)
        return region, checkpoints

    def _look_up_latent(self, run, saved: int, key: str, window_keys: list[str], region) -> tuple[bool, str | None]:
        """What the store holds of a co-denoised run (its last whole checkpoint is after
        `saved` steps): all of it (the same run again: only decoding is left), the steps of
        its last render outside `region` (a local re-render), or nothing, when an edit since
        the last render of this output is why (said, and reported). Returns (all of it?,
        why it renders again)."""
        spec = run.spec
        label = run_label(self.spec.output, run)
        stored = saved == spec.steps
        again = None if saved else region.describe() if region else why_rendered_again(
            self.store.last_latent_job(label), window_keys, spec.window.blend, run.plan.windows)
        if again:
            self.progress.notice(again if not run.shots else f"shots {shot_span(run.shots)}: {again}")
        self.store.remember_latent_job(label, key, window_keys, spec.window.blend)
        return stored, again

    def _needed_from(self) -> int:
        return self.stream.first_needed_window() if not self.ledger.failed else len(self.tasks)

    def _from_store(self, task: WindowTask) -> WindowResult | None:
        with self.clock.lap("store"):
            key = self.keys.get(task)
            self.keys.looked_up[task.window.index] = key
            if not self.segmented:
                return _read_window(self.store, key, task)
            if not self.store.has(key):
                return None
            ref = store_get(self.store.root, key)  # read and checked on this node, in a task
            if ref is None:  # it failed its check and was removed
                self.store.corrupt.append(key)
                return None
            return _read_window(self.store, key, task, frames=ref)

    def _keep(self, result: WindowResult) -> None:
        """Store a rendered window under its key and record it for the report."""
        if not self.segmented:
            self.inputs.finished(result.index, result.frames)
        status = self.ledger.windows[result.index]
        task = self.inputs.prepared(result.index)
        if status.state is WindowState.CACHED:
            key = self.keys.get(task)
            self.progress.window_cached(result.index)
        else:
            key = self.keys.put(task, result.device)
            if self.pipeline.storable(result):
                meta = dict(job=Path(self.spec.output).name, index=result.index, start=result.start, end=result.end,
                            attempts=status.attempts, node=result.node, actor=result.actor, seconds=result.seconds)
                with self.clock.lap("store"):
                    if self.segmented and not isinstance(self.store, NoStore):
                        self.store_writes.append(store_put(self.store.root, key, result.frames, **meta))
                    elif not self.segmented:
                        self.store.put(key, result.frames, **meta)
            self.progress.window_done(result)
        record = _window_record(result, status, task, key, self.epoch0, self.clock.elapsed() - self.t_render)
        self.records[result.index] = record | self.inputs.describe(result.index)
        if self.lease is not None:
            self.lease.windows_done = len(self.records)
            if status.state is not WindowState.CACHED:
                self.lease.window_started(result.started)

    def _stored(self) -> None:
        """Wait for the segment path's store writes; one that failed is logged (the video is
        complete; that window is rendered again next time)."""
        for ref in self.store_writes:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as err:
                logging.getLogger(__name__).warning("a window could not be stored: %s", err)
        self.store_writes = []

    def stop_actors(self) -> None:
        """Private actors are stopped; lent ones go back to the farm's pool, warm."""
        if self.lease is not None:
            done = self.ledger.state is JobState.DONE
            self.lease.windows_done = sum(len(self.ledger.in_state(s)) for s in (WindowState.DONE, WindowState.CACHED))
            self.lease.close("DONE" if done else "STOPPED" if self.interrupted else "FAILED")
            self.actors = []
        stop_actors(self.actors + self.rife_actors)
        if self.session is not None:
            if wants_gpus(self.session, self.gpus_per_worker):
                release_request()
            self.session.close()

    # 8. ------------------------------------------------------------------------------------
    def write_report(self) -> Report:
        stream = self.stream
        film = self.film
        metrics = flicker_report(stream.curve, film.out_windows, stream.disagreement(), fused=self.latent,
                                 runs=film.seam_runs(), cuts=film.cuts)
        drift = stream.drift()
        for index, value in drift.items():
            self.records[index]["color_drift"] = value
        metrics["color_drift_max"] = max(drift.values(), default=None)
        if self.spec.interpolate:
            metrics["interpolate"] = self._interpolation()
        if self.latent_runs:
            metrics["latent"] = self._latent_report() | {
                "actors_asked": self.workers_asked, "actors_placed": len(self.actor_infos)}
        if self.film.has_shots:
            metrics["shots"] = shot_table(self.film, self.records, self.latent_runs)
        if self.check_seams is not None:
            worst = max(metrics["seams"], key=lambda seam: seam["jump_ratio"], default=None)
            metrics["seam_check"] = {"limit": self.check_seams, "worst": worst,
                                     "passed": worst is None or worst["jump_ratio"] <= self.check_seams}
        return self._report(filmstrips=[s.to_html_data() for s in stream.strips(self.plan.windows)],
                            storyboard=stream.storyboard_data() if film.has_shots else None, **metrics)

    def _latent_report(self) -> dict:
        """The co-denoising: the CoDenoiser's report, the job's key, whether its final
        latents came from the store (`from_store`: only decoded), why it rendered every
        window again if an edit did; for a film, each run's and their sum."""
        return merge_latent_reports(self.film, [
            {k: v for k, v in r.items() if k != "codenoiser"} | {"report": r["codenoiser"].report()}
            for r in self.latent_runs])

    def _interpolation(self) -> dict:
        if self.segmented:
            return self.stream.interpolation(self.retime, self.spec.interpolate.backend)
        return self.interp.summary() | {
            "actors": self.rife_infos,
            "first_chunk_at": round(self.interp.first_submit_at - self.clock.t0 - self.t_render, 4),
        }

    def write_failure_report(self, err: FarmError) -> None:
        """The report of a failed job. Its own failure (a full disk, say) is logged, never
        raised: the job's error is the one the caller must see."""
        self.clock.stop_open()  # a stage the error cut short (startup, encode) still counts
        self._stored()  # the windows rendered so far are in the store before the job says so
        if self.t_render is not None:
            self.stages.setdefault("render", self.clock.elapsed() - self.t_render)
        if self.ledger.state is not JobState.FAILED:
            self.ledger.job(JobState.FAILED)
        fields = {"error": None if isinstance(err, WindowFatal) else str(err)}  # a window's error is in `failed`
        if self.latent_runs:
            fields["latent"] = self._latent_report()
        if self.segmented and self.spec.interpolate and isinstance(self.stream, SegmentStage):
            fields["interpolate"] = self.stream.interpolation(self.retime, self.spec.interpolate.backend)
        elif isinstance(self.interp, InterpolationStage):
            fields["interpolate"] = self.interp.summary() | {"actors": self.rife_infos}
        try:
            self._report(**fields)
        except Exception as report_err:  # noqa: BLE001
            logging.getLogger(__name__).warning("could not write the failure report: %s", report_err)

    def _report(self, filmstrips: list[dict] | None = None, storyboard: list[dict] | None = None,
                **fields) -> Report:
        ledger, clock = self.ledger, self.clock
        self.stages.update({name: clock.totals[name] for name in ("plan", "startup", "blend", "encode", "store")},
                           total=clock.elapsed())
        for index, status in ledger.windows.items():  # windows that never came back
            self.records.setdefault(index, {"index": index, "state": status.state.value, "cached": False,
                                            "attempts": status.attempts,
                                            "failures": [f.to_dict() for f in status.failures]})
        if ledger.failed:
            w = ledger.failed[0]
            fields["failed"] = {"window": w.index, "attempts": w.attempts, "error": w.last_error}
        spec, cached = self.spec, ledger.in_state(WindowState.CACHED)
        if spec.model.cache is not None:
            fields["cache"] = cache_summary(spec.model.cache, self.records.values(), fields.get("latent"))
        report = Report(
            output=spec.output, state=ledger.state.value, frames=spec.frames, output_frames=self.frames_out,
            output_fps=spec.output_fps, width=spec.width, height=spec.height, blend=spec.window.blend,
            windows=[self.records[i] for i in sorted(self.records)],
            windows_rendered=len(ledger.in_state(WindowState.DONE)), windows_cached=len(cached),
            store={"path": str(self.store.root), "reused": cached, "corrupt_removed": list(self.store.corrupt)},
            blocklist=self.pool.blocklist.report() if self.pool else [],
            stages={k: round(v, 4) for k, v in self.stages.items()},
            plan=self.plan.to_dict() | {"windows": len(self.plan.windows)},
            actors=self.actor_infos if self.lease is None else self.lease.actor_infos(),
            farm=self.lease.report() if self.lease is not None else
            {"private": self.private_why} if self.private_why else None,
            reconcile=spec.window.reconcile, encode=self._encode_report(),
            workers=self.workers, threads_per_actor=self.threads, spec=spec.report_dump(), **fields)
        report.write(self.local_out, filmstrips, storyboard)
        return report

    def _encode_report(self) -> dict:
        """Where the frames were reconciled and encoded, and what that cost the driver."""
        out = self.stream.report() if isinstance(self.stream, SegmentStage) else {"path": self.path}
        cpu = getattr(self, "driver_cpu", None)
        if cpu is not None:
            out["driver_cpu_seconds"] = round(cpu, 4)
            out["driver_cpu_ms_per_window"] = round(1000 * cpu / max(1, len(self.plan.windows)), 3)
        return out

    def _all_stored(self) -> bool:
        """True if every window is in the store and passes its check (read one at a time).
        Windows with inputs (control frames, a chained frame) are prepared to find their keys;
        a scratch `_WindowInputs` keeps this from touching the job's own."""
        scratch = _WindowInputs(self.film)
        for task in self.tasks:
            task = scratch.prepare(task)
            frames = self.store.get(self.keys.get(task))
            if frames is None:
                return False
            scratch.finished(task.window.index, frames)
            scratch.describe(task.window.index)
        return True


def interpolate_file(job: InterpolateJob, *, address: str | None = None, rife_weights: str | None = None,
                     progress: NullProgress | None = None) -> dict:
    """`farm interpolate`: stream an existing video through the RIFE actors into a new mp4."""
    progress = progress or NullProgress()
    clock = Stopwatch()
    ip = job.interpolate

    # 1. Validate: the job arrives validated; the input must decode; find the weights.
    source = probe(job.input)
    rife_bytes = _interpolation_inputs(ip, rife_weights)
    retime = retiming(source.frames, source.fps, fps=ip.fps, factor=ip.factor)

    # 2. Start the RIFE actors.
    progress.stage("starting actors")
    session = connect(address, cpus_wanted=ip.workers)
    rife_actors = []
    try:
        rife_infos, stage = _start_interpolation(ip, rife_bytes, session, retime, rife_actors)

        # 3. Read, interpolate and encode, streaming.
        progress.stage("interpolating")
        progress.frames_total(stage.retime.frames_out)
        with VideoWriter(job.output, source.width, source.height, stage.retime.fps_out) as out:
            for frame in iter_frames(job.input):
                stage.push(frame)
                for done in stage.ready():
                    out.write(done)
                progress.frames_written(out.frames_written)
            for done in stage.finish():
                out.write(done)
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
        "output_fps": stage.retime.fps_out,
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


def _start_interpolation(ip, rife_bytes: bytes | None, session, retime, started: list, retries: int = 3,
                         fail_chunks: tuple[int, ...] = (),
                         cuts: tuple[int, ...] = ()) -> tuple[list[dict], InterpolationStage]:
    """Start the RIFE actors (added to `started`, which the caller stops) and the stage
    that feeds them the frames `retime` describes; the pairs at `interpolate.cuts` and at
    a film's `cuts` are never interpolated."""
    actors, infos = start_rife_actors(ip, rife_bytes, session, fail_chunks)
    started.extend(actors)
    pool = rife_pool(actors, infos, retime, ip.chunk, retries, per_actor=PER_ACTOR_IN_FLIGHT)
    declared = tuple(sorted({*ip.cuts, *cuts}))
    return infos, InterpolationStage(pool, retime, ip.chunk, ip.scene_threshold, declared, backend=ip.backend)


class _InDriver:
    """Steps 5-7 in the driver: windows blended here as they arrive (any order), a film's
    runs spliced (farm.shots.Splice), finished frames through the RIFE actors' stage
    (`interp`) and into `writer`, in order. The segment path's `SegmentStage`
    (scheduler/segments.py) has the same interface."""

    def __init__(self, film, blend: str, interp, writer, clock: Stopwatch, progress: NullProgress,
                 previews=None):
        self.reconciler = Reconciler(film.windows, blend)  # in render frames: every run's, end to end
        self.splice = film.splice()
        self.meter = FlickerMeter()  # measured on the blended frames, where the seams are
        self.filmstrips = Filmstrips(film.out_windows)  # the seams up close, for the HTML report
        self.storyboard = Storyboard(film.storyboard_frames())  # a film: one thumbnail per shot
        self.drift_meter = DriftMeter()  # colour drift of each window from the first frame
        self.interp, self.writer, self.clock, self.progress = interp, writer, clock, progress
        self.previews = previews  # scheduler.lease.Previews: thumbnails for the farm's web UI
        self.frames_blended = 0
        self.widest = 0  # windows a segment reads (none here)

    def __enter__(self):
        self.writer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.writer.__exit__(*exc)

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def first_needed_window(self) -> int:
        return self.reconciler.first_unfinished_window

    def lost_windows(self) -> list[int]:
        return []  # the frames are here

    def window(self, result: WindowResult) -> None:
        """A window is back: blend what it completes, pass it on."""
        self.reconciler.add(result.index, result.frames)
        self.filmstrips.window(result.index, result.frames, result.start)
        self.drift_meter.add(result.index, result.frames)
        for frame in self.clock.timed_iter("blend", self.reconciler.ready()):
            for out in self.splice.push(frame):
                self._pass_on(out, self.reconciler.seam_disagreement)
        self._encode(self.interp.ready())

    def frame(self, frame) -> None:
        """A final frame (co-denoised), in order."""
        for out in self.splice.push(frame):
            self._pass_on(out, lambda seam: None)
        self._encode(self.interp.ready())

    def _pass_on(self, frame, disagreement) -> None:
        self.filmstrips.frame(self.frames_blended, frame, disagreement)
        self.storyboard.frame(self.frames_blended, frame)
        if self.previews is not None:
            self.previews.offer(self.frames_blended, frame)
        self.frames_blended += 1
        self.meter.add(frame)
        self.interp.push(frame)

    def finish(self) -> None:
        self._encode(self.interp.finish())  # the tail of the interpolation

    def _encode(self, frames) -> None:
        for frame in frames:
            with self.clock.lap("encode"):
                self.writer.write(frame)
        self.progress.frames_written(self.writer.frames_written)

    # what the report needs
    @property
    def curve(self) -> list[float]:
        return self.meter.curve

    def disagreement(self) -> dict[int, float]:
        return self.reconciler.disagreement()

    def strips(self, windows):
        return self.filmstrips.strips()

    def storyboard_data(self) -> list[dict]:
        return self.storyboard.to_html_data()

    def drift(self) -> dict[int, float]:
        return self.drift_meter.per_window()


def _place_path(path: str, auto: bool, session, actors_take: int) -> str:
    """The segment path only if the cluster has a CPU left beside the pipeline actors
    (which take `actors_take` CPUs) for the segment tasks: `auto` falls back to the driver
    path; `segments` asked for without one is an error, not a stall."""
    if path == "driver":
        return path
    free = session.cpus - actors_take
    if free >= 1:
        return path
    if not auto:
        raise ClusterError(f"encode.path: segments needs a CPU beside the pipeline actors for the segment tasks; "
                           f"the actors take {actors_take} of the cluster's {session.cpus} CPUs. "
                           "Start fewer actors or threads (--workers, --threads), or use encode.path: driver")
    return "driver"


def _model_name(spec: JobSpec) -> str:
    """The job's pipeline as `farm queue` names it."""
    model = spec.model
    if model.faults is not None and model.faults.simulate_seconds is not None:
        return f"simulation {model.faults.simulate_seconds:g}s"
    name = f"{model.pipeline} {Path(model.base).name if model.base.startswith('/') else model.base}"
    return name + (f" ({model.scheduler_name})" if model.scheduler_name else "")


def _shipped_inputs(spec: JobSpec) -> list[str]:
    """The spec's pipeline inputs that `farm submit` shipped in this job's working_dir."""
    from scheduler.jobs import INPUTS_DIR, local_inputs

    shipped = Path.cwd().resolve() / INPUTS_DIR
    return [i.field for i in local_inputs(spec.model_dump(mode="json"))
            if not i.field.startswith("interpolate") and shipped in i.path.parents]


class _WindowInputs:
    """Each window's own inputs, added by its pipeline's descriptor just before it is looked
    up or sent (control frames; a chained pipeline's frame from the window before), from
    its run's spec (`film`, farm.shots). Holds only what is in flight."""

    def __init__(self, film):
        self.film = film
        self.pipeline = descriptor(film.spec.model.pipeline)
        self._tasks: dict[int, WindowTask] = {}
        self._last_frames: dict = {}

    def prepare(self, task: WindowTask) -> WindowTask:
        """The task with its inputs; asked again while it waits, it returns the same one."""
        index = task.window.index
        if index not in self._tasks:
            before = self._last_frames.pop(index - 1) if self.pipeline.chained and index else None
            self._tasks[index] = self.pipeline.window_inputs(self.film.spec_of(index), task, before)
        return self._tasks[index]

    def prepared(self, index: int) -> WindowTask:
        return self._tasks[index]

    def finished(self, index: int, frames) -> None:
        if self.pipeline.chained:
            self._last_frames[index] = frames[-1]

    def describe(self, index: int) -> dict:
        """What the report says about a window's inputs; the window's task is then dropped."""
        return self.pipeline.describe_inputs(self.film.spec_of(index), self._tasks.pop(index))


class _Keys:
    """Window keys for this job: the models' identity on the device class they run on."""

    def __init__(self, spec: JobSpec, device_kind: str):
        self.spec = spec
        self._ids: dict[str, dict] = {}
        self.kind = device_kind
        self.looked_up: dict[int, str] = {}  # window → the key it was looked up under

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
        """The key a window rendered on `device` is stored under (the one it was looked up
        under, when the device class is the same)."""
        kind = _device_kind(device)
        known = self.looked_up.pop(task.window.index, None)
        return known if known is not None and kind == self.kind else task_key(self._id(kind), task)


def _device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _read_window(store: WindowStore, key: str, task: WindowTask, frames=None) -> WindowResult | None:
    """A stored window as a result: its frames read here, or `frames` (a ref) already read."""
    frames = store.get(key) if frames is None else frames
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
        "prompts": window_prompts(task.conditioning, result.start),  # numbered as in the video
        "attempts": status.attempts,
        "failures": [f.to_dict() | {k: _rel(getattr(f, k), epoch0) for k in ("started_at", "finished_at")}
                     for f in status.failures],
        "node": result.node,
        "actor": result.actor,
        "device": result.device,
        "seconds": round(result.seconds, 4),
        "fallbacks": list(result.fallbacks),
        **({"cache": result.cache} if result.cache is not None and not cached else {}),
        "started_at": None if cached else _rel(result.started, epoch0),
        "finished_at": round(finished_at, 4),
    }


def _local_record(region, span: CoDenoiser, shift: int) -> dict:
    """A local re-render's record (the report's `latent.local`): its region, where its span
    ran and what it cost, and the frames it denoised anew in the video's numbering."""
    a, b = region.free
    return region.to_dict() | {"actors": len(span.shards), "denoise_seconds": round(span.denoise_seconds, 4),
                               "video_frames": [shift + a, shift + b]}


def _latent_record(task: WindowTask, codenoiser: CoDenoiser, key: str, stored: bool, shift: int = 0) -> dict:
    """A co-denoised window's record: its shard's actor, and the job's key (windows are
    stored as one job); `stored`: the job's final latents came from the store; its frames
    `shift`ed into the video's numbering (a film's run)."""
    window = replace(task.window, start=task.window.start + shift, end=task.window.end + shift)
    shard = next(s for s in codenoiser.shards if task.window.index in s.windows)
    info = codenoiser.infos[shard.index]
    return {"index": window.index, "start": window.start, "end": window.end,
            "state": (WindowState.CACHED if stored else WindowState.DONE).value, "cached": stored, "key": key,
            "shard": shard.index, "prompts": window_prompts(task.conditioning, window.start),
            "attempts": 1 + len(codenoiser.recoveries),
            "failures": [], "node": info["node"], "actor": info["actor"], "device": info["device"], "fallbacks": []}


def _rel(t: float | None, epoch0: float) -> float | None:
    return None if t is None else round(t - epoch0, 4)
