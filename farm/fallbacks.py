"""Fallback ladders: what a renderer does when a window comes back broken, one step at a
time, never retrying with unchanged settings.

    NaN or all-black frames (the known fp16 VAE failure)
        1. render the window again and decode it with the VAE in fp32
        2. give up: RenderGaveUp, with the reason
    CUDA out of memory
        1. render again with half the decode chunk
        2. render again with model CPU offload (on CUDA; on a CPU actor the step is taken
           and recorded, and changes nothing)
        3. give up: RenderGaveUp, with the reason

Each step taken is returned with the frames and recorded in the report. `RenderGaveUp`
tells the dispatcher that retrying the window elsewhere with the same settings is pointless:
the window fails at once.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from farm.tasks import Overrides
from farm.util import first_line, unit_to_uint8

#: A frame whose brightest pixel is below this (of 1.0) counts as black.
BLACK = 1.0 / 255


class RenderGaveUp(RuntimeError):
    """The window failed after every step of its fallback ladder."""

    retryable = False


def is_broken(frames: np.ndarray) -> str | None:
    """Why these decoded frames are unusable, or None."""
    if not np.isfinite(frames).all():
        return "decoded to NaN/inf"
    if frames.size and float(np.nanmax(frames)) < BLACK:
        return "decoded to all-black frames"
    return None


class LadderRenderer:
    def __init__(self, inner, decode_chunk_size: int | None = None):
        self.inner = inner
        self.device = inner.device
        self.load_seconds = getattr(inner, "load_seconds", 0.0)
        self.memory = getattr(inner, "memory", {})
        self.decode_chunk_size = decode_chunk_size

    def warm_up(self, task) -> float:
        """Render the actor's warm-up window (`farm.renderers.warmup_task`) once, with no
        ladder and no fault injection, and drop it. Returns the seconds it took."""
        t0 = time.perf_counter()
        warm = getattr(self.inner, "warm_up", self.inner.render)
        frames = warm(task, Overrides(decode_chunk_size=self.decode_chunk_size))
        is_broken(frames)
        unit_to_uint8(frames)
        return time.perf_counter() - t0

    def render(self, task) -> tuple[np.ndarray, tuple[str, ...]]:
        """(uint8 frames, the fallback steps taken)."""
        overrides = Overrides(decode_chunk_size=self.decode_chunk_size)
        steps: list[str] = []
        oom_steps = 0
        while True:
            try:
                frames = self.inner.render(task, overrides)
            except torch.OutOfMemoryError as err:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                oom_steps += 1
                if oom_steps == 1:
                    chunk = max(1, (overrides.decode_chunk_size or task.window.length) // 2)
                    overrides = Overrides(decode_chunk_size=chunk, cpu_offload=overrides.cpu_offload,
                                          vae_fp32=overrides.vae_fp32)
                    steps.append(f"oom: decode_chunk_size={chunk}")
                    continue
                if oom_steps == 2:
                    overrides = Overrides(decode_chunk_size=overrides.decode_chunk_size, cpu_offload=True,
                                          vae_fp32=overrides.vae_fp32)
                    steps.append("oom: cpu_offload")
                    continue
                raise RenderGaveUp(
                    f"CUDA out of memory even with decode_chunk_size={overrides.decode_chunk_size} and CPU "
                    f"offload (steps tried: {', '.join(steps)}); lower width/height or window.length. "
                    f"Last error: {first_line(err)}"
                ) from None
            broken = is_broken(frames)
            if broken is None:
                return unit_to_uint8(frames), tuple(steps)
            if overrides.vae_fp32:
                raise RenderGaveUp(f"window {task.window.index} {broken} even with the VAE in fp32 "
                                   f"(steps tried: {', '.join(steps)}); try dtype fp32 or another seed")
            overrides = Overrides(decode_chunk_size=overrides.decode_chunk_size, cpu_offload=overrides.cpu_offload,
                                  vae_fp32=True)
            steps.append(f"{broken.split(' to ')[-1]}: vae_fp32")
