"""Every window and job status, and every legal move between them, in one place.

    window:  PENDING ──► RUNNING ──► DONE
                │           │
                │           ├──► PENDING   (the attempt failed and retries are left)
                │           └──► FAILED    (the attempt failed and the budget is spent)
                └──► CACHED                (found, verified, in the window store)
             DONE, CACHED ──► PENDING      (segment path: its frames were lost with their
                                            node before every segment reading them was done)

    job:     PENDING ──► RUNNING ──► DONE | FAILED

    a job in the farm manager's queue (farm/farmqueue.py):
             QUEUED ◄──► RUNNING          (holds actors; back to QUEUED when preempted to none)
             QUEUED, RUNNING ──► DONE | FAILED | STOPPED | LOST
                                           (LOST: its driver stopped answering; its actors were reclaimed)

A window's attempts are 1 + the retries it used. `Ledger` holds one job's windows and is
the only code that changes their status; an illegal move raises at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class WindowState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    CACHED = "CACHED"
    FAILED = "FAILED"


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


class QueueState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    LOST = "LOST"

    @property
    def active(self) -> bool:
        return self in (QueueState.QUEUED, QueueState.RUNNING)


_QUEUE_ENDS = {QueueState.DONE, QueueState.FAILED, QueueState.STOPPED, QueueState.LOST}
_QUEUE_MOVES = {
    QueueState.QUEUED: {QueueState.RUNNING} | _QUEUE_ENDS,
    QueueState.RUNNING: {QueueState.QUEUED} | _QUEUE_ENDS,
    **{end: set() for end in _QUEUE_ENDS},
}


def queue_move(old: QueueState, new: QueueState) -> QueueState:
    """The farm queue's job status after moving from `old` to `new` (the same status is
    no move); an illegal move raises."""
    if old is not new and new not in _QUEUE_MOVES[old]:
        raise IllegalTransition(f"queued job: {old.value} -> {new.value}")
    return new


_WINDOW_MOVES = {
    WindowState.PENDING: {WindowState.RUNNING, WindowState.CACHED},
    WindowState.RUNNING: {WindowState.DONE, WindowState.PENDING, WindowState.FAILED},
    WindowState.DONE: {WindowState.PENDING},
    WindowState.CACHED: {WindowState.PENDING},
    WindowState.FAILED: set(),
}
_JOB_MOVES = {
    JobState.PENDING: {JobState.RUNNING, JobState.FAILED},
    JobState.RUNNING: {JobState.DONE, JobState.FAILED},
    JobState.DONE: set(),
    JobState.FAILED: set(),
}

#: Retries per window unless the job says otherwise.
DEFAULT_RETRIES = 3


class IllegalTransition(RuntimeError):
    """A bug: some code tried a status change the state machine does not allow."""


@dataclass
class Failure:
    """One failed attempt: where it ran and why it failed."""

    actor: str
    node: str
    error: str
    lost: bool  # the actor or node was lost (vs. the pipeline raised)
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict:
        return {"actor": self.actor, "node": self.node, "error": self.error, "lost": self.lost,
                "started_at": self.started_at, "finished_at": self.finished_at}


@dataclass
class WindowStatus:
    index: int
    state: WindowState = WindowState.PENDING
    attempts: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def last_error(self) -> str | None:
        return self.failures[-1].error if self.failures else None


class Ledger:
    """The status of each window of one job, and the job's own status."""

    def __init__(self, indices, retries: int = DEFAULT_RETRIES):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries = retries
        self.windows = {i: WindowStatus(i) for i in indices}
        self.state = JobState.PENDING
        self._failed: list[WindowStatus] = []  # asked after every window: kept, not searched

    # -- the job ---------------------------------------------------------------------------
    def job(self, new: JobState) -> None:
        if new not in _JOB_MOVES[self.state]:
            raise IllegalTransition(f"job: {self.state.value} → {new.value}")
        self.state = new

    # -- its windows -----------------------------------------------------------------------
    def _move(self, index: int, new: WindowState) -> WindowStatus:
        w = self.windows[index]
        if new not in _WINDOW_MOVES[w.state]:
            raise IllegalTransition(f"window {index}: {w.state.value} → {new.value}")
        w.state = new
        if new is WindowState.FAILED:
            self._failed.append(w)
        return w

    def cached(self, index: int) -> None:
        self._move(index, WindowState.CACHED)

    def start(self, index: int) -> None:
        self._move(index, WindowState.RUNNING).attempts += 1

    def done(self, index: int) -> None:
        self._move(index, WindowState.DONE)

    def failed_attempt(self, index: int, failure: Failure, final: bool = False) -> bool:
        """Record a failed attempt. True: the window goes back to the queue; False: it has
        used 1 + retries attempts, or the failure is `final`, and it is FAILED."""
        w = self.windows[index]
        w.failures.append(failure)
        retry = w.attempts <= self.retries and not final
        self._move(index, WindowState.PENDING if retry else WindowState.FAILED)
        return retry

    def requeue(self, index: int) -> None:
        """The attempt was cut short by us (its actor was blocklisted mid-window): back to
        the queue, and the attempt does not count."""
        self._move(index, WindowState.PENDING).attempts -= 1

    def lost(self, index: int) -> None:
        """A finished window's frames were lost with their node before they were encoded
        (the segment path keeps them in Ray's object store): back to the queue, to be read
        from the store or rendered again (another attempt)."""
        if self.windows[index].state not in (WindowState.DONE, WindowState.CACHED):
            raise IllegalTransition(f"window {index}: {self.windows[index].state.value} is not finished")
        self._move(index, WindowState.PENDING)

    def in_state(self, state: WindowState) -> list[int]:
        return [i for i, w in self.windows.items() if w.state is state]

    @property
    def failed(self) -> list[WindowStatus]:
        return self._failed
