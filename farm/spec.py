"""The job spec: one YAML file that says everything about a render.

Validation happens here and only here, before any Ray work starts. Every problem is
reported as `field.path: rule`, so a user can fix the file without reading code, and every
problem is reported at once:

1. field rules: each field on its own (type, range, a folder that must exist), checked by
   pydantic; every number has an upper bound that no real job reaches but a typo does
   (`frames: 1000000000000`), so nothing is ever sized by an unchecked number;
2. rules that compare fields (`window.length <= frames`, `prompt` or `prompts`, …): each
   model's `_rules`, run by the root model (JobSpec, InterpolateJob) on every field that
   passed step 1, even when others failed.

The models forbid unknown keys: a typo such as `window.lenght` is an error, never ignored,
and the message suggests the nearest field. Relative paths in a spec file (the output,
images, control videos, LoRAs, model folders) are taken against the file's own folder, as
docker-compose and Kubernetes read theirs; a spec given as a mapping (`parse_spec`), and
`-o` on the command line, against the current directory.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from farm.blend import SCHEMES
from farm.errors import EncodeError, SpecError
from farm.models.remote import is_remote
from farm.models.single_file import CONFIG_NEEDS, is_single_file
from farm.models.single_file import SUFFIXES as SINGLE_FILE_SUFFIXES
from farm.models.tiny import IP_ADAPTER_WEIGHTS
from farm.pipelines import REGISTRY, descriptor
from farm.shots import compile_film, run_groups
from farm.util import first_line

# Upper bounds: far above any real job, far below what a typo asks for.
MAX_FRAMES = 1_000_000        # frames of a job (about 35 h at 8 fps)
MAX_WINDOW = 10_000           # frames of one window, or decoded at once
MAX_SIZE = 8192               # pixels a side
MAX_STEPS = 1000              # denoising steps
MAX_GUIDANCE = 100.0
MAX_LORA_WEIGHT = 10.0
MAX_REFERENCE_SCALE = 5.0
MAX_RIFE_WORKERS = 256
MAX_CHUNK = 256               # frame pairs per RIFE chunk
MAX_CALLS = 1_000_000         # render calls an actor makes (fault injection)
MAX_LIST = 1000               # entries of a fault list
MAX_SECONDS = 3600.0          # injected delays


#: The folder relative paths of the spec being validated are taken against: the spec
#: file's (load_spec); None for the current directory.
_BASE: ContextVar[Path | None] = ContextVar("spec_base", default=None)


def _resolve(v: str) -> Path:
    """`v` as an absolute path: `~` expanded; a relative one is taken against the spec
    file's folder (or the current directory)."""
    path = Path(v).expanduser()
    return path if path.is_absolute() else (_BASE.get() or Path.cwd()) / path


def _named(v: str, path: Path) -> str:
    """A path as an error names it: the full path tried, and what the spec said if it differs."""
    return repr(str(path)) if str(path) == v else f"{str(path)!r} (the spec says {v!r})"


# --- field rules: each looks at its own value only --------------------------------------

def check_output(v: str) -> str:
    """An output path must end in .mp4 and its folder must exist. Returns it absolute.
    An object-storage URI (s3://bucket/key.mp4, gs://…) is checked by farm.outputs."""
    from farm import outputs

    if outputs.is_uri(v):
        return outputs.check_output_uri(v)
    path = _resolve(v)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"must end in .mp4 (the farm writes H.264 in mp4); got {v!r}")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise ValueError(f"folder {str(parent)!r} does not exist; create it first")
    if path.is_dir():
        raise ValueError(f"{_named(v, path)} is a folder, not a file")
    return str(path.resolve())


def _model_ref(ref: str) -> str:
    """`tiny`, a hub id, a local folder that exists, a single-file checkpoint that exists
    (`.safetensors`, `.ckpt`, `.pth`), or the URI of a model staged with `farm models stage`
    (read on the driver before any actor starts); a local one is made absolute."""
    if ref == "tiny":
        return ref
    if is_remote(ref):
        return _staged_uri(ref)
    path = _resolve(ref)
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ValueError(f"no file at {_named(ref, path)}")
        return str(path.resolve())
    if ref.startswith(("/", "./", "../", "~")) or path.exists():
        if path.is_file():
            raise ValueError(f"{_named(ref, path)} is a file but not a checkpoint: a single-file model ends in "
                             f"{', '.join(SINGLE_FILE_SUFFIXES)}; otherwise give a folder in diffusers layout")
        if not path.is_dir():
            raise ValueError(f"folder {_named(ref, path)} does not exist")
        return str(path.resolve())
    return ref


def _config_ref(v: str | None) -> str | None:
    """`sd15`, `tiny`, or a folder that exists (made absolute)."""
    if v is None or v in ("sd15", "tiny"):
        return v
    path = _resolve(v)
    if not path.is_dir():
        raise ValueError(f"must be sd15, tiny or a folder of configs in diffusers layout; no folder at {_named(v, path)}")
    return str(path.resolve())


def _staged_uri(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket or not key.strip("/"):
        raise ValueError(f"{uri!r}: name the staged model's prefix, e.g. {scheme}://bucket/models/name")
    return uri.rstrip("/")


def _existing_path(v: str | None) -> str | None:
    if v is None:
        return None
    path = _resolve(v)
    if not path.exists():
        raise ValueError(f"nothing at {_named(v, path)}")
    return str(path.resolve())


def _existing_or_staged(v: str | None) -> str | None:
    return _staged_uri(v) if v is not None and is_remote(v) else _existing_path(v)


def _existing_file(v: str | None) -> str | None:
    if v is None:
        return None
    path = _resolve(v)
    if not path.is_file():
        raise ValueError(f"no file at {_named(v, path)}")
    return str(path.resolve())


def _weights_file(v: str) -> str:
    """The name of a weights file inside a model's folder: .safetensors, or .bin (read
    with torch.load(weights_only=True))."""
    if "/" in v or "\\" in v or not v.endswith((".safetensors", ".bin")):
        raise ValueError(f"must name a .safetensors (or .bin) file in the adapter's models/ folder, e.g. "
                         f"{IP_ADAPTER_WEIGHTS}; got {v!r}")
    return v


def _radius(v: Any) -> int | str:
    """`window.rerender_radius`: a count of windows, or `all`."""
    if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_WINDOW):
        return v
    raise ValueError(f"must be a number of windows, 0–{MAX_WINDOW}, or all (the whole run); got {v!r}")


def _multiple_of_8(v: int) -> int:
    if v % 8:
        raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8); got {v}")
    return v


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot be opened as an image: {err}") from None


def _image_opens(v: str) -> str:
    path = _resolve(v)
    if not path.is_file():
        raise ValueError(f"no file at {_named(v, path)}")
    try:
        w, h = _image_size(path)
    except ValueError as err:
        raise ValueError(f"{_named(v, path)} {err}") from None
    if min(w, h) < 16:
        raise ValueError(f"{_named(v, path)} is {w}×{h}; it must be at least 16 pixels on each side")
    return str(path.resolve())


ModelRef = Annotated[str, Field(min_length=1), AfterValidator(_model_ref)]
Frame = Annotated[int, Field(ge=0, le=MAX_FRAMES)]
Call = Annotated[int, Field(ge=1, le=MAX_CALLS)]
Pixels = Annotated[int, Field(gt=0, le=MAX_SIZE), AfterValidator(_multiple_of_8)]


# --- the models -----------------------------------------------------------------------------

Rules = Iterator[tuple[str, str]]  # (field path relative to the model, rule); "" is the model itself


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        """Rules that compare this model's fields. `v` holds the fields that passed their own
        rules (a sub-model as a dict of its passing fields); a field that failed is absent."""
        return iter(())


class FaultSpec(_Strict):
    """Fault injection, for testing the farm's own failure handling; never needed for real
    jobs. The faults wrap the real pipeline (see farm/faults.py); none changes the frames of
    a window that succeeds, so they are not part of the window key."""

    fail_windows: list[Frame] = Field([], max_length=MAX_LIST)  # these windows raise on every attempt
    crash_on_call: Call | None = None  # each actor's process exits on its k-th window, first life only
    fail_on_resource: str | None = None  # actors on nodes with this custom resource raise on every window
    delay: float = Field(0.0, ge=0, le=MAX_SECONDS)  # seconds of sleep before each window (latent: each step)
    load_delay: float = Field(0.0, ge=0, le=MAX_SECONDS)  # seconds of sleep before each pipeline load (a slow disk)
    simulate_seconds: float | None = Field(None, ge=0, le=MAX_SECONDS)  # replace the pipeline by a SIMULATION
    oom_on_calls: list[Call] = Field([], max_length=MAX_LIST)  # these render calls (1-based) raise CUDA OOM
    nan_on_calls: list[Call] = Field([], max_length=MAX_LIST)  # these render calls decode to NaN frames
    fail_chunks: list[Frame] = Field([], max_length=MAX_LIST)  # these RIFE chunks raise on every attempt
    crash_on_step: Call | None = None  # latent: the last shard's actor exits on reaching this step, first life only
    crash_segments: list[Frame] = Field([], max_length=MAX_LIST)  # these segment tasks' processes exit, first attempt




#: Step caching (model.cache): each kind's settings and their defaults, diffusers' own
#: (hooks/*.py in diffusers 0.42), except `pab`'s spatial skip range: diffusers leaves it
#: unset, which caches nothing; 2 is the value its documentation uses.
CACHE_SETTINGS: dict[str, dict[str, Any]] = {
    "first_block": {"threshold": 0.05},
    "mag": {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2, "mag_ratios": None},
    "taylorseer": {"cache_interval": 5, "disable_cache_before_step": 3, "disable_cache_after_step": None,
                   "max_order": 1},
    "faster": {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (-1, 681),
               "unconditional_batch_skip_range": 5, "unconditional_batch_timestep_skip_range": (-1, 641)},
    "pab": {"spatial_attention_block_skip_range": 2, "cross_attention_block_skip_range": None,
            "spatial_attention_timestep_skip_range": (100, 800), "cross_attention_timestep_skip_range": (100, 800)},
}
Timesteps = tuple[Annotated[int, Field(ge=-1, le=1000)], Annotated[int, Field(ge=-1, le=1000)]]
SkipRange = Annotated[int, Field(ge=1, le=MAX_STEPS)]


class CacheSpec(_Strict):
    """Step caching with diffusers' cache hooks on the denoiser (a transformer's): steps
    whose output barely changes skip or reuse the blocks' work. Each window and guidance
    branch keeps its own cache state (farm/pipelines/_cache.py). Give `kind` and any of
    that kind's settings (CACHE_SETTINGS); an unset setting takes diffusers' default."""

    kind: Literal[tuple(CACHE_SETTINGS)]
    threshold: float | None = Field(None, ge=0, le=1)  # first_block, mag: how much change a skip tolerates
    max_skip_steps: int | None = Field(None, ge=1, le=MAX_STEPS)  # mag: consecutive steps skipped at most
    retention_ratio: float | None = Field(None, ge=0, le=1)  # mag: the share of first steps never skipped
    # mag: the model's magnitude ratio per step (checkpoint-dependent; interpolated to the job's steps)
    mag_ratios: list[Annotated[float, Field(gt=0, le=10)]] | None = Field(None, min_length=2, max_length=MAX_STEPS)
    cache_interval: int | None = Field(None, ge=1, le=MAX_STEPS)  # taylorseer: steps between full computations
    disable_cache_before_step: int | None = Field(None, ge=0, le=MAX_STEPS)  # taylorseer: steps computed first
    disable_cache_after_step: int | None = Field(None, ge=1, le=MAX_STEPS)  # taylorseer: computed from this step on
    max_order: int | None = Field(None, ge=0, le=4)  # taylorseer: the Taylor expansion's order
    spatial_attention_block_skip_range: SkipRange | None = None  # pab, faster: self-attention computed every N calls
    cross_attention_block_skip_range: SkipRange | None = None  # pab: cross-attention computed every N calls
    unconditional_batch_skip_range: SkipRange | None = None  # faster: the unconditional branch every N steps
    # pab, faster: the timesteps (of 1000) where the attention may be reused
    spatial_attention_timestep_skip_range: Timesteps | None = None
    cross_attention_timestep_skip_range: Timesteps | None = None
    unconditional_batch_timestep_skip_range: Timesteps | None = None

    def settings(self) -> dict[str, Any]:
        """The kind's settings, each as the spec gives it or diffusers' default."""
        given = self.model_dump(exclude={"kind"})
        return {name: default if given[name] is None else given[name]
                for name, default in CACHE_SETTINGS[self.kind].items()}

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        kind = v.get("kind")
        if kind not in CACHE_SETTINGS:
            return
        own = CACHE_SETTINGS[kind]
        for name in cls.model_fields:
            if name != "kind" and name not in own and v.get(name) is not None:
                yield name, f"not a setting of cache kind {kind} (its settings: {', '.join(own)})"
        for name in own:
            span = v.get(name)
            if name.endswith("timestep_skip_range") and span is not None and span[0] >= span[1]:
                yield name, f"must be [low, high] with low < high; got {list(span)}"
        before, after = v.get("disable_cache_before_step"), v.get("disable_cache_after_step")
        before = own.get("disable_cache_before_step") if before is None else before
        if kind == "taylorseer" and after is not None and before is not None and after <= before:
            yield "disable_cache_after_step", (f"must be above disable_cache_before_step ({before}): nothing "
                                               f"would be cached; got {after}")
        if kind == "mag" and "mag_ratios" in v and v["mag_ratios"] is None:  # (absent: it failed its own rule)
            yield "mag_ratios", ("MagCache needs the checkpoint's magnitude ratio per step (they depend on the "
                                 "model; the MagCache project publishes them for Wan 2.1); give model.cache.mag_ratios")


def cache_refusal(pipeline: str, kind: str) -> str | None:
    """Why `pipeline` cannot cache its steps with `kind` (None: it can)."""
    d = descriptor(pipeline)
    if kind in d.cache_kinds:
        return None
    if kind in d.cache_refuses:
        return f"{kind} does not work with {pipeline}: {d.cache_refuses[kind]}"
    able = [name for name in REGISTRY if descriptor(name).cache_kinds]
    return (f"{pipeline}'s denoiser has no diffusers cache hooks (they are for transformer denoisers); "
            f"step caching is for {', '.join(able)}")


class LoraSpec(_Strict):
    """A LoRA loaded with `load_lora_weights`, then weighted with `set_adapters`."""

    path: Annotated[str | None, AfterValidator(_existing_or_staged)] = None  # a .safetensors file, a folder, or a staged URI
    id: str | None = None  # or a hub id (or tiny-motion-lora / tiny-sd-lora)
    weight_name: str | None = None  # the file inside a folder or hub repo, when there are several
    weight: float = Field(1.0, ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        if "path" in v and "id" in v and (v["path"] is None) == (v["id"] is None):
            yield "", "give exactly one of `path` (a local file or folder) or `id`"


class MemorySpec(_Strict):
    """GPU memory knobs from the diffusers guides, applied once when an actor loads."""

    cpu_offload: bool = False  # enable_model_cpu_offload(): whole models move to the GPU in turn
    # the denoiser's blocks stay on the CPU and move to the GPU a group at a time (enable_group_offload)
    group_offload: bool = False
    # the denoiser's weights stored in fp8 and upcast layer by layer (enable_layerwise_casting)
    layerwise_casting: bool = False
    forward_chunking: bool = False  # unet.enable_forward_chunking(): feed-forward layers in chunks
    vae_slicing: bool = False  # vae.enable_slicing(): decode one image at a time
    vae_tiling: bool = False  # vae.enable_tiling(): decode in overlapping spatial tiles

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        if v.get("cpu_offload") and v.get("group_offload"):
            yield "group_offload", "take one of cpu_offload (whole models) and group_offload (blocks), not both"
    decode_chunk_size: int | None = Field(None, ge=1, le=MAX_WINDOW)  # frames decoded by the VAE at once


class ModelSpec(_Strict):
    """Which pipeline renders the windows, and from which weights.

    `base` and `motion_adapter` are each `tiny` (a tiny random-weight model built offline),
    a local folder in diffusers layout, a hub id such as `emilianJR/epiCRealism`, or (for
    the AnimateDiff pipelines) one checkpoint file in the original layout, read with the
    configs `config` names. For `svd`, `base` is the Stable Video Diffusion checkpoint and
    there is no motion adapter.
    """

    pipeline: Literal[tuple(REGISTRY)]  # farm/pipelines: one file and one registry line each
    base: ModelRef = "tiny"
    motion_adapter: ModelRef = "tiny"
    vae: ModelRef | None = None  # AnimateDiff: a VAE instead of the base's (tiny, a folder, a hub id or a file)
    # the configs single-file checkpoints are read with: sd15 (unset), tiny, or a folder in diffusers layout
    config: Annotated[str | None, AfterValidator(_config_ref)] = None
    scheduler: Literal["ddim", "euler", "lcm"] | None = None  # AnimateDiff; default ddim
    loras: list[LoraSpec] = Field([], max_length=MAX_LIST)
    memory: MemorySpec = MemorySpec()
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    # Each actor renders one throwaway 1-step window of the job's shape while it starts, so
    # first-call costs (loading and selecting kernels, allocator growth) are paid there.
    warmup: bool = True
    cache: CacheSpec | None = None  # step caching, for the pipelines whose denoiser has diffusers' cache hooks
    # AnimateDiff: the IP-Adapter that reads `reference:` (tiny, a folder or a hub id in
    # h94/IP-Adapter's layout: <ip_adapter>/models/<ip_adapter_weights> and models/image_encoder/)
    ip_adapter: ModelRef | None = None
    ip_adapter_weights: Annotated[str, Field(min_length=1), AfterValidator(_weights_file)] = IP_ADAPTER_WEIGHTS
    faults: FaultSpec | None = None

    @property
    def scheduler_name(self) -> str | None:
        if "scheduler" in descriptor(self.pipeline).refuses:
            return None
        return self.scheduler or "ddim"

    def dtype_on(self, device: str) -> str:
        """The dtype this model runs in on `device`: `auto` is fp16 on CUDA, fp32 on CPU."""
        if self.dtype == "auto":
            return "fp16" if device.startswith("cuda") else "fp32"
        return self.dtype

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        if v.get("pipeline") in REGISTRY:
            for field, why in descriptor(v["pipeline"]).refuses.items():
                if _get(v, field):
                    yield field, why
        cache = v.get("cache")
        if v.get("pipeline") in REGISTRY and cache and cache.get("kind") in CACHE_SETTINGS:
            why = cache_refusal(v["pipeline"], cache["kind"])
            if why:
                yield "cache", why
        if v.get("pipeline") in REGISTRY and v.get("ip_adapter") is not None:
            why = descriptor(v["pipeline"]).no_reference
            if why:
                yield "ip_adapter", f"{v['pipeline']} {why}"
        names = [lora.get("name") for lora in v.get("loras") or [] if lora and lora.get("name")]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            yield "loras", f"adapter names must be unique; repeated: {dupes}"


class WindowSpec(_Strict):
    """How the video is cut into overlapping windows and how the overlaps are blended."""

    length: int = Field(16, gt=0, le=MAX_WINDOW)
    overlap: int = Field(4, ge=0, lt=MAX_WINDOW)
    blend: Literal[SCHEMES] = "linear"  # farm/blend.py: the fuse weights in both modes
    # latent: the windows are denoised together, every frame's noise prediction the weighted
    # mean of its windows' at every step (farm/codenoise.py); crossfade: each window alone,
    # the decoded overlaps blended in pixels. The default is the pipeline's (latent where it can).
    reconcile: Literal["latent", "crossfade"] = "latent"
    checkpoint_every: int = Field(5, ge=1, le=MAX_STEPS)  # latent: save the latents every this many steps
    # latent: keep every step's latents of each run in the store, so that an edit re-renders
    # only the windows near it (a local re-render; farm/rerender.py)
    keep_steps: bool = False
    # a local re-render: the windows within this many windows of the changed ones; `all`: the whole run
    rerender_radius: Annotated[Any, AfterValidator(_radius)] = 1

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        if "length" in v and "overlap" in v and v["overlap"] >= v["length"]:
            yield "overlap", f"must be < window.length ({v['length']}); got {v['overlap']}"
        if v.get("keep_steps") and v.get("reconcile") == "crossfade":
            yield "keep_steps", ("is for window.reconcile: latent; a crossfade job keeps every window in the store "
                                 "and renders again only the windows an edit reaches")


class EncodeSpec(_Strict):
    """H.264 settings of the output mp4."""

    crf: int = Field(18, ge=0, le=51)
    preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
    ] = "medium"
    # ffmpeg processes encoding consecutive segments at once, joined without re-encoding at
    # the end; for drivers whose one encoder cannot keep up with many GPUs (docs/benchmarks.md)
    parallel: int = Field(1, ge=1, le=16)
    # frames per segment, at least (parallel > 1, or path: segments, where segments end mid-seam)
    segment_frames: int = Field(120, ge=8, le=MAX_FRAMES)
    # where the frames are reconciled, metered, interpolated and encoded: in the driver, in
    # segment tasks on the cluster (the driver never touches a frame), or chosen by job size
    path: Literal["auto", "driver", "segments"] = "auto"


class InterpolateSpec(_Strict):
    """Frame interpolation after blending (RIFE): `fps` or `factor`, exactly one."""

    fps: float | None = Field(None, gt=0, le=240)
    factor: Literal[2, 4, 8] | None = None
    backend: Literal["torch", "ncnn"] = "torch"
    # torch backend: a flownet.pkl; default the pulled, verified copy
    weights: Annotated[str | None, AfterValidator(_existing_file)] = None
    model_dir: Annotated[str | None, AfterValidator(_existing_path)] = None  # ncnn backend: a rife-ncnn-vulkan model folder
    gpuid: int = Field(0, ge=-1, le=255)  # ncnn backend: -1 = CPU
    scene_threshold: float = Field(0.2, ge=0, le=1)
    # frames that start a new shot: the pair (f-1, f) is never interpolated
    cuts: list[Annotated[int, Field(ge=1, le=MAX_FRAMES)]] = Field([], max_length=MAX_FRAMES)
    workers: int = Field(2, ge=1, le=MAX_RIFE_WORKERS)
    chunk: int = Field(8, ge=1, le=MAX_CHUNK)

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        if "fps" in v and "factor" in v and (v["fps"] is None) == (v["factor"] is None):
            yield "", "give exactly one of interpolate.fps or interpolate.factor"


class SvdSpec(_Strict):
    """Stable Video Diffusion (image → video). Windows are chained: each window after the
    first is conditioned on the last frame of the window before."""

    image: Annotated[str, AfterValidator(_image_opens)]  # the starting picture
    motion_bucket_id: int = Field(127, ge=1, le=255)  # more motion with higher values
    fps: int = Field(7, ge=1, le=60)  # SVD's fps micro-conditioning; not the output fps
    noise_aug_strength: float = Field(0.02, ge=0, le=1)
    # each window's colours matched to its conditioning frame's (farm/color.py): no drift along the chain
    color_match: bool = True


class WanSpec(_Strict):
    """Wan's own settings: all optional for text to video; `image` for image to video."""

    image: Annotated[str, AfterValidator(_image_opens)] | None = None  # wan-i2v: the starting picture
    shift: float = Field(5.0, gt=0, le=100)  # the flow-matching scheduler's shift (3.0 for 480p in Wan's guides)
    guidance_2: float | None = Field(None, ge=0, le=MAX_GUIDANCE)  # Wan 2.2's low-noise expert; default `guidance`
    max_sequence_length: int = Field(512, ge=1, le=512)  # text tokens the UMT5 encoder reads


class ControlSpec(_Strict):
    """ControlNet conditioning: one control image (e.g. an OpenPose skeleton) per frame."""

    video: Annotated[str, AfterValidator(_existing_path)]  # an mp4, or a folder of frames (sorted by name)
    scale: float = Field(0.7, ge=0, le=2)
    start: Frame = 0  # the video's frame that the job's first frame reads (a shot's: shots[].control_start)
    model: ModelRef = "tiny"  # `tiny`, a folder, a hub id (e.g. lllyasviel/sd-controlnet-openpose) or a file


def _join(v: Any) -> Any:
    """`cut`, `fuse`, or `{dissolve: N}` (N frames crossfaded)."""
    if v in ("cut", "fuse"):
        return v
    if isinstance(v, dict) and list(v) == ["dissolve"]:
        n = v["dissolve"]
        if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_WINDOW:
            return {"dissolve": n}
        raise ValueError(f"dissolve takes the frames to crossfade, 1..{MAX_WINDOW}; got {n!r}")
    raise ValueError(f"must be one of cut, fuse or {{dissolve: N}} (N frames crossfaded); got {v!r}")


class ReferenceSpec(_Strict):
    """An identity anchor (AnimateDiff, with `model.ip_adapter`): a picture of the subject
    the IP-Adapter keeps every frame close to, by `scale` (0: no anchor)."""

    image: Annotated[str, AfterValidator(_image_opens)]
    scale: float = Field(1.0, ge=0, le=MAX_REFERENCE_SCALE)


class ShotReference(_Strict):
    """A shot's `reference:`: what it changes of the job's (its own picture, its own
    scale; `scale: 0` turns the anchor off for the shot)."""

    image: Annotated[str, AfterValidator(_image_opens)] | None = None
    scale: float | None = Field(None, ge=0, le=MAX_REFERENCE_SCALE)


class ShotSpec(_Strict):
    """One shot of a film (`shots:`): its length, its text, and how it joins the next.
    Unset `negative_prompt`, `seed` and `guidance` take the job's; `image` (the pipelines
    that start from a picture) takes the pipeline block's."""

    frames: int | None = Field(None, gt=0, le=MAX_FRAMES)
    seconds: float | None = Field(None, gt=0, le=MAX_SECONDS * 10)  # at the job's fps
    prompt: str | None = Field(None, min_length=1)
    prompts: dict[int, str] | None = None  # a schedule {frame of the shot: text}
    negative_prompt: str | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE)
    image: Annotated[str, AfterValidator(_image_opens)] | None = None  # the shot starts from this picture
    control_start: Frame | None = None  # animatediff-controlnet: the control video's frame this shot starts at
    reference: ShotReference | None = None  # its own identity anchor (image, scale) instead of the job's
    # its own weights for the job's LoRAs, by name (the LoRAs stay loaded; e.g. a character LoRA off)
    loras: dict[str, Annotated[float, Field(ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT)]] | None = None
    then: Annotated[Any, AfterValidator(_join)] = "cut"

    @property
    def join(self) -> str:
        return self.then if isinstance(self.then, str) else "dissolve"

    @property
    def dissolve(self) -> int:
        return self.then["dissolve"] if isinstance(self.then, dict) else 0

    @property
    def schedule(self) -> dict[int, str]:
        return dict(self.prompts) if self.prompts is not None else {0: self.prompt or ""}

    @property
    def first_prompt(self) -> str:
        return self.schedule[min(self.schedule)] if self.schedule else ""

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        if "frames" in v and "seconds" in v and (v["frames"] is None) == (v["seconds"] is None):
            yield "", "give exactly one of `frames` or `seconds` (at the job's fps)"
        if v.get("prompt") is not None and v.get("prompts") is not None:
            yield "prompt", "give one of `prompt` (one text) or `prompts` (a {frame: text} schedule), not both"
        if v.get("prompts") is not None:
            yield from _schedule_fits(v["prompts"], v.get("frames"))


class _Root(_Strict):
    """A whole job. Validating one runs every field rule, then every model's `_rules` on the
    fields that passed, and raises one SpecError listing every problem."""

    @classmethod
    def _prepare(cls, data: Any) -> Any:
        return data

    @model_validator(mode="wrap")
    @classmethod
    def _every_rule(cls, data: Any, handler):
        if not isinstance(data, dict):
            raise SpecError(["the spec must be a YAML mapping of fields (model:, prompt:, frames:, …)"])
        data = cls._prepare(data)
        try:
            job = handler(data)
        except ValidationError as err:
            raise SpecError(_format_errors(err, cls) + _rule_problems(cls, _parsed(cls, data))) from None
        problems = _rule_problems(cls, job.model_dump())
        if problems:
            raise SpecError(problems)
        return cls._finish(job)

    @classmethod
    def _finish(cls, job):
        """Fields derived from others, once every rule holds."""
        return job


class JobSpec(_Root):
    """A whole render job. See README.md, "Job spec reference", for every field."""

    model: ModelSpec
    prompt: str | None = Field(None, min_length=1)
    prompts: dict[int, str] | None = None  # a schedule {first frame: text}; instead of `prompt`
    prompt_transition: int = Field(8, ge=1, le=MAX_FRAMES)  # frames over which a scheduled change blends in
    negative_prompt: str = ""
    frames: int | None = Field(None, gt=0, le=MAX_FRAMES)  # required, unless the shots give it
    # a film of shots (farm/shots.py), instead of `frames` and `prompt`/`prompts`
    shots: list[ShotSpec] = Field([], max_length=MAX_LIST)
    fps: float = Field(8, gt=0, le=240)
    width: Pixels = 512
    height: Pixels = 512
    steps: int = Field(25, gt=0, le=MAX_STEPS)
    guidance: float = Field(7.5, ge=0, le=MAX_GUIDANCE)
    seed: int = Field(0, ge=0, lt=2**63)
    window: WindowSpec = WindowSpec()
    encode: EncodeSpec = EncodeSpec()
    interpolate: InterpolateSpec | None = None
    svd: SvdSpec | None = None  # model.pipeline: svd
    control: ControlSpec | None = None  # model.pipeline: animatediff-controlnet
    wan: WanSpec | None = None  # model.pipeline: wan (optional)
    reference: ReferenceSpec | None = None  # AnimateDiff with model.ip_adapter: an identity anchor
    retries: int = Field(3, ge=0, le=100)
    output: Annotated[str, Field(min_length=1), AfterValidator(check_output)]

    @property
    def wan_settings(self) -> WanSpec:
        return self.wan or WanSpec()

    def shot_reference(self, index: int) -> ReferenceSpec | None:
        """Shot `index`'s identity anchor: its own `reference` over the job's (None: none)."""
        own = self.shots[index].reference
        if own is None or (own.image is None and self.reference is None):
            return self.reference
        job = self.reference.model_dump() if self.reference is not None else {}
        return ReferenceSpec(**(job | own.model_dump(exclude_none=True)))

    def shot_lora_weights(self, index: int) -> tuple[float, ...] | None:
        """Shot `index`'s weights for the job's LoRAs, in `model.loras` order, where its own
        `loras` change them (None: the job's)."""
        own = self.shots[index].loras or {}
        weights = tuple(own.get(lora.name, lora.weight) for lora in self.model.loras)
        return weights if weights != tuple(lora.weight for lora in self.model.loras) else None

    def shot_frames(self, index: int) -> int:
        """Frames of shot `index`: its `frames`, or its `seconds` at the job's fps."""
        shot = self.shots[index]
        return shot.frames if shot.frames is not None else _seconds_to_frames(shot.seconds, self.fps)

    @property
    def shot_image_block(self) -> str | None:
        """The pipeline block whose `image` a shot's `image` replaces (None: no picture)."""
        return descriptor(self.model.pipeline).shot_image

    @classmethod
    def _finish(cls, job: "JobSpec") -> "JobSpec":
        """A film's length: its shots' frames, less the frames its dissolves lay over each other."""
        if not job.shots:
            return job
        frames = sum(job.shot_frames(i) for i in range(len(job.shots)))
        return job.model_copy(update={"frames": frames - sum(shot.dissolve for shot in job.shots[:-1])})

    @property
    def temporal_compression(self) -> int:
        """Frames per latent frame of the pipeline's VAE along time (farm.plan)."""
        return descriptor(self.model.pipeline).temporal_compression

    @property
    def schedule(self) -> dict[int, str]:
        """The prompts as a schedule; a single `prompt` is {0: prompt}; svd has none ({0: ""});
        a film's is each shot's first prompt at the shot's first frame (for labels)."""
        if self.shots:
            return {shot.start: shot.prompt for shot in compile_film(self).shots}
        if self.prompts is not None:
            return dict(self.prompts)
        return {0: self.prompt or ""}

    def report_dump(self) -> dict:
        """The spec as the job report shows it: as JSON, with the defaults that depend on
        the pipeline filled in (`model.scheduler` is `ddim` for AnimateDiff, not null)."""
        data = self.model_dump(mode="json")
        data["model"]["scheduler"] = self.model.scheduler_name
        return data

    @property
    def output_fps(self) -> float:
        ip = self.interpolate
        if ip is None:
            return self.fps
        return ip.fps if ip.fps is not None else self.fps * ip.factor

    @classmethod
    def _prepare(cls, data: dict) -> dict:
        """The pipeline's own defaults (its descriptor's `defaults` and `window_defaults`:
        a chained pipeline's windows share exactly one frame and are crossfaded)."""
        model = data.get("model")
        pipeline = model.get("pipeline") if isinstance(model, dict) else None
        if not isinstance(pipeline, str) or pipeline not in REGISTRY:
            return data
        d = descriptor(pipeline)
        window = data.get("window") or {}
        if isinstance(window, dict):
            data = {**data, "window": {**d.window_defaults, **window}}
        return {**d.defaults, **data}

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        yield from _shots_fit(v)
        yield from _window_fits(v)
        yield from _interpolation_fits(v)
        yield from _pipeline_inputs(v)
        yield from _prompt_source(v)
        yield from _references(v)
        yield from _faults_name_real_windows(v)
        yield from _faults_fit_reconcile(v)
        yield from _segments_fit(v)
        yield from _single_files(v)


def _seconds_to_frames(seconds: float, fps: float) -> int:
    return max(1, round(seconds * fps))


def _shots_fit(v: dict) -> Rules:
    """A job gives `frames` and `prompt`/`prompts`, or `shots`; each shot fits its
    pipeline and its neighbours (farm/shots.py): fused shots are one run (one seed, one
    guidance, one negative prompt, and no new picture), a dissolve is shorter than both
    shots, and every run is long enough for the pipeline."""
    shots = v.get("shots")
    if not shots:
        if "frames" in v and v["frames"] is None and "shots" in v:
            yield "frames", "field required (or give `shots:`, a film of shots)"
        return
    if v.get("frames") is not None:
        yield "frames", "a film's length is its shots' (each shot's frames or seconds); remove frames"
    for field in ("prompt", "prompts"):
        if v.get(field) is not None:
            yield field, "each shot has its own prompt or prompts; remove the top-level one"
    if _get(v, "encode.path") == "segments":
        yield "encode.path", ("segments is not for a film of shots: its runs are joined (cut, dissolve) in the "
                              "driver; use driver (or auto)")
    pipeline = _get(v, "model.pipeline")
    d = descriptor(pipeline) if pipeline in REGISTRY else None
    fps = v.get("fps") or 8
    lengths = [None if not isinstance(s, dict) else s.get("frames") if s.get("frames") is not None
               else _seconds_to_frames(s["seconds"], fps) if s.get("seconds") is not None else None for s in shots]
    last = len(shots) - 1
    for i, shot in enumerate(shots):
        if not isinstance(shot, dict):
            continue
        if d is not None:
            yield from _shot_inputs(i, shot, pipeline, d)
        then, n = shot.get("then"), lengths[i]
        if i == last and then not in (None, "cut"):
            yield f"shots.{i}.then", "the last shot joins no shot after it; remove `then` (or use cut)"
        if isinstance(then, dict) and i < last:
            k = then["dissolve"]
            before = shots[i - 1].get("then") if i and isinstance(shots[i - 1], dict) else None
            taken = k + (before["dissolve"] if isinstance(before, dict) else 0)
            after = lengths[i + 1]
            if n is not None and taken >= n:
                into = f" less the {taken - k} dissolved into it" if taken > k else ""
                yield f"shots.{i}.then", f"dissolve {k} must be shorter than shot {i} ({n} frames{into})"
            if after is not None and k >= after:
                yield f"shots.{i}.then", f"dissolve {k} must be shorter than shot {i + 1} ({after} frames)"
        yield from _shot_loras(i, shot, v)
        if then == "fuse" and i < last and isinstance(shots[i + 1], dict):
            yield from _fused(i, shot, shots[i + 1], v, d)
    if d is not None:
        yield from _runs_long_enough(shots, lengths, pipeline, d)
    video = _get(v, "control.video")
    if d is not None and d.spec_block == "control" and video is not None and None not in lengths:
        for first, start, frames in _control_reads(shots, lengths, _get(v, "control.start") or 0):
            yield from _control_frames(video, start + frames, f"shot {first}'s run reads up to frame")


def _control_reads(shots: list, lengths: list[int], base: int) -> Iterator[tuple[int, int, int]]:
    """(first shot, first control frame, frames) of each run of shots."""
    out = 0
    for run in run_groups([_then(s) for s in shots]):
        head = shots[run[0]] if isinstance(shots[run[0]], dict) else {}
        start, then = head.get("control_start"), _then(shots[run[-1]])
        frames = sum(lengths[i] for i in run)
        yield run[0], base + out if start is None else start, frames
        out += frames - (then["dissolve"] if isinstance(then, dict) else 0)


def _then(shot) -> Any:
    return shot.get("then") if isinstance(shot, dict) else None


def _shot_inputs(i: int, shot: dict, pipeline: str, d) -> Rules:
    if d.no_text:
        if shot.get("prompt") is not None or shot.get("prompts") is not None:
            yield f"shots.{i}.prompt", f"{pipeline} {d.no_text}; remove prompt/prompts"
    elif shot.get("prompt") is None and shot.get("prompts") is None and "prompt" in shot and "prompts" in shot:
        yield f"shots.{i}", "give `prompt` (one text) or `prompts` (a {frame: text} schedule)"
    if shot.get("image") is not None and d.shot_image is None:
        yield f"shots.{i}.image", f"{pipeline} starts from no picture; a shot's image is for the pipelines that do"
    if shot.get("control_start") is not None and d.spec_block != "control":
        yield f"shots.{i}.control_start", f"is for the pipelines with a control video; {pipeline} has none"


def _lora_weights(shot: dict, v: dict) -> dict:
    """{LoRA name: weight} for a shot: the job's, with the shot's own over them."""
    job = {lora.get("name"): lora.get("weight") for lora in _get(v, "model.loras") or [] if lora}
    return job | {k: w for k, w in (shot.get("loras") or {}).items() if k in job}


def _shot_loras(i: int, shot: dict, v: dict) -> Rules:
    names = [lora.get("name") for lora in _get(v, "model.loras") or [] if lora]
    for name in shot.get("loras") or {}:
        if name not in names:
            known = f"its LoRAs: {', '.join(names)}" if names else "it has none"
            yield f"shots.{i}.loras.{name}", (f"no LoRA named {name!r} in model.loras ({known}); a shot sets the "
                                              "weights of the job's LoRAs, which are loaded once for the job")


def _fused(i: int, shot: dict, nxt: dict, v: dict, d) -> Rules:
    """Shots i and i + 1 are fused: denoised as one run."""
    if nxt.get("control_start") is not None:
        yield f"shots.{i + 1}.control_start", (f"shot {i} is fused to this one (then: fuse): the run reads the "
                                               "control video on from its first shot's control_start")
    if nxt.get("image") is not None:
        yield f"shots.{i + 1}.image", (f"shot {i} is fused to this one (then: fuse), so this shot continues its "
                                       "video and cannot start from a new picture (fusing would drop it); join "
                                       "them with cut or dissolve")
    if _lora_weights(shot, v) != _lora_weights(nxt, v):
        yield f"shots.{i + 1}.loras", (f"shots joined by fuse are denoised as one run with one set of LoRA weights "
                                       f"(shot {i}: {_lora_weights(shot, v)}, shot {i + 1}: {_lora_weights(nxt, v)}); "
                                       "give the same, or join them with cut or dissolve")
    for name in ("seed", "guidance", "negative_prompt"):
        a, b = shot.get(name), nxt.get(name)
        a, b = (v.get(name) if a is None else a), (v.get(name) if b is None else b)
        if a != b:
            yield f"shots.{i + 1}.{name}", (f"shots joined by fuse are denoised as one run and share {name} "
                                            f"(shot {i}: {a!r}, shot {i + 1}: {b!r}); give the same, or join "
                                            "them with cut or dissolve")


def _runs_long_enough(shots: list, lengths: list, pipeline: str, d) -> Rules:
    for run in run_groups([_then(s) for s in shots]):
        frames = [lengths[j] for j in run]
        if None not in frames and sum(frames) < d.min_frames:
            which = f"shot {run[0]}" if len(run) == 1 else f"shots {run[0]}–{run[-1]} (fused)"
            yield f"shots.{run[0]}", (f"{which}: {sum(frames)} frames; {pipeline} renders at least {d.min_frames} "
                                      "frames in a run; lengthen it or fuse it to a neighbour")


def _single_files(v: dict) -> Rules:
    """A single-file checkpoint goes only where the pipeline's descriptor takes one, and
    `model.config` (the configs such files are read with) only with one, holding the
    config each file needs."""
    pipeline = _get(v, "model.pipeline")
    if pipeline is None:
        return
    d = descriptor(pipeline)
    files = [f for f in CONFIG_NEEDS if is_single_file(_get(v, f))]
    for field in files:
        if field not in d.single_file_fields and field.removeprefix("model.") not in d.refuses:
            able = [name for name, p in REGISTRY.items() if field in p.single_file_fields]
            yield field, (f"{pipeline} loads it from a folder in diffusers layout or a hub id; a single-file "
                          f"checkpoint is for {', '.join(able) or 'no pipeline'}")
    config = _get(v, "model.config")
    staged = any(is_remote(_get(v, f) or "") for f in CONFIG_NEEDS)  # may be a file: its manifest says
    if config is not None and not files and not staged:
        yield "model.config", ("names the configs single-file checkpoints are read with, and this job gives none "
                               f"(model.base, model.motion_adapter, model.vae or control.model as a "
                               f"{', '.join(SINGLE_FILE_SUFFIXES)} file); remove it")
    if config not in (None, "sd15", "tiny"):
        for field in files:
            if not (Path(config) / CONFIG_NEEDS[field]).is_file():
                yield "model.config", f"{config!r} has no {CONFIG_NEEDS[field]}, which {field} (a single file) needs"


def _segments_fit(v: dict) -> Rules:
    """The segment path (`encode.path: segments`) takes windows that do not depend on one
    another and a decoder without state; the driver's parallel writer is the other path's."""
    path, pipeline = _get(v, "encode.path"), _get(v, "model.pipeline")
    if path == "segments" and pipeline is not None:
        why = segments_refused(descriptor(pipeline), _get(v, "window.reconcile"))
        if why:
            yield "encode.path", f"segments is not for this job: {why}; use driver (or auto)"
    if path == "segments" and (_get(v, "encode.parallel") or 1) > 1:
        yield "encode.parallel", "is the driver path's parallel writer; with path: segments the cluster encodes"
    if _get(v, "model.faults.crash_segments") and path != "segments":
        yield "model.faults.crash_segments", "needs encode.path: segments"
    if _get(v, "model.faults.fail_chunks") and path == "segments":
        yield "model.faults.fail_chunks", "fails the RIFE actors' chunks, which only encode.path: driver has"


def segments_refused(d, reconcile: str | None) -> str | None:
    """Why a job of pipeline `d` cannot take the segment path (None: it can)."""
    if d.chained:
        return "each window starts from the window before's last frame, which the driver must see"
    if reconcile == "latent" and d.causal_decode:
        return "its video decoder carries state from chunk to chunk, so its frames come to the driver in turn"
    return None


def _window_fits(v: dict) -> Rules:
    if v.get("shots"):
        return  # a run shorter than a window is one shorter window (farm/shots.py)
    frames, length = v.get("frames"), _get(v, "window.length")
    if frames is not None and length is not None and length > frames:
        yield "window.length", (f"must be <= frames ({frames}); got {length}. "
                                f"To render the whole video as one window, set window.length: {frames}")


def _interpolation_fits(v: dict) -> Rules:
    fps, target, cuts = v.get("fps"), _get(v, "interpolate.fps"), _get(v, "interpolate.cuts")
    if fps is not None and target is not None and target <= fps:
        yield "interpolate.fps", f"must be > fps ({fps:g}); got {target:g}"
    frames = v.get("frames") if not v.get("shots") else None
    bad = [f for f in cuts or [] if frames is not None and not 0 < f < frames]
    if bad:
        yield "interpolate.cuts", f"must be frames in 1..{frames - 1}; got {bad}"


def _pipeline_inputs(v: dict) -> Rules:
    """Each pipeline block (`svd:`, `control:`) is required by the pipeline whose descriptor
    names it and refused for every other; a chained pipeline's windows overlap by one frame;
    a control block has a frame for every frame of the job. A block that failed its own
    rules is absent from `v`."""
    pipeline = _get(v, "model.pipeline")
    if pipeline is None:
        return
    d = descriptor(pipeline)
    for block, owner in _BLOCK_OWNERS.items():
        if block not in v:
            continue
        if block == d.spec_block and v[block] is None and d.spec_block_required:
            yield block, f"model.pipeline {pipeline} needs its `{block}:` block with {d.spec_block_needs}"
        elif block != d.spec_block and v[block] is not None:
            yield block, f"the `{block}:` block is only for model.pipeline {owner}; this job uses {pipeline}"
        elif block == d.spec_block and isinstance(v[block], dict):
            for name in d.block_requires:
                if v[block].get(name) is None:
                    yield f"{block}.{name}", f"model.pipeline {pipeline} needs it"
            for name, why in d.block_refuses.items():
                if v[block].get(name) is not None:
                    yield f"{block}.{name}", why
    if d.no_latent and _get(v, "window.reconcile") == "latent":
        yield "window.reconcile", f"latent is not for {pipeline}: {d.no_latent}; use crossfade"
    if _get(v, "window.reconcile") == "latent":
        for field, why in d.latent_refuses.items():
            if _get(v, field):
                yield field, why
    overlap = _get(v, "window.overlap")
    if d.chained and overlap is not None and overlap != 1:
        yield "window.overlap", (f"must be 1 for {pipeline} (each window starts from the last frame of the "
                                 f"one before); got {overlap}")
    video, frames = _get(v, "control.video"), v.get("frames")
    if d.spec_block == "control" and video is not None and frames is not None:
        yield from _control_frames(video, (_get(v, "control.start") or 0) + frames)
    if d.temporal_compression > 1:
        yield from _latent_frames_fit(v, pipeline, d.temporal_compression)


def _latent_frames_fit(v: dict, pipeline: str, t: int) -> Rules:
    """A video VAE that packs `t` frames into a latent frame takes `k·t + 1` frames; the
    windows of a latent job are laid out in latent frames (farm.plan)."""
    length, overlap, frames = _get(v, "window.length"), _get(v, "window.overlap"), v.get("frames")
    if length is not None and length % t != 1:
        yield "window.length", (f"must be {t}k + 1 for {pipeline} (its VAE packs {t} frames into each latent "
                                f"frame after the first): e.g. {', '.join(str(t * k + 1) for k in (4, 8, 12, 20))}; "
                                f"got {length}")
    if _get(v, "window.reconcile") != "latent":
        return
    if frames is not None and frames % t != 1:
        yield "frames", (f"must be {t}k + 1 for {pipeline} with window.reconcile: latent (the video is one run of "
                         f"latent frames): e.g. {frames - frames % t + 1}; got {frames}")
    if overlap is not None and overlap % t:
        yield "window.overlap", (f"must be a multiple of {t} for {pipeline} with window.reconcile: latent (windows "
                                 f"share whole latent frames): e.g. {max(t, overlap - overlap % t)}; got {overlap}")


#: Each pipeline block and the pipeline that takes it.
_BLOCK_OWNERS = {block: " or ".join(name for name, d in REGISTRY.items() if d.spec_block == block)
                 for block in {d.spec_block for d in REGISTRY.values() if d.spec_block}}


def _control_frames(video: str, frames: int, what: str = "the job renders") -> Rules:
    from farm.control import count_control_frames  # reads the folder or probes the video

    try:
        have = count_control_frames(video)
    except ValueError as err:
        yield "control.video", str(err)
        return
    if have < frames:
        yield "control.video", (f"has {have} frames but {what} {frames}; "
                                "give at least one control frame per output frame")


def _references(v: dict) -> Rules:
    """An identity anchor (`reference:`, the job's or a shot's) needs a pipeline with an
    IP-Adapter and `model.ip_adapter`; a shot that only changes the scale needs the job's
    picture; shots joined by fuse share one anchor (one run, one image embedding)."""
    pipeline = _get(v, "model.pipeline")
    shots = [s if isinstance(s, dict) else {} for s in v.get("shots") or []]
    given = [("reference", v.get("reference"))] + [(f"shots.{i}.reference", s.get("reference"))
                                                   for i, s in enumerate(shots)]
    given = [(field, ref) for field, ref in given if ref is not None]
    if not given or pipeline not in REGISTRY:
        return
    why = descriptor(pipeline).no_reference
    if why:
        for field, _ in given:
            yield field, f"{pipeline} {why}"
        return
    if _get(v, "model.ip_adapter") is None and "ip_adapter" in (v.get("model") or {}):
        for field, _ in given:
            yield field, ("an identity anchor is read by an IP-Adapter: set model.ip_adapter (tiny, a folder or "
                          "a hub id such as h94/IP-Adapter)")
        return
    for i, s in enumerate(shots):
        own = s.get("reference")
        if own is not None and own.get("image") is None and v.get("reference") is None and "image" in own:
            yield f"shots.{i}.reference.image", "field required: the job has no reference picture for the shot's scale"
    effective = [_shot_reference(v.get("reference"), s.get("reference")) for s in shots]
    for run in run_groups([_then(s) for s in shots]):
        for i in run[1:]:
            if effective[i] != effective[run[0]]:
                yield f"shots.{i}.reference", (f"shots joined by fuse are denoised as one run with one identity "
                                               f"anchor (shot {run[0]}: {_describe_reference(effective[run[0]])}, "
                                               f"shot {i}: {_describe_reference(effective[i])}); give the same, "
                                               "or join them with cut or dissolve")


def _shot_reference(job: dict | None, own: dict | None) -> tuple | None:
    """(image, scale) of a shot's anchor, from dicts of passing fields; None: none."""
    merged = {**(job or {}), **{k: x for k, x in (own or {}).items() if x is not None}}
    if merged.get("image") is None or not merged.get("scale", 1.0):
        return None
    return merged["image"], merged.get("scale", 1.0)


def _describe_reference(ref: tuple | None) -> str:
    return "none" if ref is None else f"{Path(ref[0]).name} at scale {ref[1]}"


def _prompt_source(v: dict) -> Rules:
    if v.get("shots"):
        return  # each shot's (_shots_fit)
    pipeline, prompt, prompts = _get(v, "model.pipeline"), v.get("prompt"), v.get("prompts")
    if pipeline is not None and descriptor(pipeline).no_text:
        if prompt is not None or prompts is not None:
            yield "prompt", f"{pipeline} {descriptor(pipeline).no_text}; remove prompt/prompts"
        return
    if pipeline is not None and "prompt" in v and "prompts" in v and (prompt is None) == (prompts is None):
        yield "prompt", "give exactly one of `prompt` (one text) or `prompts` (a {frame: text} schedule)"
    if prompts is not None:
        yield from _schedule_fits(prompts, v.get("frames"))


def _schedule_fits(prompts: dict[int, str], frames: int | None) -> Rules:
    if 0 not in prompts:
        yield "prompts", f"the schedule must say what frame 0 shows; got frames {sorted(prompts)}"
    bad = [f for f in prompts if frames is not None and not 0 <= f < frames]
    if bad:
        yield "prompts", f"frames must be in 0..{frames - 1}; got {sorted(bad)}"
    empty = [f for f, text in prompts.items() if not text.strip()]
    if empty:
        yield "prompts", f"the text at frame(s) {sorted(empty)} is empty"


def _faults_name_real_windows(v: dict) -> Rules:
    indices = _get(v, "model.faults.fail_windows")
    frames, length, overlap = v.get("frames"), _get(v, "window.length"), _get(v, "window.overlap")
    if v.get("shots"):
        return  # a film's windows are its runs' (farm plan lists them)
    if not indices or None in (frames, length, overlap) or not 0 <= overlap < length <= frames:
        return
    n = window_count(frames, length, overlap)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        yield "model.faults.fail_windows", f"must be window indices in 0..{n - 1}; got {bad}"


#: Faults that hit one window's render call: a co-denoised job has no such call.
_WINDOW_FAULTS = ("fail_windows", "crash_on_call", "oom_on_calls", "nan_on_calls", "fail_on_resource")


def _faults_fit_reconcile(v: dict) -> Rules:
    reconcile = _get(v, "window.reconcile")
    if reconcile == "latent":
        for name in _WINDOW_FAULTS:
            if _get(v, f"model.faults.{name}"):
                yield f"model.faults.{name}", ("hits one window's render call, and window.reconcile: latent "
                                               "denoises the windows together; use crash_on_step, or crossfade")
    elif reconcile == "crossfade" and _get(v, "model.faults.crash_on_step") is not None:
        yield "model.faults.crash_on_step", "is for window.reconcile: latent (crossfade windows have crash_on_call)"


def window_count(frames: int, length: int, overlap: int) -> int:
    """How many windows farm.plan.split makes, computed without making them."""
    return 1 + max(0, math.ceil((frames - length) / (length - overlap)))


class InterpolateJob(_Root):
    """`farm interpolate IN.mp4 -o OUT.mp4`: an existing video through the RIFE pool."""

    input: Annotated[str, AfterValidator(_existing_file)]
    output: Annotated[str, AfterValidator(check_output)]
    interpolate: InterpolateSpec

    @classmethod
    def _rules(cls, v: dict) -> Rules:
        """The input must decode, and the target fps be above the input's (only the file says)."""
        from farm.util import first_line
        from farm.video import probe

        if v.get("input") is None:
            return
        try:
            source = probe(v["input"])
        except EncodeError as err:
            yield "input", f"cannot be read as a video: {first_line(err)}"
            return
        target = _get(v, "interpolate.fps")
        if target is not None and target <= source.fps:
            yield "interpolate.fps", f"must be above the input's frame rate ({source.fps:g} fps); got {target:g}"


# --- the machinery: partial values, rules, messages -------------------------------------------

def _get(values: Any, path: str) -> Any:
    """values["a"]["b"] for "a.b"; None when any step is missing or not a mapping."""
    for step in path.split("."):
        if not isinstance(values, dict):
            return None
        values = values.get(step)
    return values


def _submodel(annotation: Any) -> type[_Strict] | None:
    """The spec model inside a field's type (`M`, `M | None`, `list[M]`), if there is one."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, _Strict):
            return t
    return None


@cache
def _field_adapter(cls: type[_Strict], name: str) -> TypeAdapter:
    """Validates one field of `cls` on its own, with all of its field rules."""
    field = cls.model_fields[name]
    annotated = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    if _submodel(field.annotation) is not None:
        return TypeAdapter(annotated)
    return TypeAdapter(annotated, config=ConfigDict(allow_inf_nan=False))


def _plain(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


def _parsed(cls: type[_Strict], data: dict) -> dict:
    """The fields of `data` that pass their own rules, validated (sub-models field by field,
    as dicts); absent fields take their defaults; failed ones are left out."""
    values = {}
    for name, field in cls.model_fields.items():
        if name not in data:
            if not field.is_required():
                values[name] = _plain(field.get_default(call_default_factory=True))
            continue
        value, sub = data[name], _submodel(field.annotation)
        if sub is not None and isinstance(value, dict):
            values[name] = _parsed(sub, value)
        elif sub is not None and isinstance(value, list):
            values[name] = [_parsed(sub, item) if isinstance(item, dict) else None for item in value]
        else:
            try:
                values[name] = _plain(_field_adapter(cls, name).validate_python(value))
            except ValidationError:
                pass
    return values


def _rule_problems(cls: type[_Strict], values: dict, where: str = "") -> list[str]:
    """`field: rule` for every rule of `cls` and of its sub-models that `values` breaks."""
    problems = [f"{'.'.join(p for p in (where, field) if p)}: {rule}" for field, rule in cls._rules(values)]
    for name, field in cls.model_fields.items():
        sub, value = _submodel(field.annotation), values.get(name)
        if sub is None:
            continue
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, dict):
                path = ".".join(str(p) for p in (where, name, i) if p not in ("", None))
                problems += _rule_problems(sub, item, path)
    return problems


def _model_at(cls: type[_Strict], loc: tuple) -> type[_Strict] | None:
    """The model that holds the field at `loc` (list indices skipped)."""
    for step in loc:
        if isinstance(step, int):
            continue
        field = cls.model_fields.get(step)
        cls = _submodel(field.annotation) if field else None
        if cls is None:
            return None
    return cls


def _unknown_field(loc: tuple, root: type[_Strict]) -> str:
    model = _model_at(root, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1) if model else []
    hint = f"did you mean {close[0]}?" if close else "check the spelling; see the job spec reference"
    return f"unknown field; {hint}"


def _format_errors(err: ValidationError, root: type[_Strict]) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            problems.append(msg if msg.startswith(loc) else f"{loc}: {msg}")  # some rules name their field
        elif e["type"] == "missing":
            problems.append(f"{loc}: field required")
        elif e["type"] == "extra_forbidden":
            problems.append(f"{loc}: {_unknown_field(e['loc'], root)}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f"; got {got!r}"
            problems.append(f"{loc}: {msg[0].lower() + msg[1:]}{shown}")
    return problems


def renamed(problems: list[str], names: dict[str, str]) -> list[str]:
    """Problems with their field named as the user gave it, e.g. {"output": "-o/--output"}."""
    out = []
    for p in problems:
        for field in sorted(names, key=len, reverse=True):
            if p.startswith(field) and p[len(field):len(field) + 1] in (":", " ", "."):
                p = names[field] + p[len(field):]
                break
        out.append(p)
    return out


# --- entry points -------------------------------------------------------------------------------

def parse_spec(data: Any, source: str | None = None, output: str | None = None,
               base: str | Path | None = None) -> JobSpec:
    """Validate a spec given as a mapping; its relative paths are taken against `base`
    (default: the current directory). `output` (e.g. from `-o`) overrides the file's: a
    relative one is taken against the current directory, and its problems are named
    `-o/--output`."""
    from farm import outputs

    if isinstance(data, dict) and output is not None:
        if not outputs.is_uri(output) and not Path(output).expanduser().is_absolute():
            output = str(Path.cwd() / Path(output).expanduser())  # a command-line path, from here
        data = {**data, "output": output}
    token = _BASE.set(Path(base).resolve() if base is not None else None)
    try:
        return JobSpec.model_validate(data)
    except SpecError as err:
        problems = renamed(err.problems, {"output": "-o/--output"}) if output is not None else err.problems
        raise SpecError(problems, source) from None
    finally:
        _BASE.reset(token)


def parse_interpolate_job(data: dict, names: dict[str, str] | None = None) -> InterpolateJob:
    """Validate a `farm interpolate` job; `names` renames fields in the messages (to options)."""
    try:
        return InterpolateJob.model_validate(data)
    except SpecError as err:
        raise SpecError(renamed(err.problems, names or {})) from None


def load_spec(path: str | Path, output: str | None = None) -> JobSpec:
    """Read and validate a YAML job file; the paths it names are taken against its folder.
    Raises SpecError naming every bad field."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)  # the file object gives YAML's messages the file's name
    except OSError as err:
        raise SpecError([f"cannot read job file: {err.strerror}"], str(path)) from None
    except yaml.YAMLError as err:
        raise SpecError([_yaml_problem(err)], str(path)) from None
    return parse_spec(data, source=str(path), output=output, base=path.resolve().parent)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line: where the YAML breaks (file:line:column) and what YAML says."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or first_line(err)
    if mark is None:
        return f"not valid YAML: {problem}"
    context = getattr(err, "context", None)
    what = f"{context}: {problem}" if context else problem
    return f"not valid YAML at {mark.name}:{mark.line + 1}:{mark.column + 1}: {what}"
