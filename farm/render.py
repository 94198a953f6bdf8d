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
from farm.prompts import Conditioning, frame_conditioning
from farm.spec import JobSpec, ModelSpec


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

    @classmethod
    def from_spec(cls, spec: JobSpec, window: Window) -> "WindowTask":
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
        # 3. Text conditioning: one prompt for the window, or one embedding per frame.
        if len(set(task.conditioning)) == 1 and task.conditioning[0][2] >= 1.0:
            prompt_args = {"prompt": task.conditioning[0][1], "negative_prompt": task.negative_prompt or None}
            hook = None
        else:
            prompt_args, hook = self._per_frame_prompts(task)
        # 4. Denoise and decode.
        try:
            with torch.inference_mode():
                out = pipe(
                    **prompt_args,
                    num_frames=w.length,
                    height=task.height,
                    width=task.width,
                    num_inference_steps=task.steps,
                    guidance_scale=task.guidance,
                    latents=latents,
                    generator=generator,
                    output_type="np",
                )
        finally:
            if hook is not None:
                hook.remove()
        # 5. Float [0, 1] → uint8, the format every later stage works in.
        frames = np.asarray(out.frames[0], dtype=np.float32)
        return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


    def _per_frame_prompts(self, task: WindowTask):
        """Embed each text once, mix them per frame, and hand the UNet one embedding per
        frame. The pipeline repeats a single embedding over the frames (negative then
        positive under guidance, frame-major as the UNet folds frames into the batch);
        a forward pre-hook swaps in the per-frame tensor of exactly that layout."""
        pipe = self.pipe
        cfg = task.guidance > 1.0
        with torch.inference_mode():
            embeds, negative = {}, None
            for text in sorted({t for c in task.conditioning for t in c[:2]}):
                embeds[text], negative = pipe.encode_prompt(text, self.device, 1, cfg, task.negative_prompt or None)
            per_frame = torch.cat([(1.0 - wt) * embeds[old] + wt * embeds[new] for old, new, wt in task.conditioning])
        frames = per_frame.shape[0]
        hidden = torch.cat([negative.expand(frames, -1, -1), per_frame]) if cfg else per_frame

        def swap(module, args, kwargs):
            got = kwargs.get("encoder_hidden_states")
            if got is None or got.shape != hidden.shape:
                raise RuntimeError(f"per-frame prompts: the UNet got text embeddings of shape "
                                   f"{None if got is None else tuple(got.shape)}, expected {tuple(hidden.shape)}")
            return args, {**kwargs, "encoder_hidden_states": hidden.to(got.dtype)}

        hook = pipe.unet.register_forward_pre_hook(swap, with_kwargs=True)
        return {"prompt_embeds": per_frame[:1], "negative_prompt_embeds": negative if cfg else None}, hook


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
