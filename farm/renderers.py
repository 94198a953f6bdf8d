"""The renderer stack an actor renders windows with. Pure torch/diffusers, no Ray.

The Ray actor (actors/pipeline.py) and the single-process benchmark loop both call this,
so the farm and the plain loop do the same work per window.

A renderer (the class a pipeline descriptor names, farm/pipelines/*.py) has a `device`
attribute, `load_seconds`, and `render(task, overrides) -> np.ndarray`: (F, H, W, 3)
float32 in [0, 1], as the pipeline decoded it (NaN included); a wrapper may add
`warm_up(task, overrides)`, how it renders the actor's throwaway warm-up window
(`warmup_task`). `make_renderer` stacks, from the inside out:

    the pipeline's renderer, or the fixed-cost simulation      farm/pipelines, farm/faults
    fault injection, when the spec asks for it                 farm/faults.FaultyRenderer
    the fallback ladders (NaN/black → VAE in fp32; CUDA OOM →  farm/fallbacks.LadderRenderer
      half the decode chunk → CPU offload), and uint8
"""

from __future__ import annotations

import importlib
import time
from dataclasses import replace

from farm.fallbacks import LadderRenderer
from farm.faults import FaultyRenderer, SimulatedRenderer
from farm.models.load import default_device
from farm.pipelines import descriptor
from farm.shots import compile_film
from farm.spec import JobSpec
from farm.tasks import FaultContext, WindowTask


def renderer_class(pipeline: str) -> type:
    """The renderer class a pipeline's descriptor names ("module:Class")."""
    module, _, name = descriptor(pipeline).renderer.partition(":")
    return getattr(importlib.import_module(module), name)


def make_renderer(spec: JobSpec, device: str | None = None, context: FaultContext | None = None):
    """Build the renderer stack for `spec.model.pipeline` (see the module docstring)."""
    faults = spec.model.faults
    if faults is not None and faults.load_delay:
        time.sleep(faults.load_delay)  # a slow disk or hub: the load takes this much longer
    if faults is not None and faults.simulate_seconds is not None:
        renderer = SimulatedRenderer(faults.simulate_seconds)
    else:
        renderer = renderer_class(spec.model.pipeline)(spec, device or default_device())
    if faults is not None:
        renderer = FaultyRenderer(renderer, faults, context or FaultContext())
    return LadderRenderer(renderer, spec.model.memory.decode_chunk_size)


def warmup_task(spec: JobSpec) -> WindowTask:
    """The throwaway window an actor renders while it starts (`model.warmup`): the shape of
    the job's first window, so shape-specific first-call costs (loading and selecting kernels,
    allocator growth) are paid there, but one denoising step, and the pipeline's stand-in
    inputs (a mid-grey SVD picture, blank control frames). A film's first window is its
    first run's."""
    task = replace(compile_film(spec).task(0), steps=1)
    return descriptor(spec.model.pipeline).warmup_inputs(spec, task)


def last_cache(stack) -> dict | None:
    """What step caching skipped in the window the stack rendered last (the pipeline's
    renderer's `last_cache`, farm.report.skipped), or None: no cache."""
    renderer = stack
    while renderer is not None:
        if hasattr(renderer, "last_cache"):
            return renderer.last_cache
        renderer = getattr(renderer, "inner", None)
    return None


def latent_model(stack):
    """The pipeline's own renderer inside a renderer stack (under the ladder and any fault
    injection): the one with the `latent_*` methods co-denoising calls."""
    renderer = stack
    while not hasattr(renderer, "latent_predict"):
        inner = getattr(renderer, "inner", None)
        if inner is None:
            raise TypeError(f"{type(renderer).__name__} cannot co-denoise: it has no latent_* methods")
        renderer = inner
    return renderer
