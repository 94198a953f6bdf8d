"""One actor's shard of a co-denoised video (farm/codenoise.py says what a shard is).

The step loop is diffusers' own, cut where the windows meet:

    evaluate(): for each of the shard's windows, in order, the noise prediction of its
                frames (the renderer's `latent_predict`: scaled input, UNet, guidance);
                each peer gets the predictions for the frames it shares, per window
    apply():    for every frame the shard covers, the weighted predictions of all the
                windows covering it, folded in window order (own and peers' alike), then
                the scheduler's step for that frame, with its noise (stochastic
                schedulers) drawn from (seed, frame, step)

A shard holds latents only, plus one window's UNet activations at a time, so an actor's
GPU memory stays about one window's whatever the shard's length. (With step caching,
`model.cache`, each window also keeps its cache state: a renderer's `step_cache`,
farm/pipelines/_cache.py, starts empty with each shard, and the work it skipped is
counted per shard.)

Torch is imported here; the module is loaded on the actors only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from farm.codenoise import LatentJob, Shard
from farm.noise import step_seed
from farm.report import skipped
from farm.tasks import WindowTask
from farm.util import unit_to_uint8


@dataclass
class ShardStats:
    """Where a shard's time went, for the report's exchange share."""

    predict_s: float = 0.0
    fold_s: float = 0.0
    step_s: float = 0.0
    decode_s: float = 0.0
    sent_bytes: int = 0
    steps: int = 0
    windows: list[int] = field(default_factory=list)
    cache: dict | None = None  # step caching: the blocks' work skipped (farm.report.skipped)

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


class ShardRunner:
    """The latents of one shard's frames and the step loop over them.

    `model` is the pipeline's renderer (its `latent_*` methods); `tasks` the shard's
    windows' tasks, in order; `latents`, when resuming, the covered frames' latents after
    `start_step` steps (from a checkpoint), else the per-frame noise is drawn here."""

    def __init__(self, model, job: LatentJob, shard: Shard, tasks: Sequence[WindowTask], start_step: int,
                 latents: np.ndarray | None = None):
        if [t.window.index for t in tasks] != list(shard.windows):
            raise ValueError(f"shard {shard.index} holds windows {list(shard.windows)}; got tasks for "
                             f"{[t.window.index for t in tasks]}")
        self.model, self.job, self.shard = model, job, shard
        self.lo, self.hi = shard.covers
        self.timesteps = model.latent_timesteps(job.steps)
        if latents is None:
            if start_step:
                raise ValueError(f"shard {shard.index}: resuming at step {start_step} needs its latents")
            self.latents = model.latent_noise(job.seed, job.offset + self.lo, job.offset + self.hi, job.height,
                                              job.width)
        else:
            device = getattr(model, "latent_device", model.device)
            self.latents = torch.from_numpy(np.ascontiguousarray(latents)).to(device, model.latent_dtype())
        self.step = start_step
        self.cache = getattr(model, "step_cache", None)
        self._cache_counts = [0, 0]
        if self.cache is not None:  # every window's cache starts empty (a resumed job's too: README)
            self.cache.reset()
        self.conds = {t.window.index: model.latent_conditioning(t) for t in tasks}
        self.preds: dict[int, torch.Tensor] = {}
        self.stats = ShardStats(windows=list(shard.windows))
        self._carry = None  # a causal decoder's state after this shard's last decoded frame

    # -- one step ----------------------------------------------------------------------------
    def evaluate(self) -> list[dict[int, np.ndarray]]:
        """This step's noise predictions for the shard's windows, in window order; returns,
        per peer, {window: prediction for the frames it shares with that peer}."""
        t0 = time.perf_counter()
        i, t = self.step, self.timesteps[self.step]
        before = self.cache.counts() if self.cache is not None else None
        for w in self.shard.windows:
            window = self.job.windows[w]
            at_step(self.model, i)
            x = self.latents[:, :, window.start - self.lo : window.end - self.lo]
            self.preds[w] = self.model.latent_predict(self.conds[w], x, i, t)
        if before is not None:  # this shard's windows' calls only (in-process tests share a renderer)
            for k, (now, then) in enumerate(zip(self.cache.counts(), before)):
                self._cache_counts[k] += now - then
            self.stats.cache = skipped(*self._cache_counts)
        out = []
        for pieces in self.shard.sends:
            sent = {}
            for p in pieces:
                start = self.job.windows[p.window].start
                # fp32 (exactly, from fp16/bf16, which numpy cannot hold): the fold upcasts anyway
                sent[p.window] = self.preds[p.window][:, :, p.start - start : p.end - start].float().cpu().numpy()
                self.stats.sent_bytes += sent[p.window].nbytes
            out.append(sent)
        self.stats.predict_s += time.perf_counter() - t0
        return out

    def apply(self, received: Sequence[dict[int, np.ndarray]]) -> None:
        """Fold this step's predictions (own, and `received` from the peers, in `peers`
        order) for every covered frame in window order, and step every covered frame."""
        t0 = time.perf_counter()
        terms = {w: (self.job.windows[w].start, pred) for w, pred in self.preds.items()}
        for peer, got in zip(self.shard.peers, received):
            for w, piece in got.items():
                start = max(self.job.windows[w].start, self.lo)
                terms[w] = (start, torch.from_numpy(piece).to(self.latents.device))
        fused = torch.zeros(self.latents.shape, dtype=torch.float32, device=self.latents.device)
        for w in sorted(terms):  # the order that makes the sum the same on any number of actors
            start, pred = terms[w]
            window = self.job.windows[w]
            a, b = max(start, self.lo), min(start + pred.shape[2], self.hi)
            weight = torch.from_numpy(self.job.weights[w][a - window.start : b - window.start])
            weight = weight.to(fused.device).view(1, 1, -1, 1, 1)
            fused[:, :, a - self.lo : b - self.lo] += weight * pred[:, :, a - start : b - start].float()
        self.stats.fold_s += time.perf_counter() - t0
        t1 = time.perf_counter()
        i, t = self.step, self.timesteps[self.step]
        fused = fused.to(self.latents.dtype)
        first = self.job.offset + self.lo  # the run's frame numbers draw the noise
        for k in range(self.hi - self.lo):
            generator = torch.Generator(device="cpu").manual_seed(step_seed(self.job.seed, first + k, i))
            at_step(self.model, i)
            self.latents[:, :, k : k + 1] = self.model.latent_step(fused[:, :, k : k + 1], t,
                                                                  self.latents[:, :, k : k + 1], generator)
        self.stats.step_s += time.perf_counter() - t1
        self.preds = {}
        self.step += 1
        self.stats.steps += 1
        self._hold_fixed()

    def _hold_fixed(self) -> None:
        """A local re-render: the fixed frames this shard covers take their stored latents
        after this many steps (farm/rerender.py)."""
        for (a, b), stored in zip(self.job.fixed, self.job.fixed_latents):
            lo, hi = max(a, self.lo), min(b, self.hi)
            if lo < hi:
                held = torch.from_numpy(np.ascontiguousarray(stored[self.step - 1][:, :, lo - a : hi - a]))
                self.latents[:, :, lo - self.lo : hi - self.lo] = held.to(self.latents.device, self.latents.dtype)

    # -- what leaves the shard ---------------------------------------------------------------
    def owned_latents(self) -> np.ndarray:
        """The latents of the frames the shard owns (its part of a checkpoint), float32."""
        lo, hi = self.shard.owns
        return self.latents[:, :, lo - self.lo : hi - self.lo].float().cpu().numpy()

    def decode(self, start: int, end: int, carry=None, hand_over: bool = False):
        """The frames latent frames [start, end) decode to (owned by this shard, fully
        denoised), as uint8 (F, H, W, 3); and, with `hand_over`, the decoder's state after
        them, for the next shard (a causal decoder; `carry` is the state the shard before
        left, else this shard goes on from its own last call). Returns (frames, state)."""
        if self.step != self.job.steps:
            raise RuntimeError(f"shard {self.shard.index} is at step {self.step} of {self.job.steps}; "
                               "frames are final only after the last step")
        if not (self.shard.owns[0] <= start < end <= self.shard.owns[1]):
            raise ValueError(f"shard {self.shard.index} owns frames {self.shard.owns}; asked for [{start}, {end})")
        t0 = time.perf_counter()
        if carry is not None or start == 0:
            self._carry = carry
        frames, self._carry = self.model.latent_decode(self.latents[:, :, start - self.lo : end - self.lo], self._carry)
        self.stats.decode_s += time.perf_counter() - t0
        return unit_to_uint8(frames), (self._carry if hand_over else None)


def at_step(model, step: int) -> None:
    """Point the scheduler at `step`: schedulers that count their own steps (Euler, LCM)
    advance once per `step()` call, and a shard calls it once per frame."""
    scheduler = getattr(getattr(model, "pipe", None), "scheduler", None)
    if scheduler is not None and hasattr(scheduler, "_step_index"):
        scheduler._step_index = step
