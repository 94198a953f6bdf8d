"""What a pipeline declares about itself, so that generic code never asks for its name.

A pipeline file (`farm/pipelines/<name>.py`) holds two things: a descriptor, a subclass of
`Pipeline` that says what the driver, the window keys and the renderer stack need to know,
and a renderer class that holds the loaded diffusers pipeline (see `farm.renderers` for
the renderer interface). The descriptor is imported by the driver, so a pipeline file
imports torch and diffusers only inside its renderer, never at the top.

    class MyPipeline(Pipeline):
        name = "my-pipeline"                       # model.pipeline in the job spec
        renderer = "farm.pipelines.mine:MyRenderer"  # imported on the actors only
        tiny_base = TINY_BASE                      # what `model.base: tiny` builds

        def key_fields(self, spec): ...            # what else determines its frames
        def window_inputs(self, spec, task, before): ...   # per-window inputs, if any

and one line in `farm/pipelines/__init__.py`'s registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from farm.spec import JobSpec
    from farm.tasks import WindowResult, WindowTask


class Pipeline:
    """The default is a pipeline whose windows are independent, need no inputs beyond the
    spec, and may all be stored."""

    #: `model.pipeline` in the job spec.
    name: ClassVar[str]
    #: "module:Class" of the renderer; imported where the pipeline is loaded (the actors).
    renderer: ClassVar[str]
    #: The tiny model `model.base: tiny` names (farm.models.tiny).
    tiny_base: ClassVar[str]
    #: Each window starts from the last frame of the window before: windows run one after
    #: another on one actor (the other GPUs stay free), a failed window ends the chain, and
    #: neighbouring windows share exactly one frame (`window.overlap` is 1).
    chained: ClassVar[bool] = False

    #: Frames per latent frame along time: 1 for an image VAE (AnimateDiff), 4 for a video
    #: VAE that packs 4 frames into each latent frame after the first. Above 1, a window has
    #: `k * t + 1` frames, and in latent mode the windows are laid out in latent frames
    #: (farm.plan).
    temporal_compression: ClassVar[int] = 1
    #: The VAE decodes a latent frame from the ones before it (a causal video VAE): a
    #: co-denoised video is decoded in order, each shard continuing the decoder's state.
    causal_decode: ClassVar[bool] = False

    #: None: the windows can be denoised together (`window.reconcile: latent`, the default;
    #: the renderer then has the `latent_*` methods farm/latent.py calls). Else why not,
    #: for the error that refuses it; the pipeline's default is then `crossfade`.
    no_latent: ClassVar[str | None] = None
    #: Fields a co-denoised job of this pipeline does not take, each with the reason.
    latent_refuses: ClassVar[dict[str, str]] = {}

    # What the job spec may say for this pipeline; farm/spec.py reads these.
    #: The spec block that holds this pipeline's own inputs (`svd:`, `control:`), and what it
    #: must hold at least: required for this pipeline, refused for every other.
    spec_block: ClassVar[str | None] = None
    spec_block_needs: ClassVar[str] = ""
    spec_block_required: ClassVar[bool] = True
    #: Spec fields that may name local files, each ("block.field", "path" or "model"):
    #: `farm submit` ships them with the job (scheduler/jobs.py).
    local_inputs: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: Fields of that block this pipeline needs, and those it refuses (each with the reason).
    block_requires: ClassVar[tuple[str, ...]] = ()
    block_refuses: ClassVar[dict[str, str]] = {}
    #: None: windows are conditioned on text (`prompt` or `prompts`, exactly one). Else why
    #: they are not, for the error that refuses a prompt.
    no_text: ClassVar[str | None] = None
    #: Step caching (`model.cache`): the kinds of diffusers' cache hooks its denoiser takes
    #: (its renderer then keeps one cache state per window, farm/pipelines/_cache.py), and
    #: the kinds it refuses, each with the reason. No kinds: `model.cache` is refused.
    cache_kinds: ClassVar[tuple[str, ...]] = ()
    cache_refuses: ClassVar[dict[str, str]] = {}
    #: None: it takes an identity anchor (`reference:`, a picture read by the IP-Adapter
    #: `model.ip_adapter` names). Else why not, for the error that refuses both.
    no_reference: ClassVar[str | None] = "has no IP-Adapter to read an identity anchor"
    #: Fields under `model:` this pipeline does not take, each with the reason.
    refuses: ClassVar[dict[str, str]] = {}
    #: Spec fields that may name a single-file checkpoint (farm.models.single_file), e.g.
    #: "model.base": its renderer loads them with `from_single_file`. Anywhere else a file
    #: is refused.
    single_file_fields: ClassVar[tuple[str, ...]] = ()
    #: Shots (farm/shots.py): the pipeline block whose `image` a shot may replace (the
    #: shot starts from that picture; None: the pipeline starts from none), and the fewest
    #: frames a run of shots may have.
    shot_image: ClassVar[str | None] = None
    min_frames: ClassVar[int] = 2
    #: Its own defaults for top-level spec fields, and for the fields of `window:`.
    defaults: ClassVar[dict] = {}
    window_defaults: ClassVar[dict] = {}

    def key_fields(self, spec: "JobSpec") -> dict:
        """What this pipeline adds to the model part of every window key (farm.keys):
        everything beyond the base model and dtype that changes a window's frames."""
        return {}

    def window_inputs(self, spec: "JobSpec", task: "WindowTask", before: np.ndarray | None) -> "WindowTask":
        """`task` with its per-window inputs, added just before it is looked up or sent.
        `before` is the last frame of the window before (chained pipelines; None for the
        first window and for independent windows)."""
        return task

    def describe_inputs(self, spec: "JobSpec", task: "WindowTask") -> dict:
        """What the report says about a window's inputs."""
        return {}

    def warmup_inputs(self, spec: "JobSpec", task: "WindowTask") -> "WindowTask":
        """Stand-in inputs for the actor's throwaway warm-up window (same shapes)."""
        return task

    def storable(self, result: "WindowResult") -> bool:
        """Whether a rendered window may be kept in the window store under its key."""
        return True


class LoadedRenderer:
    """What every renderer starts with: its pipeline loaded once, by `load`, and timed.
    A renderer class subclasses it and defines `load(spec, device) -> (pipe, applied
    memory knobs)` and `render(task, overrides)`."""

    def __init__(self, spec: "JobSpec", device: str):
        import time

        self.device = device
        self.spec = spec
        t0 = time.perf_counter()
        self.pipe, self.memory = self.load(spec, device)
        self.load_seconds = time.perf_counter() - t0

    def load(self, spec: "JobSpec", device: str):
        raise NotImplementedError


def read_picture(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB: a shot's start picture, an identity anchor."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def blank_frames(task: "WindowTask") -> np.ndarray:
    """(F, H, W, 3) black uint8 frames of a window's shape."""
    return np.zeros((task.window.length, task.height, task.width, 3), np.uint8)
