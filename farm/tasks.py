"""The small frozen types that cross the actor boundary: what an actor is asked to render
(`WindowTask`), what comes back (`WindowResult`), the settings a fallback step changes
(`Overrides`), and what an actor knows about where it runs (`FaultContext`). No torch, no
Ray: the driver imports these without loading a model library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from farm.plan import Window
from farm.prompts import Conditioning, frame_conditioning

if TYPE_CHECKING:
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
    reference: np.ndarray | None = field(default=None, compare=False)  # identity anchor (H, W, 3) uint8
    reference_scale: float = 0.0  # the IP-Adapter's weight for `reference`
    lora_weights: tuple[float, ...] | None = None  # a shot's own weights for the job's LoRAs (None: the job's)

    @classmethod
    def from_spec(cls, spec: "JobSpec", window: Window, lora_weights: tuple[float, ...] | None = None) -> "WindowTask":
        """The task without its per-window inputs (`image`, `control`, `reference`): the driver adds them
        just before dispatch (`dataclasses.replace`), so they are never all in memory.
        `lora_weights`: its shot's own LoRA weights (farm.shots.Run)."""
        return cls(
            window=window,
            conditioning=frame_conditioning(spec.schedule, spec.prompt_transition, window.start, window.end),
            negative_prompt=spec.negative_prompt,
            width=spec.width,
            height=spec.height,
            steps=spec.steps,
            guidance=spec.guidance,
            seed=spec.seed,
            lora_weights=lora_weights,
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
    cache: dict | None = None  # step caching: the blocks' work skipped (farm.report.skipped)


@dataclass(frozen=True)
class FaultContext:
    """What the actor knows about where it runs (read by fault injection, farm/faults.py)."""

    restarted: bool = False  # Ray restarted this actor (this is not its first life)
    node_resources: dict = field(default_factory=dict)
