"""The co-denoising loop (`window.reconcile: latent`): the Ray calls that step every shard
of the video in lockstep, save checkpoints, survive lost actors, and stream the decoded
frames back in order. What a shard is and who sends what to whom is decided by the pure
planner (farm/codenoise.py); the arithmetic runs on the actors (farm/latent.py).

Transport: each step is one actor call per shard. The call's return values are the
predictions for each peer (one object each) and the shard's checkpoint slot; the driver
passes a peer's object refs straight into the next step's call of the shard they are for,
so the predictions go from actor to actor through Ray's object store, not through the
driver. A shard's next call goes out as soon as its last one is done (and its peers have
sent theirs), so a call never waits at the driver behind one that a lost actor can no
longer answer. The driver reads only the checkpoint slots (a few bytes, or a shard's
latents every `window.checkpoint_every` steps) and, at the end, the decoded frames.

Faults: a lost actor fails its calls and, through their missing predictions, every call
after them. The driver then restarts every actor of the job (`ray.kill` with restart: each
reloads its pipeline, and no call of the failed attempt stays queued anywhere) and asks
each for its info; those that answer within ACTOR_RETURN_WAIT_S carry on (an actor whose
node is gone waits for resources and does not: once only such actors are left to answer,
they get LOST_NODE_GRACE_S more), the windows are spread over them anew,
and every shard starts again from the last whole checkpoint. The frames do not depend on
how the windows are spread, so the video is the same bits as an undisturbed run.

Resizing (the shared farm, scheduler/lease.py): at each whole checkpoint, `resizer` may
say the job's set of actors changes (`wants_reshape`): fewer, when the farm recalled some
for a job of higher priority; more, when it lent new ones. No new call is sent, the calls
in flight finish (shards may be a few steps past the checkpoint; that work is dropped),
`resizer.reshape()` gives the new set, the windows are spread over it, and every shard
goes on from the last whole checkpoint: the same path as a recovery, without restarting
any actor. Lent actors hold other jobs' pipelines too, so each is told the job's pipeline
when its shard begins (`pipeline`: the spec's ref and the pipeline key).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import ray

from farm.codenoise import Shard, partition
from farm.errors import LatentError
from farm.segments import Source
from farm.codenoise import LatentJob
from farm.rerender import Region, outside, span_job, span_tasks
from farm.store import LatentCheckpoints, SpanCheckpoints
from farm.tasks import WindowTask
from farm.util import first_line
from scheduler.progress import NullProgress

#: How long the driver waits, after a failure, for each actor to answer (a restarted actor
#: reloads its pipeline first); those that do not are left out of the rest of the job.
ACTOR_RETURN_WAIT_S = float(os.environ.get("FARM_ACTOR_RETURN_WAIT_S", "300"))
#: An actor whose node Ray has declared dead can only come back on another node with room
#: for it: once every other actor has answered, it gets this much longer, not the whole
#: ACTOR_RETURN_WAIT_S (a lost node would otherwise hold the job up for minutes).
LOST_NODE_GRACE_S = float(os.environ.get("FARM_LOST_NODE_GRACE_S", "10"))
#: How the predictions travel between shards: `refs` (actor to actor: the object refs go
#: straight into the peer's next call) or `driver` (the driver fetches every step's
#: predictions and passes the values on). `driver` exists to measure the two side by side
#: (scripts/bench_codenoise.py); it is never faster.
TRANSPORT = os.environ.get("FARM_LATENT_TRANSPORT", "refs")
#: Frames per decode call, and decode calls in flight per shard.
DECODE_CHUNK = 8
DECODE_AHEAD = 2


class CoDenoiser:
    """Runs one latent job on `actors`. `frames()` yields the video's frames in order."""

    def __init__(self, actors: list, infos: list[dict], job: LatentJob, tasks: Sequence[WindowTask],
                 prepare: Callable[[WindowTask], WindowTask], checkpoints: LatentCheckpoints, retries: int,
                 progress: NullProgress | None = None, resizer=None, pipeline: tuple = ()):
        self.actors, self.infos = list(actors), list(infos)
        self.job, self.tasks, self.prepare = job, list(tasks), prepare
        self.checkpoints, self.retries = checkpoints, retries
        self.progress = progress or NullProgress()
        self.frames_total = job.windows[-1].end
        self.resumed_from_step: int | None = None
        self.recoveries: list[dict] = []
        self.resizer = resizer  # wants_reshape() at a whole checkpoint; reshape() → (actors, infos)
        self.pipeline = pipeline  # (spec ref, key) for lent actors, passed to latent_begin
        self.reshapes: list[dict] = []
        self.shards: tuple[Shard, ...] = ()
        self.inflight: list = []  # every call of the current attempt, cancelled if it fails
        self.denoise_seconds = 0.0
        self.stats: list[dict] = []

    def frames(self) -> Iterator[np.ndarray]:
        for chunk in self._run(refs=False):
            yield from chunk

    def denoise(self) -> None:
        """Every step, checkpointed, and no frame decoded: the span of a local re-render
        (farm/rerender.py), whose run then decodes from its last step."""
        for _ in self._run(refs=False, decode=False):
            pass

    def chunk_refs(self) -> Iterator[tuple[Source, ray.ObjectRef]]:
        """The decoded chunks in order, each as (its frames, the ref of its array): the
        frames stay in the object store for the segment tasks (scheduler/segments.py). For
        decoders without state (not `causal_decode`), whose chunks are frames one to one."""
        if self.job.causal_decode:
            raise ValueError("a causal decoder's chunks reach the driver in turn: use frames()")
        yield from self._run(refs=True)

    def _run(self, refs: bool, decode: bool = True) -> Iterator:
        next_frame = 0
        while True:
            try:
                start = self.checkpoints.latest(self.frames_total)
                self.checkpoints.keep_only(start)  # parts past it are a failed attempt's: written again
                if self.resumed_from_step is None:
                    self.resumed_from_step = start
                self.shards = partition(self.job.windows, len(self.actors))
                self.progress.stage(f"denoising on {len(self.shards)} actors" + (f" from step {start}" if start else ""))
                self._begin(start)
                self._denoise(start)
                if decode and refs:
                    for source, ref in self._decode_side_by_side(next_frame, refs=True):
                        next_frame = source.end
                        yield source, ref
                elif decode:
                    for frames in self._decode(next_frame):
                        next_frame += len(frames)
                        yield frames
                self.stats = ray.get([a.latent_stats.remote() for a in self.actors[: len(self.shards)]])
                return
            except _Reshape as reshape:
                actors, infos = self.resizer.reshape()
                self.reshapes.append({"at_step": reshape.step, "actors_before": len(self.actors),
                                      "actors_after": len(actors)})
                self.progress.notice(f"co-denoising goes on from step {reshape.step} on {len(actors)} "
                                     f"actors (was {len(self.actors)}): the farm moved actors")
                self.actors, self.infos = list(actors), list(infos)
            except ray.exceptions.RayError as err:
                if _raised_by_the_code(err):  # not a lost actor: the same inputs would raise again
                    raise LatentError(f"co-denoising failed: {first_line(err.cause)}") from err
                self._recover(err, next_frame)

    def exchange_bytes_per_step(self) -> int:
        """Bytes of predictions the shards send one another per step."""
        sample = self.stats[0] if self.stats else None
        if not sample or not sample["steps"]:
            return 0
        return sum(s["sent_bytes"] for s in self.stats) // max(1, max(s["steps"] for s in self.stats))

    # -- the three phases --------------------------------------------------------------------
    def _begin(self, start: int) -> None:
        """Hand each actor its shard: its windows' tasks (with their inputs) and, when
        resuming, its covered frames' latents from the checkpoint."""
        refs = []
        for shard, actor in zip(self.shards, self.actors):
            tasks = [self.prepare(self.tasks[w]) for w in shard.windows]
            latents = self.checkpoints.load(start, *shard.covers) if start else None
            refs.append(actor.latent_begin.remote(self.job, shard, tasks, start, latents,
                                                  not self.recoveries,  # injected crashes: once
                                                  *self.pipeline))
            del tasks, latents  # one shard's inputs at a time in the driver
        self.inflight = list(refs)
        for i, info in enumerate(ray.get(refs)):  # each actor as it is now (a lent one may have loaded)
            self.infos[i] = {k: v for k, v in info.items() if k not in ("shard", "windows")}

    def _denoise(self, start: int) -> None:
        """Step every shard from `start` to the last step. A shard's next call goes out as
        soon as its own last call is done and each peer has sent the call whose predictions
        it needs; the refs of those predictions go straight into it. So no call is ever
        queued behind one that can no longer run: a call waiting for a lost actor's
        predictions would hold up every later call of this driver to its actor, the
        recovery's questions included. Each shard's checkpoint part is written as it comes."""
        t0 = time.perf_counter()
        n, last = len(self.shards), self.job.steps
        sent = [start - 1] * n  # the last call made to each shard (call k applies step k-1, evaluates step k)
        done = [start - 1] * n  # the last call each shard finished
        outs: dict[tuple[int, int], list] = {}  # (shard, call) -> its predictions for each peer, by ref
        slots: dict = {}  # the slot ref of each shard's call in flight -> (shard, call)
        parts = {}  # call -> shards whose part is in

        def ready_to_send(j: int) -> bool:
            k = sent[j] + 1
            return k <= last and done[j] >= k - 1 and all(sent[p] >= k - 1 for p in self.shards[j].peers)

        def send(j: int) -> None:
            shard, k = self.shards[j], sent[j] + 1
            inbox = [outs[(p, k - 1)][self.shards[p].peers.index(j)] for p in shard.peers] if k > start else []
            if TRANSPORT == "driver":  # the predictions through the driver, for measuring
                inbox = ray.get(inbox)
            returns = len(shard.peers) + 1
            refs = self.actors[j].latent_step.options(num_returns=returns).remote(k > start, *inbox)
            refs = [refs] if returns == 1 else list(refs)
            outs[(j, k)], sent[j] = refs[:-1], k
            slots[refs[-1]] = (j, k)
            self.inflight.append(refs[-1])

        if start == last:
            return  # resumed from the last step: nothing to denoise
        for j in range(n):
            send(j)
        reshape = None  # a new set of actors, taken at a whole checkpoint: the calls in flight finish first
        while slots:
            [ref], _ = ray.wait(list(slots), num_returns=1)
            j, k = slots.pop(ref)
            latents = ray.get(ref)  # raises if the call failed
            done[j] = k
            if k > start and self._part_in(j, k, latents, parts, asking=reshape is None):
                reshape = _Reshape(k)
            if reshape is not None:
                continue  # send nothing more; the last calls drain
            waiting = [i for i in range(n) if ready_to_send(i)]
            while waiting:  # a send can make a peer ready in turn
                send(waiting.pop())
                waiting = [i for i in range(n) if ready_to_send(i)]
            for key in [key for key in outs if all(sent[p] >= key[1] + 1 or sent[p] == last for p in range(n))]:
                del outs[key]  # every peer's next call has its refs
        self.denoise_seconds += time.perf_counter() - t0
        if reshape is not None:
            self.inflight = []
            raise reshape

    def _part_in(self, j: int, k: int, latents, parts: dict, asking: bool) -> bool:
        """Shard `j` finished step `k`: its checkpoint part is written; once every shard has,
        the progress is told and, at a whole checkpoint, the older ones go and (`asking`)
        the resizer says whether the job's actors change here. True: they do."""
        if k in self.job.checkpoints:
            self.checkpoints.put(k, *self.shards[j].owns, latents)
        parts.setdefault(k, set()).add(j)
        if len(parts[k]) < len(self.shards):
            return False
        self.progress.steps_done(k, self.job.steps)
        self.progress.stage(f"denoising: step {k}/{self.job.steps}")
        if k not in self.job.checkpoints:
            return False
        self.checkpoints.drop_before(k)  # not later ones: shards ahead have written parts of them
        return asking and self.resizer is not None and k < self.job.steps and self.resizer.wants_reshape()

    def _decode(self, skip: int) -> Iterator[np.ndarray]:
        """The video's frames in order, a chunk of latent frames per call, leaving out the
        first `skip` (streamed before a recovery). Each shard decodes the frames it owns."""
        if self.job.causal_decode:
            frames = self._decode_in_turn()
        else:  # one latent frame is one frame: start where the stream stopped
            frames = self._decode_side_by_side(skip)
            skip = 0
        for chunk in frames:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield chunk[skip:]
            skip = 0

    def _decode_side_by_side(self, first: int, refs: bool = False) -> Iterator:
        """Every shard decodes a few chunks ahead of the driver, at the same time. `refs`:
        yield (Source, ref of the frames) once a chunk is decoded, leaving its frames where
        they are (its second return, the decoder state, tells whether the call failed)."""
        chunks = {s.index: deque(_chunks(max(s.owns[0], first), s.owns[1])) for s in self.shards}
        pending = {s.index: deque() for s in self.shards}

        def top_up(shard: Shard) -> None:
            while len(pending[shard.index]) < DECODE_AHEAD and chunks[shard.index]:
                a, b = chunks[shard.index].popleft()
                frames, state = self.actors[shard.index].latent_decode.options(num_returns=2).remote(a, b)
                pending[shard.index].append((a, b, frames, state))
                self.inflight += [frames, state]

        for shard in self.shards:
            top_up(shard)
        for shard in self.shards:
            while pending[shard.index]:
                a, b, frames, state = pending[shard.index].popleft()
                ray.get(state)  # raises if the call failed
                self.inflight.remove(frames)  # done: nothing to cancel, and the frames are not kept here
                self.inflight.remove(state)
                top_up(shard)
                yield (Source(a, b), frames) if refs else ray.get(frames)

    def _decode_in_turn(self) -> Iterator[np.ndarray]:
        """A causal decoder: from the first frame, shard after shard, a few chunks ahead;
        each shard's first chunk continues the decoder's state that the shard before
        handed over with its last."""
        queue = deque((shard, a, b) for shard in self.shards for a, b in _chunks(*shard.owns))
        pending: deque = deque()
        carry = None
        while queue or pending:
            while queue and len(pending) < DECODE_AHEAD:
                shard, a, b = queue.popleft()
                hand_over = b == shard.owns[1] and shard.index < len(self.shards) - 1
                frames, state = self.actors[shard.index].latent_decode.options(num_returns=2).remote(
                    a, b, carry if a == shard.owns[0] else None, hand_over)
                if hand_over:
                    carry = state
                pending.append(frames)
                self.inflight.append(frames)
            yield ray.get(pending.popleft())

    # -- faults ------------------------------------------------------------------------------
    def _recover(self, err: Exception, next_frame: int) -> None:
        """Restart every actor, keep those that answer, and start again from the last
        whole checkpoint (the next attempt of `frames`)."""
        if len(self.recoveries) >= self.retries:
            raise LatentError(f"co-denoising lost actors {len(self.recoveries) + 1} times (retries: {self.retries}); "
                              f"last error: {first_line(err)}") from err
        for ref in self.inflight:  # calls of the failed attempt not started yet: drop them
            ray.cancel(ref)
        self.inflight = []
        started = time.monotonic()
        for actor in self.actors:  # and every actor starts afresh: nothing of the failed attempt runs on
            ray.kill(actor, no_restart=False)
        alive, infos = [], []
        for actor, info in zip(self.actors, _answers(self.actors, ACTOR_RETURN_WAIT_S, told_to_restart=self.infos)):
            if info is None:
                ray.kill(actor, no_restart=True)
            else:
                alive.append(actor)
                infos.append(info)
        if not alive:
            raise LatentError(f"co-denoising lost every actor; last error: {first_line(err)}") from err
        recovery = {"error": first_line(err), "actors_left": len(alive),
                    "from_step": self.checkpoints.latest(self.frames_total), "frames_done": next_frame,
                    "seconds": round(time.monotonic() - started, 1)}
        self.recoveries.append(recovery)
        self.progress.notice(f"co-denoising lost an actor ({recovery['error']}); going on from step "
                             f"{recovery['from_step']} on {len(alive)} actors")
        self.actors, self.infos = alive, infos

    def report(self) -> dict:
        """What the job report says about the co-denoising."""
        busy = [s["predict_s"] + s["fold_s"] + s["step_s"] for s in self.stats]
        wall = self.denoise_seconds
        return {
            "actors": len(self.shards),
            "shards": [{"index": s.index, "windows": [s.first, s.last], "frames": list(s.covers),
                        "owns": list(s.owns), "peers": list(s.peers)} for s in self.shards],
            "resumed_from_step": self.resumed_from_step,
            "recoveries": self.recoveries,
            "reshapes": self.reshapes,
            "checkpoints": list(self.job.checkpoints),
            "exchange_bytes_per_step": self.exchange_bytes_per_step(),
            "denoise_seconds": round(wall, 4),
            # the time the shards were not computing: barrier waits and the exchange
            "wait_share": round(1 - sum(busy) / (wall * len(busy)), 4) if wall and busy else None,
            "shard_stats": self.stats,
        }


def rerender_locally(codenoiser_args: dict, job: LatentJob, tasks: Sequence[WindowTask], region: Region,
                     checkpoints: LatentCheckpoints, last: LatentCheckpoints) -> CoDenoiser:
    """A local re-render (farm/rerender.py): `region`'s windows denoised again on the
    actors, the frames next to them held to the last render's latents (`last`) at every
    step, every step of theirs written to the run's `checkpoints`; then the run's other
    frames' latents of every step copied from `last`, so that every step of the run is
    whole (its last one decodes, and a later edit re-renders locally in turn). Returns the
    span's CoDenoiser (it says where its shards ran and what it cost)."""
    span = CoDenoiser(job=span_job(job, region, last.load), tasks=span_tasks(tasks, region),
                      checkpoints=SpanCheckpoints(checkpoints, *region.frames), **codenoiser_args)
    span.denoise()
    for step in range(1, job.steps + 1):
        for lo, hi in outside(region, job.windows[-1].end):
            checkpoints.put(step, lo, hi, last.load(step, lo, hi))
    return span


class _Reshape(Exception):
    """The farm changes the job's actors at the whole checkpoint after `step` steps."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def _raised_by_the_code(err: Exception) -> bool:
    """An exception the actor's code raised (a bug, bad inputs, out of memory), as opposed
    to an actor, node or object that was lost."""
    cause = getattr(err, "cause", None)
    return isinstance(err, ray.exceptions.RayTaskError) and cause is not None and not isinstance(
        cause, ray.exceptions.RayError)


def _answers(actors: list, wait_s: float, told_to_restart: list[dict] | None = None) -> list[dict | None]:
    """Each actor's info once it answers, asked of all at once (a restarting actor is
    unavailable for a while, and one that waits for a node that is gone must not use up
    the others' time); None for those dead or silent after `wait_s`. `told_to_restart`:
    each actor's info from before `ray.kill(..., no_restart=False)`, which returns before
    the process is gone; an answer from that same process (node and pid) is not taken,
    the actor is asked again. When only actors whose node is dead are left to answer, they
    have LOST_NODE_GRACE_S more."""
    deadline = time.monotonic() + wait_s
    old = [(i.get("node"), i.get("pid")) for i in told_to_restart] if told_to_restart else None
    infos: list[dict | None] = [None] * len(actors)
    pending = {actor.info.remote(): i for i, actor in enumerate(actors)}
    while pending and time.monotonic() < deadline:
        if old and {old[i][0] for i in pending.values()} <= _dead_nodes():  # the first time counts: min
            deadline = min(deadline, time.monotonic() + LOST_NODE_GRACE_S)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        for ref in ready:
            i = pending.pop(ref)
            try:
                info = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                info = None  # restarting: ask again
            except ray.exceptions.RayError:
                continue  # dead for good
            if info is not None and (old is None or (info.get("node"), info.get("pid")) != old[i]):
                infos[i] = info
            else:
                time.sleep(0.2)
                pending[actors[i].info.remote()] = i
    return infos


def _dead_nodes() -> set[str]:
    """The ids of the nodes Ray has declared dead."""
    return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}


def _chunks(start: int, end: int) -> list[tuple[int, int]]:
    return [(a, min(a + DECODE_CHUNK, end)) for a in range(start, end, DECODE_CHUNK)]
