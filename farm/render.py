"""Rendering one window with a loaded pipeline. Pure torch/diffusers, no Ray.

The Ray actor (actors/pipeline.py) and the single-process benchmark loop both call this,
so the farm and the plain loop do the same work per window.

A renderer is any object with `render(task) -> np.ndarray` (F, H, W, 3) uint8 and a
`device` attribute; `make_renderer` picks one by name, which is also where a
fault-injecting renderer plugs in (a real class behind the same interface).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from farm.models.load import default_device, load_animatediff
from farm.noise import frame_seed, window_noise
from farm.plan import Window
from farm.spec import JobSpec, ModelSpec


@dataclass(frozen=True)
class WindowTask:
    """Everything an actor needs to render one window, and nothing it does not."""

    window: Window
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int

    @classmethod
    def from_spec(cls, spec: JobSpec, window: Window) -> "WindowTask":
        return cls(
            window=window,
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            width=spec.width,
            height=spec.height,
            steps=spec.steps,
            guidance=spec.guidance,
            seed=spec.seed,
        )


@dataclass(frozen=True)
class WindowResult:
    """A rendered window as it comes back to the driver."""

    index: int
    start: int
    end: int
    frames: np.ndarray  # (F, H, W, 3) uint8
    seconds: float
    started: float  # wall clock (time.time()) when the actor began the window
    node: str
    actor: str
    device: str


class AnimateDiffRenderer:
    """Holds one loaded AnimateDiffPipeline and renders windows with it."""

    def __init__(self, model: ModelSpec, device: str | None = None):
        self.device = device or default_device()
        t0 = time.perf_counter()
        self.pipe = load_animatediff(model, self.device)
        self.load_seconds = time.perf_counter() - t0

    def render(self, task: WindowTask) -> np.ndarray:
        pipe, w = self.pipe, task.window
        # 1. Initial latents: the per-frame noise of the window's global frames.
        scale = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, task.height // scale, task.width // scale)
        latents = window_noise(task.seed, w.start, w.end, shape).to(self.device, pipe.unet.dtype)
        # 2. A generator for any stochastic scheduler step, seeded by the window's first frame.
        generator = torch.Generator(device="cpu").manual_seed(frame_seed(task.seed, w.start))
        # 3. Denoise and decode.
        with torch.inference_mode():
            out = pipe(
                prompt=task.prompt,
                negative_prompt=task.negative_prompt or None,
                num_frames=w.length,
                height=task.height,
                width=task.width,
                num_inference_steps=task.steps,
                guidance_scale=task.guidance,
                latents=latents,
                generator=generator,
                output_type="np",
            )
        # 4. Float [0, 1] → uint8, the format every later stage works in.
        frames = np.asarray(out.frames[0], dtype=np.float32)
        return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


RENDERERS = {"animatediff": AnimateDiffRenderer}


def make_renderer(model: ModelSpec, device: str | None = None, context=None):
    """Build the renderer for `model.pipeline`; `model.faults` wraps it in fault injection
    or replaces it by the fixed-cost simulation (farm/faults.py). `context` is a
    `farm.faults.FaultContext` from the actor."""
    from farm.faults import FaultContext, FaultyRenderer, SimulatedRenderer

    faults = model.faults
    if faults is not None and faults.simulate_seconds is not None:
        renderer = SimulatedRenderer(faults.simulate_seconds)
    else:
        renderer = RENDERERS[model.pipeline](model, device)
    if faults is not None:
        renderer = FaultyRenderer(renderer, faults, context or FaultContext())
    return renderer
