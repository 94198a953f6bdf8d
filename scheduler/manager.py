"""The farm manager: one detached, named Ray actor that lends pipeline actors to jobs.

    farm submit / farm render --address ─► driver ─► Lease (scheduler/lease.py)
                                                       │ register, heartbeat, release, finish
                                                       ▼
                                    FarmManager (actor "farm-manager", namespace "farm")
                                       FarmQueue (farm/farmqueue.py): who gets which actor
                                       a pool of detached PipelineActors "farm-pipeline-<n>"

The manager decides; it never touches a window. Drivers call the actors it lends them
directly, so windows keep flowing while the manager restarts.

- **Queue.** Jobs are granted actors by priority, then submission (farm/farmqueue.py has
  the rules). A job's driver heartbeats every `HEARTBEAT_S`; each reply lists the actors
  it holds and those it must hand back at their next window boundary (preemption).
- **Warm pipelines.** Pool actors outlive jobs and hold up to `max_models` pipelines
  (least recently used out). A job is lent actors that hold its pipeline first.
- **State.** The queue is saved in Ray's internal key-value store (in the GCS, on the
  head) after every change. Ray restarts a dead manager (`max_restarts=-1`); the new one
  reads the queue back, finds its pool actors by name, and gives every running job a
  fresh lease. Drivers that cannot reach it keep rendering and try again.
- **Reclaiming.** A job whose driver has not been heard from for `lease_timeout_s` is
  LOST and its actors go back to the pool. A driver stopped with `farm stop` or
  `ray job stop` (SIGTERM) ends its job itself first.
- **Scaling.** Demand that idle actors cannot meet starts actors up to `max_actors` (with
  `request_resources` when they need GPUs, so an autoscaler adds nodes); actors idle for
  `idle_timeout_s` are stopped, so the cluster can scale down.
- **The web UI** (`farm manager start --ui`, `farm ui`): an HTTP server thread in this
  process (scheduler/webui.py) reads the queue and the drivers' preview thumbnails under
  the same lock, and changes priorities or asks drivers to stop through the same methods
  the CLI calls. Thumbnails are kept per running job up to `PREVIEW_BYTES`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import ray

from farm.errors import ClusterError
from farm.farmqueue import FarmQueue
from farm.states import QueueState

NAMESPACE = "farm"
MANAGER_NAME = "farm-manager"
ACTOR_PREFIX = "farm-pipeline-"
_KV_KEY = b"farm-manager-state"

#: How often a driver tells the manager it is alive, and learns of lent or recalled actors.
HEARTBEAT_S = float(os.environ.get("FARM_HEARTBEAT_S", "0.25"))
#: How often the manager looks at starting actors, silent drivers and idle actors.
TICK_S = 0.25
PREFETCH_CHECK_S = 2.0  # how often `--prefetch` looks for new nodes and finished fetches
#: Preview thumbnails kept per running job (the oldest go first).
PREVIEW_BYTES = int(os.environ.get("FARM_PREVIEW_BYTES", str(256 * 1024)))

log = logging.getLogger(__name__)


@dataclass
class ManagerConfig:
    """How the manager's pool is shaped (`farm manager start` options)."""

    max_actors: int = 1
    threads: int = 1  # torch threads (and CPUs) per CPU actor
    gpus_per_actor: float = 0.0
    resources: dict = field(default_factory=dict)  # custom resources per actor
    max_models: int = 1  # pipelines one actor keeps loaded
    idle_timeout_s: float = 600.0
    lease_timeout_s: float = 10.0
    start_timeout_s: float = 600.0  # an actor not placed and up by then is given up
    ui_host: str | None = None  # the web UI's address (None: no UI); 127.0.0.1 unless asked
    ui_port: int = 8266
    # Fetch the staged models of the queued jobs onto each new node as soon as its first
    # actor is up, before any job's pipeline loads there (`farm manager start --prefetch`).
    prefetch: bool = False


    def actor_options(self) -> dict:
        opts = {"num_gpus": self.gpus_per_actor, "num_cpus": 1} if self.gpus_per_actor else {"num_cpus": self.threads}
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts


class FarmManager:
    """Wrapped with `ray.remote` by `manager_class()`: a threaded actor (its calls are
    short and hold `_lock`), with one thread of its own for the periodic checks."""

    def __init__(self, config: dict):
        self._lock = threading.RLock()
        self.handles: dict[str, object] = {}
        self.pending: dict[object, tuple[str, object, float]] = {}  # info() ref → (name, handle, since)
        self.events: deque[dict] = deque(maxlen=200)
        self.decisions = 0
        self.decision_seconds = 0.0
        self.started = time.time()
        self._stopping = False
        self.previews: dict[str, deque[tuple[int, bytes]]] = {}  # job → its latest thumbnails (frame, JPEG)
        self.preview_peak: dict[str, int] = {}  # job → the most thumbnail bytes held at once
        self._first_progress: dict[str, tuple[float, int]] = {}  # job → (when, done) of its first progress
        self.ui = None
        self.staged: dict[str, list[str]] = {}  # job → the URIs of its staged models
        self.staged_env: dict[str, dict] = {}  # job → its driver's credential variables
        self.prefetching: dict[str, tuple] = {}  # node → (its prefetch task, the URIs) (--prefetch)
        self.prefetched: dict[str, set[str]] = {}  # node → the URIs fetched there
        self._prefetch_checked = 0.0
        saved = _kv_get()
        if saved is not None:
            self._recover(saved)
        else:
            self.config = ManagerConfig(**config)
            self.queue = FarmQueue(self.config.max_actors, self.config.max_models)
            # pool actors are named after this manager's generation: a manager started after
            # `farm manager stop` never meets a name an actor being killed still holds
            self.generation = os.urandom(3).hex()
            self.actor_seq = 0
            self.restarts = 0
            self._save()
        if self.config.ui_host:  # a restarted manager serves its UI again
            try:
                self._start_ui()
            except (OSError, ValueError) as err:  # e.g. the port taken meanwhile: say so, keep managing
                self._event("web UI failed to start", error=str(err))
                log.error("the farm web UI did not start: %s", err)
        threading.Thread(target=self._tick_loop, name="farm-manager-tick", daemon=True).start()

    # -- what drivers call -----------------------------------------------------------------
    def register(self, job_id: str, priority: int, model: str, wants: int, *, latent: bool = False,
                 label: str = "", model_name: str = "", windows_total: int = 0, submitter: str = "",
                 prompt: str = "", output: str = "", staged: list[str] | tuple = (),
                 env: dict[str, str] | None = None) -> dict:
        """Queue a job; returns the pool's shape. A job registering again (its driver lost
        the manager for a while) keeps its place."""
        with self._lock:
            job = self.queue.submit(job_id, priority, model, min(wants, self.config.max_actors), time.time(),
                                    latent=latent, label=label, model_name=model_name,
                                    windows_total=windows_total, submitter=submitter, prompt=prompt, output=output)
            self._event("queued", job=job_id, priority=job.priority, model=model)
            if staged:  # for --prefetch, with the credentials to fetch them (kept in memory only)
                self.staged[job_id] = list(staged)
                self.staged_env[job_id] = dict(env or {})
            self._plan(True)  # a queued job is saved too: a restarted manager keeps its place
            return {"config": asdict(self.config), "seq": job.seq}

    def heartbeat(self, job_id: str, held: list[str], windows_done: int = 0, loading: int = 0,
                  dead: tuple[str, ...] = (), steps: tuple[int, int] = (0, 0)) -> dict:
        """A driver is alive and holds `held`. Returns its job's state and the actors it
        holds now: {name: {handle, node, moving, grant, warm}}; `moving` ones go back after their
        current window; `grant` names this lending when it hands one back. And its priority,
        which `farm priority` may have changed, and whether it was asked to stop."""
        with self._lock:
            job = self.queue.jobs.get(job_id)
            if job is None:
                return {"state": "UNKNOWN", "actors": {}}
            if not job.state.active:
                return {"state": job.state.value, "actors": {}}
            for name in dead:
                self._forget(name)
            now = time.time()
            changed = self.queue.beat(job_id, held, now, windows_done=windows_done, loading=loading,
                                      dead=dead, steps=tuple(steps))
            done = self.queue.progress(job)["done"]
            if job_id not in self._first_progress or self._first_progress[job_id][1] > done:
                self._first_progress[job_id] = (now, done)  # where its rate is measured from
            self._plan(changed)
            actors = {a.name: {"handle": self.handles[a.name], "node": a.node, "moving": a.moving, "grant": a.grant,
                               "warm": a.warm}
                      for a in self.queue.tell(job_id) if a.name in self.handles}
            return {"state": job.state.value, "actors": actors, "priority": job.priority,
                    "stop": job.stop_requested}

    def release(self, job_id: str, lent: list[tuple[str, int]]) -> None:
        """The job hands back these actors, each (name, grant)."""
        with self._lock:
            self.queue.release(job_id, [tuple(item) for item in lent], time.time())
            self._event("released", job=job_id, actors=[name for name, _ in lent])
            self._plan(True)

    def finish(self, job_id: str, state: str, windows_done: int | None = None) -> list[str]:
        """The job ended (DONE, FAILED, STOPPED); its actors go back to the pool, warm."""
        with self._lock:
            if job_id not in self.queue.jobs:
                return []
            if windows_done is not None:
                self.queue.jobs[job_id].windows_done = windows_done
            freed = self.queue.end(job_id, QueueState(state), time.time())
            self.previews.pop(job_id, None)
            self._first_progress.pop(job_id, None)
            self.staged.pop(job_id, None)
            self.staged_env.pop(job_id, None)
            self._event("ended", job=job_id, state=state, actors=freed)
            self._plan(True)
            return freed

    def pool_config(self) -> dict:
        return asdict(self.config)

    # -- what `farm queue`, `farm priority` and `farm manager stop` call --------------------
    def snapshot(self) -> dict:
        with self._lock:
            out = self.queue.snapshot(time.time())
            out["manager"] = {"restarts": self.restarts, "decisions": self.decisions,
                              "decision_ms": round(1000 * self.decision_seconds / max(1, self.decisions), 4),
                              "up_seconds": round(time.time() - self.started, 1), "config": asdict(self.config),
                              "heartbeat_s": HEARTBEAT_S, "ui": self.ui_url()}
            return out

    def set_priority(self, job_id: str, priority: int) -> dict:
        with self._lock:
            job = self.queue.set_priority(job_id, priority)
            self._event("priority", job=job_id, priority=priority)
            self._plan(True)
            return job.to_dict()

    def stop_job(self, job_id: str) -> dict:
        """Ask the job's driver to stop it: at its next heartbeat it ends the job STOPPED
        and its actors go back to the pool (the web UI's stop)."""
        with self._lock:
            job = self.queue.request_stop(job_id)
            self._event("stop asked", job=job_id)
            self._save()
            return job.to_dict()

    # -- what the web UI reads (scheduler/webui.py) ------------------------------------------
    def publish_preview(self, job_id: str, frame: int, jpeg: bytes) -> None:
        """A driver's thumbnail of a finished frame; the oldest go once the job's exceed
        PREVIEW_BYTES."""
        with self._lock:
            job = self.queue.jobs.get(job_id)
            if job is None or not job.state.active:
                return
            kept = self.previews.setdefault(job_id, deque())
            kept.append((frame, bytes(jpeg)))
            held = sum(len(j) for _, j in kept)
            while held > PREVIEW_BYTES and len(kept) > 1:
                held -= len(kept.popleft()[1])
            self.preview_peak[job_id] = max(self.preview_peak.get(job_id, 0), held)

    def preview_image(self, job_id: str, frame: int) -> bytes | None:
        with self._lock:
            return next((j for f, j in self.previews.get(job_id, ()) if f == frame), None)

    def preview_peaks(self) -> dict:
        """Per job: the most thumbnail bytes it held at once (ended jobs too)."""
        with self._lock:
            return dict(self.preview_peak)

    def ui_state(self) -> dict:
        """The page's data: the queue's snapshot, each job's progress, ETA (from its own
        rate so far) and preview frames, the finished jobs' outputs found on this node."""
        now = time.time()
        with self._lock:
            out = self.snapshot()
            for j in out["jobs"]:
                job = self.queue.jobs[j["id"]]
                progress = self.queue.progress(job)
                j["progress"], j["active"] = progress, job.state.active
                j["eta_seconds"] = self._eta(job.id, progress, now) if job.state.active else None
                j["previews"] = [f for f, _ in self.previews.get(job.id, ())]
                if job.state.active and not j["previews"]:
                    j["preview_note"] = ("queued" if job.state is QueueState.QUEUED else
                                         "a thumbnail comes every few seconds once frames are finished")
                j["video"] = self.output_file(job.id, "video") is not None
                j["report"] = self.output_file(job.id, "report") is not None
            out["gpus_per_actor"] = self.config.gpus_per_actor
            return out

    def _eta(self, job_id: str, progress: dict, now: float) -> float | None:
        """Seconds left at the job's own rate since its first heartbeat (None before it
        has done anything)."""
        done, total = progress["done"], progress["total"]
        first = self._first_progress.get(job_id)
        if first is None:
            return None
        when, at = first
        if done <= at or now <= when:
            return None
        return round((total - done) * (now - when) / (done - at), 1)

    def output_file(self, job_id: str, what: str) -> str | None:
        """A finished job's mp4 (`video`) or HTML report (`report`), when it is a file on
        this node; None otherwise (an s3:// output, another machine's path)."""
        from farm.report_html import html_report_path

        job = self.queue.jobs.get(job_id)
        if job is None or job.state is not QueueState.DONE or not job.output or "://" in job.output:
            return None
        path = html_report_path(job.output) if what == "report" else job.output
        return str(path) if os.path.isfile(path) else None

    def start_ui(self, host: str = "127.0.0.1", port: int = 8266) -> str:
        """Serve the web UI (scheduler/webui.py) from this process; its URL. Kept across
        a restart of the manager."""
        with self._lock:
            if self.ui is not None:
                return self.ui.url
            before = (self.config.ui_host, self.config.ui_port)
            self.config.ui_host, self.config.ui_port = host, port
            try:
                url = self._start_ui()
            except (OSError, ValueError):
                self.config.ui_host, self.config.ui_port = before
                raise
            self._save()
            return url

    def ui_url(self) -> str | None:
        return None if self.ui is None else self.ui.url

    def _start_ui(self) -> str:
        from scheduler.auth import resolve_token
        from scheduler.webui import UIServer

        token = resolve_token()
        self.ui = UIServer(self, self.config.ui_host, self.config.ui_port, token.value if token else None).start()
        self._event("web UI", url=self.ui.url)
        return self.ui.url

    def shutdown(self) -> int:
        """Stop every pool actor and forget the queue (`farm manager stop`)."""
        with self._lock:
            self._stopping = True
            if self.ui is not None:
                self.ui.stop()
            handles = list(self.handles.values()) + [h for _, h, _ in self.pending.values()]
            for handle in handles:
                ray.kill(handle, no_restart=True)
            self.handles.clear()
            self.pending.clear()
            _kv_del()
            return len(handles)

    def events_log(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    # -- the periodic checks ---------------------------------------------------------------
    def _tick_loop(self) -> None:
        while not self._stopping:
            time.sleep(TICK_S)
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad tick
                log.exception("farm manager tick failed")

    def _tick(self) -> None:
        with self._lock:
            if self._stopping:
                return
            now, changed = time.time(), False
            if self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
                for ref in ready:
                    name, handle, _ = self.pending.pop(ref)
                    try:
                        info = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        self.queue.actor_failed_to_start()
                        self._event("actor failed to start", actor=name, error=str(err).splitlines()[0])
                        changed = True
                        continue
                    self.handles[name] = handle
                    self.queue.actor_ready(name, info["node"], now)
                    self._event("actor ready", actor=name, node=info["node"][:12])
                    changed = True
                for ref, (name, handle, since) in list(self.pending.items()):
                    if now - since > self.config.start_timeout_s:  # never placed: the cluster cannot hold it
                        del self.pending[ref]
                        ray.kill(handle, no_restart=True)
                        self.queue.actor_failed_to_start()
                        self._event("actor gave up", actor=name,
                                    why=f"not up after {self.config.start_timeout_s:g}s (no room on the cluster?)")
                        changed = True
            self._prefetch(now)
            for job_id in self.queue.expired(now, self.config.lease_timeout_s):
                freed = self.queue.end(job_id, QueueState.LOST, now)
                self.staged.pop(job_id, None)
                self.staged_env.pop(job_id, None)
                self._event("lost", job=job_id, actors=freed,
                            why=f"no heartbeat for {self.config.lease_timeout_s:g}s")
                changed = True
            stopped = self.queue.idle_expired(now, self.config.idle_timeout_s)
            for name in stopped:
                handle = self.handles.pop(name, None)
                if handle is not None:
                    ray.kill(handle, no_restart=True)
                self._event("idle actor stopped", actor=name)
                changed = True
            if stopped and self.config.gpus_per_actor:
                self._request_gpus()  # the autoscaler may now remove their nodes
            if changed:
                self._plan(True)

    # -- carrying out the queue's decisions ------------------------------------------------
    def _plan(self, changed: bool = False) -> None:
        """Ask the queue what to do now and do it; save the state if anything changed."""
        if self._stopping:
            return
        t0 = time.perf_counter()
        plan = self.queue.plan()
        self.decisions += 1
        self.decision_seconds += time.perf_counter() - t0
        for name, job, warm in plan.grants:
            self._event("lent", actor=name, job=job, warm=warm)
        for name, job in plan.moves:
            self._event("recalled", actor=name, job=job)
        for _ in range(plan.start):
            self._start_actor()
        if plan.start and self.config.gpus_per_actor:
            self._request_gpus()
        if changed or plan.grants or plan.moves or plan.start:
            self._save()

    def _start_actor(self) -> None:
        from actors.pipeline import pipeline_actor_class
        from scheduler.cluster import ACTOR_MAX_RESTARTS

        self.actor_seq += 1
        name = f"{ACTOR_PREFIX}{self.generation}-{self.actor_seq}"
        try:
            handle = pipeline_actor_class().options(
                name=name, namespace=NAMESPACE, lifetime="detached", max_restarts=ACTOR_MAX_RESTARTS,
                max_task_retries=0, **self.config.actor_options()).remote(None, self.config.threads,
                                                                          self.config.max_models)
        except Exception as err:  # noqa: BLE001 - Ray refused the actor: count it out, say why
            self.queue.actor_failed_to_start()
            self._event("actor failed to start", actor=name, error=str(err).splitlines()[0])
            return
        self.pending[handle.info.remote()] = (name, handle, time.time())
        self._event("actor starting", actor=name)

    def _prefetch(self, now: float) -> None:
        """With `prefetch` on: every node that can hold a pool actor gets the staged models
        of the queued and running jobs into its cache (farm/models/nodecache.py), one Ray
        task per node, while the jobs wait or before their pipelines load there (a node
        the autoscaler adds is fetched onto as soon as it joins). An actor that loads a
        model meanwhile waits on the node's lock and reads the same copy."""
        if not self.config.prefetch or now - self._prefetch_checked < PREFETCH_CHECK_S:
            return
        self._prefetch_checked = now
        for node, ref in list(self.prefetching.items()):
            if not ray.wait([ref[0]], timeout=0)[0]:
                continue
            del self.prefetching[node]
            try:
                done = ray.get(ref[0])["models"]
                self.prefetched.setdefault(node, set()).update(done)
                self._event("prefetched", node=node[:12], models={u: r["from"] for u, r in done.items()})
            except ray.exceptions.RayError as err:
                self.prefetched.setdefault(node, set()).update(ref[1])  # not again: the loads will say why
                self._event("prefetch failed", node=node[:12], error=str(err).splitlines()[-1][:300])
        wanted = {u for uris in self.staged.values() for u in uris}
        if not wanted:
            return
        from scheduler.node_models import prefetch

        env = {k: v for job in self.staged_env.values() for k, v in job.items()}
        for node in self._pool_nodes():
            missing = sorted(wanted - self.prefetched.get(node, set()))
            if missing and node not in self.prefetching:
                self.prefetching[node] = (prefetch(node, missing, env), missing)
                self._event("prefetching", node=node[:12], models=missing)

    def _pool_nodes(self) -> list[str]:
        """The alive nodes with the resources a pool actor asks for."""
        needs = {k: v for k, v in self.config.actor_options().get("resources", {}).items()}
        if self.config.gpus_per_actor:
            needs["GPU"] = self.config.gpus_per_actor
        return [n["NodeID"] for n in ray.nodes()
                if n.get("Alive") and all(n.get("Resources", {}).get(k, 0) >= v for k, v in needs.items())]

    def _request_gpus(self) -> None:
        """Ask the autoscaler for a GPU bundle per pool actor (started or starting)."""
        from ray.autoscaler.sdk import request_resources

        shape = {"GPU": self.config.gpus_per_actor, "CPU": 1}
        request_resources(bundles=[shape] * (len(self.handles) + len(self.pending)))

    def _forget(self, name: str) -> None:
        """A driver found this actor dead (or blocklisted it): out of the pool, for good."""
        handle = self.handles.pop(name, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)
            self._event("actor lost", actor=name)

    def _event(self, what: str, **fields) -> None:
        self.events.append({"t": round(time.time(), 3), "event": what} | fields)

    # -- state in the GCS -------------------------------------------------------------------
    def _save(self) -> None:
        if self._stopping:
            return  # `farm manager stop` removed the state: nothing may write it back
        state = {"config": asdict(self.config), "queue": self.queue.to_dict(), "generation": self.generation,
                 "actor_seq": self.actor_seq, "restarts": self.restarts,
                 "pending": [name for name, _, _ in self.pending.values()]}
        _kv_put(state)

    def _recover(self, saved: dict) -> None:
        self.config = ManagerConfig(**saved["config"])
        self.queue = FarmQueue.from_dict(saved["queue"])
        self.generation, self.actor_seq = saved["generation"], saved["actor_seq"]
        self.restarts = saved["restarts"] + 1
        now = time.time()
        for name in list(self.queue.actors):
            try:
                self.handles[name] = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:  # it died with (or before) the manager
                del self.queue.actors[name]
        self.queue.starting = 0
        for name in saved["pending"]:
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                continue
            self.queue.starting += 1
            self.pending[handle.info.remote()] = (name, handle, now)
        for job in self.queue.jobs.values():
            if job.state.active:
                job.last_beat = now  # a full lease from now: its driver could not reach us
        self._event("manager restarted", restarts=self.restarts, actors=len(self.handles),
                    jobs=sum(j.state.active for j in self.queue.jobs.values()))
        self._save()


def _kv_put(state: dict) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(_KV_KEY, json.dumps(state).encode(), overwrite=True, namespace=NAMESPACE)


def _kv_get() -> dict | None:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_KV_KEY, namespace=NAMESPACE)
    return json.loads(raw) if raw else None


def _kv_del() -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(_KV_KEY, namespace=NAMESPACE)


def manager_class():
    return ray.remote(FarmManager)


# -- for drivers and the CLI (joined to the cluster) ---------------------------------------
def find_manager():
    """The running manager's handle, or None."""
    try:
        return ray.get_actor(MANAGER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def default_config(max_actors: int | None = None, threads: int | None = None, gpus_per_actor: float | None = None,
                   **fields) -> ManagerConfig:
    """The pool's shape on this cluster: one actor per GPU on a GPU cluster (or `max_actors`
    of `gpus_per_actor` each, for an autoscaling cluster with no GPU node yet); on a CPU
    cluster, half the cores (at most 4 actors) as for a private job, one CPU left free for
    the segment tasks."""
    from scheduler.cluster import Session, pool_shape

    res = ray.cluster_resources()
    session = Session(False, int(res.get("GPU", 0)), int(res.get("CPU", 0)))
    gpus = (1.0 if session.gpus else 0.0) if gpus_per_actor is None else gpus_per_actor
    workers, threads = pool_shape(session, max_actors, threads, reserved_cpus=1, gpus_per_worker=gpus)
    return ManagerConfig(max_actors=workers, threads=threads, gpus_per_actor=gpus, **fields)


def start_manager(config: ManagerConfig | None = None) -> tuple[object, bool]:
    """The manager, started if none runs (from a driver joined to the cluster). Returns
    (handle, started here)."""
    existing = find_manager()
    if existing is not None:
        return existing, False
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    config = config or default_config()
    head = _head_node()  # its web UI binds there; the GCS holding its state is there too
    placement = {"scheduling_strategy": NodeAffinitySchedulingStrategy(head, soft=True)} if head else {}
    handle = manager_class().options(
        name=MANAGER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=-1, max_concurrency=64, num_cpus=0, **placement).remote(asdict(config))
    try:
        ray.get(handle.snapshot.remote(), timeout=120)
    except ray.exceptions.RayError as err:
        raise ClusterError(f"the farm manager did not start: {err}") from err
    return handle, True


def _head_node() -> str | None:
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeID"]
    return None


def stop_manager() -> int | None:
    """Stop the manager and its pool; None when none runs. Returns how many pool actors
    were stopped."""
    handle = find_manager()
    if handle is None:
        return None
    try:
        stopped = ray.get(handle.shutdown.remote(), timeout=60)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as err:
        raise ClusterError(f"the farm manager did not stop its pool: {str(err).splitlines()[0]}") from err
    ray.kill(handle, no_restart=True)
    return stopped
