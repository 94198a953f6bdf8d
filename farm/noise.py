"""Per-frame deterministic noise.

The initial latent of global frame `f` depends only on `(seed, f)` and the latent shape,
never on which window, actor, node or device renders it. So the frames two neighbouring
windows share start from identical noise, and a window rendered twice, anywhere, starts
from the same tensor. The noise is always drawn on the CPU and then moved, because
CUDA and CPU generators give different numbers for the same seed.
"""

from __future__ import annotations

import numpy as np
import torch


def frame_seed(seed: int, frame: int) -> int:
    """A 63-bit generator seed for one frame, mixed from (seed, frame) with SeedSequence."""
    state = np.random.SeedSequence([seed, frame]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def frame_noise(seed: int, frame: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of `shape` for one frame (float32, CPU)."""
    gen = torch.Generator(device="cpu").manual_seed(frame_seed(seed, frame))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def window_noise(seed: int, start: int, end: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """Latents for frames [start, end) in the video layout diffusers uses: (1, C, F, h, w)."""
    frames = [frame_noise(seed, f, shape) for f in range(start, end)]
    return torch.stack(frames, dim=1).unsqueeze(0)


def step_seed(seed: int, frame: int, step: int) -> int:
    """The generator seed of one frame's stochastic scheduler step (LCM, ancestral
    samplers) in co-denoising: the frame draws the same noise on whichever actor steps it."""
    state = np.random.SeedSequence([seed, frame, step, 1]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
