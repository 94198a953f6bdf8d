"""A job's side of the shared farm: the pipeline actors the farm manager lends it.

The driver registers its job with the manager (scheduler/manager.py), then a thread of
its own heartbeats every `HEARTBEAT_S` with the actors it holds and its progress. Each
reply is the manager's word on which actors the job holds now, and which of them must
go back (`moving`: a job of higher priority waits for them).

The pool loop brings the replies in (`sync`, before each of its waits): a newly lent
actor is told the job's pipeline (`use`: warm, or loaded now) and joins the pool; an
actor asked back gets no new window and is handed back once its current window is done,
which is the window boundary where preemption happens. Windows already rendered stay
with the job; a job left with no actor waits for the manager to lend it one again.

A co-denoised job's shards are cut for its actors, so its set changes only at a whole
checkpoint: there `wants_reshape` says whether it changes (recalled actors to leave, newly
lent ones loaded and ready to join), the calls in flight finish, and `reshape` hands the
leaving ones back and cuts the shards again; its frames do not depend on how many actors
it has. An actor recalled before it ever worked for the job goes back at once.

If the manager cannot be reached (it is restarting), the job keeps its actors and goes
on rendering; the heartbeat tries again. A job that the manager ended (its lease expired)
stops with ClusterError; a job someone asked the manager to stop (from the web UI)
stops as Ctrl-C stops it (`StoppedByFarm`): STOPPED, its actors handed back.

The driver also tells the manager what the people watching need: its progress (windows,
or a co-denoised job's steps, through `watch(progress)`) and, every `PREVIEW_EVERY_S`, a
small JPEG of the latest frame it finished (`Previews`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayError

from farm.errors import ClusterError
from farm.models.sources import credentials_env, staged_models
from scheduler.manager import HEARTBEAT_S
from scheduler.progress import NullProgress

#: How long one call to the manager may take before the driver gives up on it (for now).
CALL_TIMEOUT_S = 10.0
#: How long a co-denoised job waits, after its first actor, for the others it wants before
#: it starts (later ones join at a checkpoint).
JOIN_WAIT_S = 5.0
#: How long a driver keeps trying to tell the manager its job ended.
FINISH_TRIES_S = 60.0
#: How often a driver sends the manager a thumbnail of its latest finished frame.
PREVIEW_EVERY_S = float(os.environ.get("FARM_PREVIEW_EVERY_S", "2"))
#: Longest side of a preview thumbnail, in pixels.
PREVIEW_SIZE = 160


class StoppedByFarm(KeyboardInterrupt):
    """Someone asked the farm manager to stop this job: the driver ends it STOPPED, as
    Ctrl-C does."""


class Lease:
    def __init__(self, manager, job_id: str, spec, key: str, *, priority: int, wants: int, latent: bool = False,
                 label: str = "", model_name: str = "", windows_total: int = 0, submitter: str = "",
                 prompt: str = "", output: str = ""):
        self.manager, self.job_id, self.key = manager, job_id, key
        self.priority = priority
        self.registered_at = time.time()
        self.priorities = [{"priority": priority, "at": 0.0}]  # its priority over time (`farm priority`)
        self._register = dict(priority=priority, model=key, wants=wants, latent=latent, label=label,
                              model_name=model_name, windows_total=windows_total, submitter=submitter,
                              prompt=prompt, output=output, staged=staged_models(spec),
                              env=credentials_env() if staged_models(spec) else {})
        reply = _get(manager.register.remote(job_id, **self._register), "register the job")
        self.config = reply["config"]
        self.wants = min(wants, self.config["max_actors"])
        self.spec_ref = ray.put(spec)  # every window names the job's pipeline: shipped once
        self.env = credentials_env()  # for the actors' model fetches, with each `use` call
        self._lock = threading.Lock()
        self._desired: dict[str, dict] = {}  # the manager's last word: name → {handle, node, moving}
        self._held: set[str] = set()  # what the next heartbeat says the job holds
        self._dead: set[str] = set()
        self._fixed: list[str] = []  # a co-denoised job's actors, in shard order
        self._current: dict[str, dict] = {}  # a co-denoised job's lends of now, by actor
        self._epoch = 0  # bumped by every hand-back: a reply to an older heartbeat is stale
        self.state = "QUEUED"
        self.stop_requested = False
        self.windows_done = 0
        self.steps = (0, 0)  # a co-denoised job's steps (done, total)
        self.lends: list[dict] = []  # every actor lent to the job: name, node, when, its use() ref
        self.recalled = 0
        self.unreachable = 0  # heartbeats the manager did not answer
        self.first_lent_at: float | None = None
        self.first_window_at: float | None = None  # when its first rendered window started
        self._closed = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._beat_loop, name=f"farm-lease-{job_id}", daemon=True)
        self._thread.start()
        self._old_sigterm = _stop_on_sigterm()

    # -- the heartbeat thread ------------------------------------------------------------
    def _beat_loop(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            if not ray.is_initialized():  # the driver left Ray: a call now would start a new one
                return
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a silent driver would lose its actors: keep beating
                self.unreachable += 1
                logging.getLogger(__name__).exception("farm heartbeat failed")

    def _beat(self) -> None:
        with self._lock:
            held = self._held | set(self._desired)
            held, dead, epoch = sorted(held), tuple(self._dead), self._epoch
        try:
            reply = ray.get(self.manager.heartbeat.remote(self.job_id, held, self.windows_done, self._loading(held),
                                                          dead, self.steps), timeout=CALL_TIMEOUT_S)
            if reply["state"] == "UNKNOWN":  # a manager that lost its queue: queue again
                _get(self.manager.register.remote(self.job_id, **self._register), "register the job again")
                return
        except (RayError, GetTimeoutError):
            self.unreachable += 1  # restarting: keep the actors, keep rendering, ask again
            return
        with self._lock:
            self._dead -= set(dead)
            self.state = reply["state"]
            self.stop_requested = bool(reply.get("stop"))
            if reply.get("priority", self.priority) != self.priority:  # `farm priority` changed it
                self.priority = reply["priority"]
                self.priorities.append({"priority": self.priority, "at": _since(time.time(), self.registered_at)})
            if epoch == self._epoch:
                self._desired = reply["actors"]
                if reply["actors"] and self.first_lent_at is None:
                    self.first_lent_at = time.time()  # the manager's answer that lends the first

    # -- the pool loop -------------------------------------------------------------------
    def wait_for_actors(self, on_wait=lambda note: None) -> None:
        """Block until the manager lends the job its first actor (a queued job waits as
        long as jobs of higher priority, or older ones of its own, hold the farm)."""
        while True:
            self._check_ended()
            with self._lock:
                if self._desired:
                    return
            on_wait(f"queued in the farm (priority {self.priority}); waiting for an actor")
            time.sleep(HEARTBEAT_S / 2)

    def sync(self, pool) -> None:
        """Bring the manager's word into `pool`: lend new actors, retire recalled ones, hand
        back those whose window is done."""
        self._check_ended()
        with self._lock:
            desired = dict(self._desired)
        in_pool = set(pool.names())
        for name, actor in desired.items():
            if name not in in_pool and not actor["moving"]:
                self._lend(name, actor)
                pool.add(actor["handle"], {"actor": name, "node": actor["node"]})
        for name in in_pool:
            if name not in desired or desired[name]["moving"]:
                pool.retire(name)
        unused = [n for n, a in desired.items() if a["moving"] and n not in in_pool]  # recalled before it worked
        back = pool.drained()
        self.recalled += sum(1 for n in back if n in desired and desired[n]["moving"]) + len(unused)
        self._hand_back(back + unused)
        with self._lock:
            self._dead |= set(pool.lost())
            self._held = set(pool.names())

    def _loading(self, held: list[str]) -> int:
        """Of the actors the job holds, those without its pipeline yet (`farm queue` shows
        them): lent cold (the manager knows which actors hold which pipelines) and not taken
        in, or taken in and still loading it."""
        taken = {(lend["actor"], lend["grant"]): lend for lend in list(self.lends)}  # the pool loop appends
        with self._lock:
            desired = dict(self._desired)

        def loading(name: str) -> bool:
            lent = desired.get(name)
            if lent is None:
                return False  # on its way back to the pool
            if lent["warm"]:
                return False  # it holds the pipeline already
            lend = taken.get((name, lent["grant"]))
            return lend is None or not _ready(lend)

        return sum(1 for name in held if loading(name))

    # -- a co-denoised job: its actors change only at checkpoints ----------------------------
    def take_all(self) -> tuple[list, list[dict]]:
        """A co-denoised job's first actors: the ones it wants, or those lent within
        JOIN_WAIT_S of the first, once their pipelines are loaded. From then on the set
        changes only at checkpoints (`reshape`)."""
        deadline = time.monotonic() + JOIN_WAIT_S
        while time.monotonic() < deadline:
            self._check_ended()
            with self._lock:
                if sum(not a["moving"] for a in self._desired.values()) >= self.wants:
                    break
            time.sleep(HEARTBEAT_S / 2)
        self._fixed = []
        return self._take()

    def wants_reshape(self) -> bool:
        """At a whole checkpoint of a co-denoised job: whether its set of actors changes
        there (recalled actors leave; lent actors whose pipeline is loaded join). Newly lent
        actors start loading now, to join at a later checkpoint; those recalled before they
        joined go straight back."""
        self._check_ended()
        desired = self._desired_now()
        self._lend_new(desired)
        return bool(self._leaving(desired) or self._joining(desired))

    def reshape(self) -> tuple[list, list[dict]]:
        """After the calls in flight have finished: hand back the leaving actors and go on
        with the rest and the joining ones. With every actor recalled, wait here for the
        manager to lend one again."""
        desired = self._desired_now()
        leaving, joining = self._leaving(desired), self._joining(desired)
        self._fixed = [n for n in self._fixed if n not in leaving] + joining
        self._hand_back(leaving)
        self.recalled += len(leaving)
        return self._actors() if self._fixed else self._take()

    def _desired_now(self) -> dict:
        with self._lock:
            return dict(self._desired)

    def _lend_new(self, desired: dict) -> None:
        """Start loading newly lent actors; hand back at once those recalled before they
        ever worked for the job."""
        for name, actor in desired.items():
            if name not in self._current and not actor["moving"]:
                self._current[name] = self._lend(name, actor)
        unused = [n for n, a in desired.items() if a["moving"] and n not in self._fixed]
        self.recalled += len(unused)
        self._hand_back(unused)

    def _leaving(self, desired: dict) -> list[str]:
        return [n for n in self._fixed if n not in desired or desired[n]["moving"]]

    def _joining(self, desired: dict) -> list[str]:
        return [n for n in self._current if n not in self._fixed and n in desired
                and not desired[n]["moving"] and _ready(self._current[n])]

    def _take(self) -> tuple[list, list[dict]]:
        """Wait until at least one lent actor has the job's pipeline; take every one that
        has. An actor that died meanwhile is left out (and reported dead)."""
        while True:
            self._check_ended()
            desired = self._desired_now()
            self._lend_new(desired)
            for name in [n for n in self._current if n in desired and not desired[n]["moving"]]:
                try:
                    _get(self._current[name]["use"], "load the job's pipeline")
                except ClusterError:
                    with self._lock:
                        self._dead.add(name)
                        self._desired.pop(name, None)
                    del self._current[name]
                    continue
                self._fixed.append(name)
            if self._fixed:
                return self._actors()
            time.sleep(HEARTBEAT_S / 2)

    def _actors(self) -> tuple[list, list[dict]]:
        with self._lock:
            self._held = set(self._fixed)
        lends = [self._current[n] for n in self._fixed]
        return [lend["handle"] for lend in lends], [_get(lend["use"], "load the job's pipeline") for lend in lends]

    def _hand_back(self, names: list[str]) -> None:
        """Give actors back to the manager, each named with its lending (`grant`)."""
        if not names:
            return
        with self._lock:
            self._epoch += 1
            lent = [(name, self._desired.pop(name, {}).get("grant")) for name in names]
            for name in names:
                self._current.pop(name, None)
        self.manager.release.remote(self.job_id, [(name, grant) for name, grant in lent if grant is not None])

    def _lend(self, name: str, actor: dict) -> dict:
        now = time.time()
        lend = {"actor": name, "node": actor["node"], "lent_at": now, "handle": actor["handle"],
                "grant": actor.get("grant"), "use": actor["handle"].use.remote(self.spec_ref, self.key, self.env)}
        self.lends.append(lend)
        return lend

    def _check_ended(self) -> None:
        if self.stop_requested:
            raise StoppedByFarm(f"job {self.job_id} was stopped through the farm manager")
        if self.state in ("LOST", "STOPPED", "FAILED", "DONE"):
            raise ClusterError(f"the farm manager ended job {self.job_id} ({self.state}): "
                               + ("its driver was silent for longer than the lease"
                                  if self.state == "LOST" else "it was stopped"))

    # -- what the people watching see ---------------------------------------------------------
    def watch(self, progress):
        """`progress` with the co-denoised job's steps copied here for the heartbeat."""
        return _Watched(progress, self)

    def previews(self) -> "Previews":
        return Previews(lambda frame, jpeg: self.manager.publish_preview.remote(self.job_id, frame, jpeg))

    # -- the end -------------------------------------------------------------------------
    def window_started(self, at: float) -> None:
        self.first_window_at = at if self.first_window_at is None else min(at, self.first_window_at)

    def close(self, state: str) -> None:
        """Tell the manager the job ended (the actors go back to the pool, warm); retried
        for a while if the manager is restarting."""
        self._closed.set()
        _restore_sigterm(self._old_sigterm)
        deadline = time.monotonic() + FINISH_TRIES_S
        while True:
            try:
                ray.get(self.manager.finish.remote(self.job_id, state, self.windows_done), timeout=CALL_TIMEOUT_S)
                return
            except ActorDiedError:
                return  # `farm manager stop`: nobody left to tell
            except (RayError, GetTimeoutError):
                if time.monotonic() > deadline:
                    return  # its lease expires; the manager reclaims the actors
                time.sleep(HEARTBEAT_S)

    def actor_infos(self) -> list[dict]:
        """Each actor the job was lent, as the report's `actors` lists them: its info, whether
        its pipeline was warm, what loading it cost, when it was lent."""
        out = []
        for lend in self.lends:
            if "info" not in lend:
                try:
                    lend["info"] = ray.get(lend["use"], timeout=CALL_TIMEOUT_S)
                except (RayError, GetTimeoutError) as err:
                    lend["info"] = {"actor": lend["actor"], "node": lend["node"], "error": str(err).splitlines()[0]}
            out.append(lend["info"] | {"farm_actor": lend["actor"],
                                       "lent_at": round(lend["lent_at"] - self.registered_at, 4)})
        return out

    def report(self) -> dict:
        """The report's `farm` block: the job's place in the farm and what its actors cost."""
        infos = self.actor_infos()
        return {
            "job_id": self.job_id,
            "priority": self.priority,  # the last one
            "priorities": self.priorities,  # every one it had, from registration: [{priority, at (seconds)}]
            "pipeline_key": self.key,
            "queued_seconds": _since(self.first_lent_at, self.registered_at),
            "first_window_seconds": _since(self.first_window_at, self.registered_at),
            "registered_at": self.registered_at,
            "lent": len(infos),
            "warm": sum(1 for i in infos if i.get("warm")),
            "loads": sum(1 for i in infos if i.get("warm") is False),
            "load_seconds": round(sum(i.get("load_seconds") or 0.0 for i in infos if i.get("warm") is False), 3),
            "recalled": self.recalled,
            "manager_unreachable_heartbeats": self.unreachable,
        }


class _Watched(NullProgress):
    """A driver's progress display that also tells the lease the steps done."""

    def __init__(self, inner: NullProgress, lease: Lease):
        self.inner, self.lease = inner, lease

    def steps_done(self, done: int, total: int) -> None:
        self.lease.steps = (done, total)
        self.inner.steps_done(done, total)

    def stage(self, name: str) -> None:
        self.inner.stage(name)

    def windows_total(self, n: int) -> None:
        self.inner.windows_total(n)

    def window_done(self, result) -> None:
        self.inner.window_done(result)

    def window_cached(self, index: int) -> None:
        self.inner.window_cached(index)

    def window_failed(self, index: int, error: str, retrying: bool) -> None:
        self.inner.window_failed(index, error, retrying)

    def frames_total(self, n: int) -> None:
        self.inner.frames_total(n)

    def frames_written(self, n: int) -> None:
        self.inner.frames_written(n)

    def notice(self, text: str) -> None:
        self.inner.notice(text)

    def close(self) -> None:
        self.inner.close()


class Previews:
    """Every PREVIEW_EVERY_S, a thumbnail of the frame just finished goes to `publish`
    (frame index, JPEG bytes): only frames the driver has anyway, sampled, not resized."""

    def __init__(self, publish, every_s: float | None = None, size: int = PREVIEW_SIZE):
        self.publish, self.size = publish, size
        self.every_s = PREVIEW_EVERY_S if every_s is None else every_s
        self._last = None

    def offer(self, index: int, frame) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return
        from farm.filmstrip import jpeg_bytes
        from farm.util import thumbnail

        self._last = now
        self.publish(index, jpeg_bytes(thumbnail(frame, self.size), quality=80))


def _ready(lend: dict) -> bool:
    """Whether the actor of `lend` has its pipeline (its use() call is done)."""
    if not lend.get("ready"):
        lend["ready"] = bool(ray.wait([lend["use"]], timeout=0)[0])
    return lend["ready"]


def _since(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 4)


def _get(ref, what: str):
    try:
        return ray.get(ref, timeout=120)
    except (RayError, GetTimeoutError) as err:
        raise ClusterError(f"could not {what} with the farm manager: {str(err).splitlines()[0]}") from err


def _stop_on_sigterm():
    """`farm stop` and `ray job stop` send SIGTERM: end the job as Ctrl-C would, so its
    actors go back to the pool at once instead of when the lease runs out."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt("stopped (SIGTERM)")

    return signal.signal(signal.SIGTERM, stop)


def _restore_sigterm(old) -> None:
    if old is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, old)
