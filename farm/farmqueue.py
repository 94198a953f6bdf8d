"""The shared farm's queue and its policy: which job gets which actor. Pure: no Ray.

The farm manager (scheduler/manager.py) holds a `FarmQueue` and carries out what it
decides; unit tests drive it directly, with a clock they own.

Rules, in the order `FarmQueue.plan` applies them:

1. Jobs are served in order of priority (0-100, higher first), then submission.
2. Each job is granted idle actors up to the number it wants: first the actors that
   already hold its pipeline (warm, most recently used first), then the actor whose
   pipelines were used least recently (it loads the job's pipeline, evicting its least
   recently used one when it already holds `max_models`).
3. Demand that idle actors cannot meet starts new actors, up to `max_actors`.
4. Demand still left preempts: actors of running jobs of strictly lower priority (the
   lowest first, the newest of equals first) are asked to move; each moves when its
   current window is done, becomes idle, and rule 2 hands it on. Jobs of equal priority
   never preempt each other: they run in submission order. A co-denoised (latent) job
   gives its actors back at its next checkpoint rather than its next window (its shards
   are cut again for the actors it has left).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from farm.states import QueueState, queue_move

#: Ended jobs the queue keeps (for `farm queue`), the most recent.
KEEP_ENDED = 100
#: Priority of a job submitted without one.
DEFAULT_PRIORITY = 50
PRIORITY_RANGE = (0, 100)


@dataclass
class QueuedJob:
    """One job as the farm manager sees it."""

    id: str
    priority: int
    seq: int  # submission order
    model: str  # the pipeline key: which loaded pipeline renders its windows
    wants: int  # actors it would use at most
    submitted: float
    latent: bool = False
    label: str = ""
    model_name: str = ""  # the pipeline, for people: "animatediff emilianJR/epiCRealism"
    state: QueueState = QueueState.QUEUED
    windows_done: int = 0
    windows_total: int = 0
    loading: int = 0  # of its actors, those still loading its pipeline
    last_beat: float = 0.0
    ended: float | None = None
    preempted: int = 0  # actors taken from it
    # for the people watching (`farm queue`, the web UI)
    submitter: str = ""  # user@host of whoever submitted it
    prompt: str = ""  # its (first) prompt, shortened
    output: str = ""  # the output path, as the driver wrote it
    steps_done: int = 0  # a co-denoised job's progress is in steps (all windows together)
    steps_total: int = 0
    stop_requested: bool = False  # the web UI asked its driver to stop it

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)

    def to_dict(self) -> dict:
        return asdict(self) | {"state": self.state.value}

    @classmethod
    def from_dict(cls, data: dict) -> QueuedJob:
        return cls(**(data | {"state": QueueState(data["state"])}))


@dataclass
class PoolActor:
    """One pipeline actor of the farm's pool."""

    name: str
    node: str = ""
    models: list[str] = field(default_factory=list)  # pipelines it holds, least recently used first
    holder: str | None = None  # the job it works for
    moving: bool = False  # asked to leave its holder at its next window boundary
    idle_since: float = 0.0
    granted_pending: bool = False  # granted; its holder has not been told yet
    grant: int = 0  # which lending this is: a hand-back names it, so a late one frees nothing
    warm: bool = False  # this lending's actor held its holder's pipeline already

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PoolActor:
        return cls(**data)


@dataclass(frozen=True)
class Plan:
    """What the manager must do now."""

    grants: tuple[tuple[str, str, bool], ...] = ()  # (actor, job, warm)
    moves: tuple[tuple[str, str], ...] = ()  # (actor, the job it leaves)
    start: int = 0  # new actors to start


def touch(models: list[str], model: str, capacity: int) -> tuple[list[str], list[str]]:
    """`models` (least recently used first) after using `model`, with at most `capacity`
    held; and the ones evicted to make room."""
    models = [m for m in models if m != model] + [model]
    cut = max(0, len(models) - capacity)
    return models[cut:], models[:cut]


class FarmQueue:
    """The jobs and the actors; `plan()` applies the module's rules and records the
    grants and moves it decides. Every change of a job's status goes through `_set`."""

    def __init__(self, max_actors: int, max_models: int = 1):
        if max_actors < 1 or max_models < 1:
            raise ValueError("max_actors and max_models must be at least 1")
        self.max_actors, self.max_models = max_actors, max_models
        self.jobs: dict[str, QueuedJob] = {}
        self.actors: dict[str, PoolActor] = {}
        self.starting = 0  # actors asked to start, not yet in `actors`
        self._seq = 0
        self._grants = 0

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, job_id: str, priority: int, model: str, wants: int, now: float, *, latent: bool = False,
               label: str = "", model_name: str = "", windows_total: int = 0, submitter: str = "",
               prompt: str = "", output: str = "") -> QueuedJob:
        """Queue a job (a job already queued under `job_id` is kept: a driver registering
        again after the manager restarted)."""
        if job_id in self.jobs and self.jobs[job_id].state.active:
            job = self.jobs[job_id]
            job.last_beat = now
            return job
        check_priority(priority)
        self._seq += 1
        job = QueuedJob(job_id, priority, self._seq, model, max(1, wants), now, latent, label, model_name,
                        windows_total=windows_total, last_beat=now, submitter=submitter, prompt=prompt[:300],
                        output=output)
        self.jobs[job_id] = job
        return job

    def set_priority(self, job_id: str, priority: int) -> QueuedJob:
        check_priority(priority)
        job = self._active(job_id, "; its priority no longer matters")
        job.priority = priority
        return job

    def request_stop(self, job_id: str) -> QueuedJob:
        """Ask a job's driver to stop it (it sees the request in its next heartbeat's reply
        and ends the job STOPPED, handing its actors back)."""
        job = self._active(job_id)
        job.stop_requested = True
        return job

    def progress(self, job: QueuedJob) -> dict:
        """What a progress bar shows: steps for a co-denoised job once it reports them,
        else windows."""
        if job.steps_total:
            return {"done": job.steps_done, "total": job.steps_total, "unit": "steps"}
        return {"done": job.windows_done, "total": job.windows_total, "unit": "windows"}

    def end(self, job_id: str, state: QueueState, now: float) -> list[str]:
        """The job ended (DONE, FAILED, STOPPED or LOST): its actors go back to the pool,
        warm. Returns their names."""
        job = self._job(job_id)
        if not job.state.active:
            return []
        freed = [a.name for a in self.actors.values() if a.holder == job_id]
        for name in freed:
            self._free(self.actors[name], now)
        self._set(job, state)
        job.ended, job.loading = now, 0
        ended = sorted((j for j in self.jobs.values() if not j.state.active), key=lambda j: j.ended or 0)
        for old in ended[:-KEEP_ENDED]:  # `farm queue` shows the most recent ones
            del self.jobs[old.id]
        return freed

    def beat(self, job_id: str, held: list[str], now: float, *, windows_done: int = 0, loading: int = 0,
             dead: tuple[str, ...] = (), steps: tuple[int, int] = (0, 0)) -> bool:
        """A driver's heartbeat: the actors it holds, its progress (windows; a co-denoised
        job's in `steps`, done and total). Actors the manager gave it that it no longer
        holds (it released them at a window boundary) go back to the pool; actors it found
        dead leave the pool. True if an actor changed hands."""
        job = self._job(job_id)
        job.last_beat, job.windows_done, job.loading = now, windows_done, loading
        job.steps_done, job.steps_total = steps
        changed = False
        for name in dead:
            changed |= self.actors.pop(name, None) is not None
        for actor in self.actors.values():
            if actor.holder == job_id and actor.name not in held and not actor.granted_pending:
                self._free(actor, now)
                changed = True
        self._settle(job)
        return changed

    def release(self, job_id: str, lent: list[tuple[str, int]], now: float) -> None:
        """The job hands these actors back, each (name, grant): a move it was asked for, or
        an actor it cannot use. A hand-back of an earlier lending of the same actor (it
        crossed a heartbeat that had freed it already) frees nothing."""
        for name, grant in lent:
            actor = self.actors.get(name)
            if actor is not None and actor.holder == job_id and actor.grant == grant:
                self._free(actor, now)
        if job_id in self.jobs:
            self._settle(self.jobs[job_id])

    def expired(self, now: float, lease_s: float) -> list[str]:
        """Active jobs whose driver has not been heard from for `lease_s`."""
        return [j.id for j in self.jobs.values() if j.state.active and now - j.last_beat > lease_s]

    def held_by(self, job_id: str) -> list[PoolActor]:
        return [a for a in self.actors.values() if a.holder == job_id]

    def tell(self, job_id: str) -> list[PoolActor]:
        """The actors `job_id` holds, as its driver is about to be told: from now on, one
        missing from its heartbeat has been released."""
        held = self.held_by(job_id)
        for actor in held:
            actor.granted_pending = False
        return held

    # -- actors ----------------------------------------------------------------------------
    def actor_ready(self, name: str, node: str, now: float) -> None:
        self.starting = max(0, self.starting - 1)
        self.actors[name] = PoolActor(name, node, idle_since=now)

    def actor_failed_to_start(self) -> None:
        self.starting = max(0, self.starting - 1)

    def idle_expired(self, now: float, idle_s: float) -> list[str]:
        """Idle actors unused for `idle_s`: removed from the pool (the manager stops them)."""
        gone = [a.name for a in self.actors.values() if a.holder is None and now - a.idle_since > idle_s]
        for name in gone:
            del self.actors[name]
        return gone

    # -- the policy ------------------------------------------------------------------------
    def active(self) -> list[QueuedJob]:
        return sorted((j for j in self.jobs.values() if j.state.active), key=lambda j: j.order)

    def plan(self) -> Plan:
        grants, moves = [], []
        idle = [a for a in self.actors.values() if a.holder is None]
        unmet: list[tuple[QueuedJob, int]] = []
        for job in self.active():
            need = job.wants - sum(1 for a in self.held_by(job.id) if not a.moving)
            while need > 0 and idle:
                actor = _best_idle(idle, job.model)
                idle.remove(actor)
                warm = job.model in actor.models
                actor.models, _ = touch(actor.models, job.model, self.max_models)
                self._grants += 1
                actor.holder, actor.granted_pending, actor.grant, actor.warm = job.id, True, self._grants, warm
                job.loading += not warm  # until its driver says otherwise: `farm queue` never shows it warm first
                grants.append((actor.name, job.id, warm))
                need -= 1
            self._settle(job)
            if need > 0:
                unmet.append((job, need))
        # demand left: moving actors are on their way to it, then new actors, then preemption
        supply = sum(1 for a in self.actors.values() if a.moving) + self.starting
        start = 0
        for job, need in unmet:
            covered = min(need, supply)
            supply, need = supply - covered, need - covered
            room = self.max_actors - len(self.actors) - self.starting - start
            new = min(need, max(0, room))
            start, need = start + new, need - new
            for actor in self._victims(job, need):
                actor.moving = True
                self.jobs[actor.holder].preempted += 1
                moves.append((actor.name, actor.holder))
        self.starting += start
        return Plan(tuple(grants), tuple(moves), start)

    def _victims(self, job: QueuedJob, need: int) -> list[PoolActor]:
        """Up to `need` actors to take from running jobs of lower priority: the lowest
        priority and newest first; within a job, those already holding `job`'s model."""
        if need <= 0:
            return []
        lower = sorted((j for j in self.active() if j.priority < job.priority),
                       key=lambda j: j.order, reverse=True)
        out = []
        for victim in lower:
            held = [a for a in self.held_by(victim.id) if not a.moving]
            held.sort(key=lambda a: job.model not in a.models)
            for actor in held[:need - len(out)]:
                out.append(actor)
            if len(out) >= need:
                break
        return out

    # -- what `farm queue` shows -------------------------------------------------------------
    def snapshot(self, now: float) -> dict:
        jobs = sorted(self.jobs.values(), key=lambda j: (not j.state.active, j.order))
        names = {j.model: j.model_name for j in self.jobs.values() if j.model_name}
        return {
            "jobs": [j.to_dict() | {"actors": [a.name for a in self.held_by(j.id)],
                                    "age_seconds": round(now - j.submitted, 1)} for j in jobs],
            "actors": [a.to_dict() | {"busy": a.holder is not None,
                                      "model_names": [names.get(m, m) for m in a.models]}
                       for a in self.actors.values()],
            "starting": self.starting,
            "max_actors": self.max_actors,
            "max_models": self.max_models,
        }

    def to_dict(self) -> dict:
        return {"max_actors": self.max_actors, "max_models": self.max_models, "seq": self._seq,
                "grants": self._grants, "starting": self.starting,
                "jobs": [j.to_dict() for j in self.jobs.values()],
                "actors": [a.to_dict() for a in self.actors.values()]}

    @classmethod
    def from_dict(cls, data: dict) -> FarmQueue:
        queue = cls(data["max_actors"], data["max_models"])
        queue._seq, queue._grants, queue.starting = data["seq"], data["grants"], data["starting"]
        queue.jobs = {j["id"]: QueuedJob.from_dict(j) for j in data["jobs"]}
        queue.actors = {a["name"]: PoolActor.from_dict(a) for a in data["actors"]}
        return queue

    # -- internals -----------------------------------------------------------------------------
    def _job(self, job_id: str) -> QueuedJob:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise KeyError(f"no job {job_id!r} in the farm queue") from None

    def _active(self, job_id: str, why: str = "") -> QueuedJob:
        job = self._job(job_id)
        if not job.state.active:
            raise KeyError(f"job {job_id} has ended ({job.state.value}){why}")
        return job

    def _free(self, actor: PoolActor, now: float) -> None:
        actor.holder, actor.moving, actor.granted_pending, actor.idle_since = None, False, False, now

    def _settle(self, job: QueuedJob) -> None:
        if job.state.active:
            holds = any(a.holder == job.id for a in self.actors.values())
            self._set(job, QueueState.RUNNING if holds else QueueState.QUEUED)

    def _set(self, job: QueuedJob, state: QueueState) -> None:
        job.state = queue_move(job.state, state)


def _best_idle(idle: list[PoolActor], model: str) -> PoolActor:
    """A warm actor (its model most recently used first); else the one whose pipelines
    were used least recently, the emptiest first."""
    warm = [a for a in idle if model in a.models]
    if warm:
        return max(warm, key=lambda a: (a.models.index(model), -a.idle_since))
    return min(idle, key=lambda a: (len(a.models), a.idle_since))


def check_priority(priority: int) -> None:
    low, high = PRIORITY_RANGE
    if not isinstance(priority, int) or isinstance(priority, bool) or not low <= priority <= high:
        raise ValueError(f"priority must be an integer from {low} to {high}, not {priority!r}")
