"""The job spec: one YAML file that says everything about a render.

Validation happens here and only here, before any Ray work starts. Every problem is
reported as `field.path: rule`, so a user can fix the file without reading code.
The models forbid unknown keys: a typo such as `window.lenght` is an error, never ignored.

Relative paths (the output) are taken against the current working directory, as a
command-line tool would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from farm.errors import SpecError


def check_output(v: str) -> str:
    """An output path must end in .mp4 and its folder must exist. Returns it absolute.
    An object-storage URI (s3://bucket/key.mp4, gs://…) is checked by farm.storage."""
    from farm import storage

    if storage.is_uri(v):
        return storage.check_output_uri(v)
    path = Path(v).expanduser()
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"output must end in .mp4 (the farm writes H.264 in mp4); got {v!r}")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise ValueError(f"output folder {str(parent)!r} does not exist; create it first")
    if path.is_dir():
        raise ValueError(f"output {v!r} is a folder, not a file")
    return str(path.resolve())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_local_ref(ref: str) -> bool:
    """A model reference that names a folder rather than a hub id (`org/name`)."""
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().is_dir()


class FaultSpec(_Strict):
    """Fault injection, for testing the farm's own failure handling; never needed for real
    jobs. The faults wrap the real pipeline (see farm/faults.py); none changes the frames of
    a window that succeeds, so they are not part of the window key."""

    fail_windows: list[int] = []  # these windows raise on every attempt (a poison window)
    crash_on_call: int | None = Field(None, ge=1)  # each actor's process exits on its k-th window, first life only
    fail_on_resource: str | None = None  # actors on nodes with this custom resource raise on every window
    delay: float = Field(0.0, ge=0)  # seconds of sleep before each window
    simulate_seconds: float | None = Field(None, ge=0)  # replace the pipeline by a fixed-cost SIMULATION
    oom_on_calls: list[int] = []  # these render calls of each actor (1-based) raise torch's CUDA OOM error
    nan_on_calls: list[int] = []  # these render calls of each actor decode to NaN frames


#: LoRA ids that name tiny LoRAs built offline (farm/models/tiny_lora.py), for tests and demos.
TINY_LORAS = {"tiny-motion-lora": "motion", "tiny-sd-lora": "sd"}


class LoraSpec(_Strict):
    """A LoRA loaded with `load_lora_weights`, then weighted with `set_adapters`."""

    path: str | None = None  # a local .safetensors file, or a folder holding one
    id: str | None = None  # or a hub id (or tiny-motion-lora / tiny-sd-lora)
    weight_name: str | None = None  # the file inside a folder or hub repo, when there are several
    weight: float = 1.0
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")

    @model_validator(mode="after")
    def _one_source(self) -> "LoraSpec":
        if (self.path is None) == (self.id is None):
            raise ValueError(f"model.loras[{self.name}]: give exactly one of `path` (a local file or folder) or `id`")
        if self.path is not None:
            path = Path(self.path).expanduser()
            if not path.exists():
                raise ValueError(f"model.loras[{self.name}].path: nothing at {self.path!r}")
            object.__setattr__(self, "path", str(path.resolve()))
        return self


class MemorySpec(_Strict):
    """GPU memory knobs from the diffusers guides, applied once when an actor loads."""

    cpu_offload: bool = False  # enable_model_cpu_offload(): whole models move to the GPU in turn
    forward_chunking: bool = False  # unet.enable_forward_chunking(): feed-forward layers in chunks
    vae_slicing: bool = False  # vae.enable_slicing(): decode one image at a time
    decode_chunk_size: int | None = Field(None, ge=1)  # frames decoded by the VAE at once


class ModelSpec(_Strict):
    """Which pipeline renders the windows, and from which weights.

    `base` and `motion_adapter` are each `tiny` (a tiny random-weight model built offline),
    a local folder in diffusers layout, or a hub id such as `emilianJR/epiCRealism`. For
    `svd`, `base` is the Stable Video Diffusion checkpoint and there is no motion adapter.
    """

    pipeline: Literal["animatediff", "animatediff-controlnet", "svd"]
    base: str = Field("tiny", min_length=1)
    motion_adapter: str = Field("tiny", min_length=1)
    scheduler: Literal["ddim", "euler", "lcm"] | None = None  # AnimateDiff; default ddim
    loras: list[LoraSpec] = []
    memory: MemorySpec = MemorySpec()
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    # Each actor renders one throwaway 1-step window of the job's shape while it starts, so
    # first-call costs (loading and selecting kernels, allocator growth) are paid there.
    warmup: bool = True
    faults: FaultSpec | None = None

    @property
    def scheduler_name(self) -> str | None:
        if self.pipeline == "svd":
            return None
        return self.scheduler or "ddim"

    @model_validator(mode="after")
    def _fits_the_pipeline(self) -> "ModelSpec":
        if self.pipeline == "svd":
            if self.scheduler is not None:
                raise ValueError("model.scheduler: svd uses its own EulerDiscreteScheduler; remove model.scheduler")
            if self.loras:
                raise ValueError("model.loras: LoRAs apply to the AnimateDiff pipelines, not to svd")
            if self.memory.vae_slicing:
                raise ValueError("model.memory.vae_slicing: the SVD VAE (a temporal decoder) cannot decode in "
                                 "slices; use model.memory.decode_chunk_size")
        names = [lora.name for lora in self.loras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model.loras: adapter names must be unique; repeated: {dupes}")
        return self

    def dtype_on(self, device: str) -> str:
        """The dtype this model runs in on `device`: `auto` is fp16 on CUDA, fp32 on CPU."""
        if self.dtype == "auto":
            return "fp16" if device.startswith("cuda") else "fp32"
        return self.dtype

    @field_validator("base", "motion_adapter")
    @classmethod
    def _folder_exists(cls, ref: str, info) -> str:
        if ref != "tiny" and is_local_ref(ref):
            folder = Path(ref).expanduser()
            if not folder.is_dir():
                raise ValueError(f"model.{info.field_name}: folder {ref!r} does not exist")
            return str(folder.resolve())
        return ref


class WindowSpec(_Strict):
    """How the video is cut into overlapping windows and how the overlaps are blended."""

    length: int = Field(16, gt=0)
    overlap: int = Field(4, ge=0)
    blend: Literal["linear", "cosine", "hard"] = "linear"

    @field_validator("overlap")
    @classmethod
    def _overlap_below_length(cls, overlap: int, info) -> int:
        length = info.data.get("length")
        if length is not None and overlap >= length:
            raise ValueError(f"window.overlap must be < window.length ({length}); got {overlap}")
        return overlap


class EncodeSpec(_Strict):
    """H.264 settings of the output mp4."""

    crf: int = Field(18, ge=0, le=51)
    preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
    ] = "medium"
    # ffmpeg processes encoding consecutive segments at once, joined without re-encoding at
    # the end; for drivers whose one encoder cannot keep up with many GPUs (docs/benchmarks.md)
    parallel: int = Field(1, ge=1, le=16)
    segment_frames: int = Field(120, ge=8)  # frames per segment when parallel > 1


class InterpolateSpec(_Strict):
    """Frame interpolation after blending (RIFE): `fps` or `factor`, exactly one."""

    fps: float | None = Field(None, gt=0, le=240)
    factor: Literal[2, 4, 8] | None = None
    backend: Literal["torch", "ncnn"] = "torch"
    weights: str | None = None  # torch backend: a flownet.pkl; default the pulled, verified copy
    model_dir: str | None = None  # ncnn backend: a rife-ncnn-vulkan model folder
    gpuid: int = Field(0, ge=-1)  # ncnn backend: -1 = CPU
    scene_threshold: float = Field(0.2, ge=0, le=1)
    cuts: list[int] = []  # frames that start a new shot: the pair (f-1, f) is never interpolated
    workers: int = Field(2, ge=1)
    chunk: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _one_target(self) -> "InterpolateSpec":
        if (self.fps is None) == (self.factor is None):
            raise ValueError("interpolate: give exactly one of interpolate.fps or interpolate.factor")
        if self.weights is not None and not Path(self.weights).expanduser().is_file():
            raise ValueError(f"interpolate.weights: no file at {self.weights!r}")
        return self


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot be opened as an image: {err}") from None


class SvdSpec(_Strict):
    """Stable Video Diffusion (image → video). Windows are chained: each window after the
    first is conditioned on the last frame of the window before."""

    image: str  # the starting picture
    motion_bucket_id: int = Field(127, ge=1, le=255)  # more motion with higher values
    fps: int = Field(7, ge=1, le=60)  # SVD's fps micro-conditioning; not the output fps
    noise_aug_strength: float = Field(0.02, ge=0, le=1)

    @field_validator("image")
    @classmethod
    def _image_opens(cls, v: str) -> str:
        path = Path(v).expanduser()
        if not path.is_file():
            raise ValueError(f"svd.image: no file at {v!r}")
        try:
            w, h = _image_size(path)
        except ValueError as err:
            raise ValueError(f"svd.image: {v!r} {err}") from None
        if min(w, h) < 16:
            raise ValueError(f"svd.image: {v!r} is {w}×{h}; it must be at least 16 pixels on each side")
        return str(path.resolve())


class ControlSpec(_Strict):
    """ControlNet conditioning: one control image (e.g. an OpenPose skeleton) per frame."""

    video: str  # an mp4, or a folder of frames (sorted by name)
    scale: float = Field(0.7, ge=0, le=2)
    model: str = Field("tiny", min_length=1)  # `tiny`, a folder, or a hub id (e.g. lllyasviel/sd-controlnet-openpose)

    @field_validator("video")
    @classmethod
    def _exists(cls, v: str) -> str:
        path = Path(v).expanduser()
        if not path.exists():
            raise ValueError(f"control.video: nothing at {v!r}")
        return str(path.resolve())

    @field_validator("model")
    @classmethod
    def _folder_exists(cls, ref: str) -> str:
        if ref != "tiny" and is_local_ref(ref):
            folder = Path(ref).expanduser()
            if not folder.is_dir():
                raise ValueError(f"control.model: folder {ref!r} does not exist")
            return str(folder.resolve())
        return ref


class JobSpec(_Strict):
    """A whole render job. See README.md, "Job spec reference", for every field."""

    model: ModelSpec
    prompt: str | None = Field(None, min_length=1)
    prompts: dict[int, str] | None = None  # a schedule {first frame: text}; instead of `prompt`
    prompt_transition: int = Field(8, ge=1)  # frames over which a scheduled change blends in
    negative_prompt: str = ""
    frames: int = Field(gt=0)
    fps: float = Field(8, gt=0, le=240)
    width: int = Field(512, gt=0)
    height: int = Field(512, gt=0)
    steps: int = Field(25, gt=0)
    guidance: float = Field(7.5, ge=0)
    seed: int = Field(0, ge=0, lt=2**63)
    window: WindowSpec = WindowSpec()
    encode: EncodeSpec = EncodeSpec()
    interpolate: InterpolateSpec | None = None
    svd: SvdSpec | None = None  # model.pipeline: svd
    control: ControlSpec | None = None  # model.pipeline: animatediff-controlnet
    retries: int = Field(3, ge=0, le=100)
    output: str = Field(min_length=1)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int, info) -> int:
        if v % 8:
            raise ValueError(f"{info.field_name} must be a multiple of 8 (the VAE downsamples by 8); got {v}")
        return v

    @field_validator("output")
    @classmethod
    def _output_is_writable_mp4(cls, v: str) -> str:
        return check_output(v)

    @model_validator(mode="after")
    def _window_fits(self) -> "JobSpec":
        if self.window.length > self.frames:
            raise ValueError(
                f"window.length must be <= frames ({self.frames}); got {self.window.length}. "
                f"To render the whole video as one window, set window.length: {self.frames}"
            )
        ip = self.interpolate
        if ip is not None:
            if ip.fps is not None and ip.fps <= self.fps:
                raise ValueError(f"interpolate.fps must be > fps ({self.fps:g}); got {ip.fps:g}")
            bad = [f for f in ip.cuts if not 0 < f < self.frames]
            if bad:
                raise ValueError(f"interpolate.cuts must be frames in 1..{self.frames - 1}; got {bad}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _svd_defaults(cls, data: Any) -> Any:
        """svd's own defaults: chained windows share exactly one frame, and guidance is
        SVD's max_guidance_scale, 3.0 in diffusers."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("pipeline") == "svd":
            window = data.get("window") or {}
            if isinstance(window, dict) and "overlap" not in window:
                data = {**data, "window": {**window, "overlap": 1}}
            data.setdefault("guidance", 3.0)
        return data

    @model_validator(mode="after")
    def _pipeline_inputs(self) -> "JobSpec":
        pipeline = self.model.pipeline
        if pipeline == "svd":
            if self.svd is None:
                raise ValueError("svd: model.pipeline svd needs an `svd:` block with at least `image:`")
            if self.window.overlap != 1:
                raise ValueError(f"window.overlap must be 1 for svd (each window starts from the last frame "
                                 f"of the one before); got {self.window.overlap}")
        elif self.svd is not None:
            raise ValueError(f"svd: the `svd:` block is only for model.pipeline svd; this job uses {pipeline}")
        if pipeline == "animatediff-controlnet":
            if self.control is None:
                raise ValueError("control: model.pipeline animatediff-controlnet needs a `control:` block with `video:`")
            from farm.control import count_control_frames  # reads the folder or probes the video

            try:
                have = count_control_frames(self.control.video)
            except ValueError as err:
                raise ValueError(f"control.video: {err}") from None
            if have < self.frames:
                raise ValueError(f"control.video: has {have} frames but the job renders {self.frames}; "
                                 "give at least one control frame per output frame")
        elif self.control is not None:
            raise ValueError(f"control: the `control:` block is only for animatediff-controlnet; this job uses {pipeline}")
        return self

    @model_validator(mode="after")
    def _one_prompt_source(self) -> "JobSpec":
        if self.model.pipeline == "svd":
            if self.prompt is not None or self.prompts is not None:
                raise ValueError("prompt: svd is conditioned on svd.image, not on text; remove prompt/prompts")
            return self
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("prompt: give exactly one of `prompt` (one text) or `prompts` (a {frame: text} schedule)")
        if self.prompts is not None:
            if 0 not in self.prompts:
                raise ValueError(f"prompts: the schedule must say what frame 0 shows; got frames {sorted(self.prompts)}")
            bad = [f for f in self.prompts if not 0 <= f < self.frames]
            if bad:
                raise ValueError(f"prompts: frames must be in 0..{self.frames - 1}; got {sorted(bad)}")
            empty = [f for f, text in self.prompts.items() if not text.strip()]
            if empty:
                raise ValueError(f"prompts: the text at frame(s) {sorted(empty)} is empty")
        return self

    @property
    def schedule(self) -> dict[int, str]:
        """The prompts as a schedule; a single `prompt` is {0: prompt}; svd has none ({0: ""})."""
        if self.prompts is not None:
            return dict(self.prompts)
        return {0: self.prompt or ""}

    @model_validator(mode="after")
    def _faults_name_real_windows(self) -> "JobSpec":
        faults = self.model.faults
        if faults is not None and faults.fail_windows:
            from farm.plan import split  # plan imports spec: import here, after both exist

            n = len(split(self.frames, self.window.length, self.window.overlap))
            bad = [i for i in faults.fail_windows if not 0 <= i < n]
            if bad:
                raise ValueError(f"model.faults.fail_windows must be window indices in 0..{n - 1}; got {bad}")
        return self

    @property
    def output_fps(self) -> float:
        ip = self.interpolate
        if ip is None:
            return self.fps
        return ip.fps if ip.fps is not None else self.fps * ip.factor


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "value_error":
            # Our own rules already name their field(s) in full.
            problems.append(msg.removeprefix("Value error, "))
            continue
        if e["type"] == "missing":
            problems.append(f"{loc}: field required")
            continue
        if e["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown field (check the spelling; see the job spec reference)")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f"; got {got!r}"
        problems.append(f"{loc}: {msg[0].lower() + msg[1:]}{shown}")
    return problems


def parse_spec(data: Any, source: str | None = None, output: str | None = None) -> JobSpec:
    """Validate a spec given as a mapping. `output` (e.g. from `-o`) overrides the file's."""
    if not isinstance(data, dict):
        raise SpecError(["the spec must be a YAML mapping of fields (model:, prompt:, frames:, …)"], source)
    if output is not None:
        data = {**data, "output": output}
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err), source) from None


class InterpolateJob(_Strict):
    """`farm interpolate IN.mp4 -o OUT.mp4`: an existing video through the RIFE pool."""

    input: str
    output: str
    interpolate: InterpolateSpec

    @field_validator("input")
    @classmethod
    def _input_exists(cls, v: str) -> str:
        path = Path(v).expanduser()
        if not path.is_file():
            raise ValueError(f"input: no file at {v!r}")
        return str(path.resolve())

    @field_validator("output")
    @classmethod
    def _output_ok(cls, v: str) -> str:
        return check_output(v)


def parse_interpolate_job(data: dict) -> InterpolateJob:
    try:
        return InterpolateJob.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err)) from None


def load_spec(path: str | Path, output: str | None = None) -> JobSpec:
    """Read and validate a YAML job file. Raises SpecError naming every bad field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError([f"cannot read job file: {err.strerror}"], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError([f"not valid YAML: {err}"], str(path)) from None
    return parse_spec(data, source=str(path), output=output)
