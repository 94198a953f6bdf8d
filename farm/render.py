"""Rendering one window with a loaded pipeline: the task, the result, and the renderer
stack. Pure torch/diffusers, no Ray.

The Ray actor (actors/pipeline.py) and the single-process benchmark loop both call this,
so the farm and the plain loop do the same work per window.

A renderer (farm/pipelines/*.py) has a `device` attribute, `load_seconds`, and
`render(task, overrides) -> np.ndarray`: (F, H, W, 3) float32 in [0, 1], as the pipeline
decoded it (NaN included); a wrapper may add `warm_up(task, overrides)`, how it renders the
actor's throwaway warm-up window (`warmup_task`). `make_renderer` stacks, from the inside out:

    the pipeline's renderer, or the fixed-cost simulation      farm/pipelines, farm/faults
    fault injection, when the spec asks for it                 farm/faults.FaultyRenderer
    the fallback ladders (NaN/black → VAE in fp32; CUDA OOM →  farm/ladders.LadderRenderer
      half the decode chunk → CPU offload), and uint8
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from farm.plan import Window, plan_windows
from farm.prompts import Conditioning, frame_conditioning
from farm.spec import JobSpec


@dataclass(frozen=True)
class WindowTask:
    """Everything an actor needs to render one window, and nothing it does not."""

    window: Window
    conditioning: tuple[Conditioning, ...]  # per frame: (old text, new text, weight of new)
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    image: np.ndarray | None = field(default=None, compare=False)  # svd: the conditioning frame (H, W, 3) uint8
    control: np.ndarray | None = field(default=None, compare=False)  # controlnet: (F, H, W, 3) uint8

    @classmethod
    def from_spec(cls, spec: JobSpec, window: Window) -> "WindowTask":
        """The task without its per-window inputs (`image`, `control`): the driver adds them
        just before dispatch (`dataclasses.replace`), so they are never all in memory."""
        return cls(
            window=window,
            conditioning=frame_conditioning(spec.schedule, spec.prompt_transition, window.start, window.end),
            negative_prompt=spec.negative_prompt,
            width=spec.width,
            height=spec.height,
            steps=spec.steps,
            guidance=spec.guidance,
            seed=spec.seed,
        )


@dataclass(frozen=True)
class Overrides:
    """Settings a fallback ladder changes for one retry of a window."""

    decode_chunk_size: int | None = None
    cpu_offload: bool = False
    vae_fp32: bool = False


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
    fallbacks: tuple[str, ...] = ()  # ladder steps this window needed, e.g. ("vae_fp32",)


def warmup_task(spec: JobSpec) -> WindowTask:
    """The throwaway window an actor renders while it starts (`model.warmup`): the shape of
    the job's first window, so shape-specific first-call costs (loading and selecting kernels,
    allocator growth) are paid there, but one denoising step, and stand-in
    inputs: a mid-grey SVD picture, blank control frames."""
    window = plan_windows(spec).windows[0]
    task = replace(WindowTask.from_spec(spec, window), steps=1)
    if spec.control is not None:
        task = replace(task, control=np.zeros((window.length, spec.height, spec.width, 3), np.uint8))
    if spec.svd is not None:
        task = replace(task, image=np.full((spec.height, spec.width, 3), 128, np.uint8))
    return task


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float [0, 1] → uint8, the format every later stage works in."""
    return np.clip(np.rint(np.asarray(frames, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _renderer_class(pipeline: str):
    if pipeline == "animatediff":
        from farm.pipelines.animatediff import AnimateDiffRenderer

        return AnimateDiffRenderer
    if pipeline == "animatediff-controlnet":
        from farm.pipelines.controlnet import AnimateDiffControlNetRenderer

        return AnimateDiffControlNetRenderer
    if pipeline == "svd":
        from farm.pipelines.svd import SvdRenderer

        return SvdRenderer
    raise ValueError(f"unknown pipeline {pipeline!r}")


def make_renderer(spec: JobSpec, device: str | None = None, context=None):
    """Build the renderer stack for `spec.model.pipeline` (see the module docstring).
    `context` is a `farm.faults.FaultContext` from the actor."""
    from farm.faults import FaultContext, FaultyRenderer, SimulatedRenderer
    from farm.ladders import LadderRenderer
    from farm.models.load import default_device

    faults = spec.model.faults
    if faults is not None and faults.simulate_seconds is not None:
        renderer = SimulatedRenderer(faults.simulate_seconds)
    else:
        renderer = _renderer_class(spec.model.pipeline)(spec, device or default_device())
    if faults is not None:
        renderer = FaultyRenderer(renderer, faults, context or FaultContext())
    return LadderRenderer(renderer, spec.model.memory.decode_chunk_size)
