"""Fault injection and simulation: real renderers behind the same interface, chosen by the
job spec's `model.faults` (see FaultSpec), never by monkeypatching.

- `FaultyRenderer` wraps the real pipeline and fails the calls it is told to: a poison
  window, a process crash on the k-th call, every call on a node with a given resource,
  torch's CUDA out-of-memory error or NaN frames on chosen calls, or a delay. A call it
  lets through is rendered by the real pipeline, unchanged. (`load_delay`, a slow load,
  is slept in `farm.renderers.make_renderer`, before the pipeline loads.)
- `SimulatedRenderer` is a fixed-cost stand-in for benchmarks of the scheduling itself: it
  sleeps, then returns frames drawn from the per-frame seeds. It is a SIMULATION and is
  labelled so in every report (`device: simulation`).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from farm.noise import frame_seed
from farm.spec import FaultSpec
from farm.tasks import FaultContext


class InjectedFault(RuntimeError):
    """Raised by FaultyRenderer on purpose."""


class SimulatedRenderer:
    device = "simulation"

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.load_seconds = 0.0

    def render(self, task, overrides=None) -> np.ndarray:
        time.sleep(self.seconds)
        return self.warm_up(task, overrides)

    # Co-denoising: each window's prediction sleeps its share of the window's seconds.
    latent_device = "cpu"

    def latent_dtype(self) -> torch.dtype:
        return torch.float32

    def latent_timesteps(self, steps: int) -> list:
        self.steps = steps
        return list(range(steps))

    def latent_noise(self, seed: int, start: int, end: int, height: int, width: int) -> torch.Tensor:
        from farm.noise import window_noise

        return window_noise(seed, start, end, (4, height // 8, width // 8))

    def latent_conditioning(self, task) -> dict:
        return {}

    def latent_predict(self, cond, latents, step, t) -> torch.Tensor:
        time.sleep(self.seconds / self.steps)
        return latents * 0.5

    def latent_step(self, noise_pred, t, latents, generator) -> torch.Tensor:
        return latents - 0.1 * noise_pred

    def latent_decode(self, latents, carry=None):
        frames, height, width = latents.shape[2], latents.shape[3] * 8, latents.shape[4] * 8
        means = latents.float().mean(dim=(0, 1, 3, 4)).sigmoid().numpy()
        return np.broadcast_to(means[:, None, None, None], (frames, height, width, 3)).astype(np.float32), None

    def warm_up(self, task, overrides=None) -> np.ndarray:
        """The frames without the sleep: the simulated pipeline's own first-call work."""
        w = task.window
        frames = np.empty((w.length, task.height, task.width, 3), np.float32)
        for i, f in enumerate(range(w.start, w.end)):
            frames[i] = np.random.default_rng(frame_seed(task.seed, f)).random(3, dtype=np.float32)
        return frames


class FaultyRenderer:
    def __init__(self, inner, faults: FaultSpec, context: FaultContext):
        self.inner, self.faults, self.context = inner, faults, context
        self.device = inner.device
        self.load_seconds = getattr(inner, "load_seconds", 0.0)
        self.memory = getattr(inner, "memory", {})
        self.calls = 0

    def warm_up(self, task, overrides=None) -> np.ndarray:
        """The actor's warm-up goes straight to the pipeline: faults count windows."""
        warm = getattr(self.inner, "warm_up", self.inner.render)
        return warm(task, overrides)

    def render(self, task, overrides=None) -> np.ndarray:
        f, index = self.faults, task.window.index
        self.calls += 1
        if f.delay:
            time.sleep(f.delay)
        if f.crash_on_call is not None and self.calls == f.crash_on_call and not self.context.restarted:
            os._exit(17)  # a hard crash: no exception, no cleanup, as a segfault or OOM kill would
        if f.fail_on_resource and self.context.node_resources.get(f.fail_on_resource):
            raise InjectedFault(f"injected: this node carries resource {f.fail_on_resource!r}")
        if index in f.fail_windows:
            raise InjectedFault(f"injected: window {index} always fails")
        if self.calls in f.oom_on_calls:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected on call {self.calls})")
        frames = self.inner.render(task, overrides)
        if self.calls in f.nan_on_calls:
            frames = np.full_like(frames, np.nan)
        return frames
