"""The noise schedulers a job can pick, with the settings the farm applies on top of the
checkpoint's own scheduler config. Pure data: the window store hashes it into each key."""

from __future__ import annotations

#: name → (diffusers class, config overrides). DDIM as in the diffusers AnimateDiff guide:
#: linear betas, no sample clipping, linspace timesteps.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {"beta_schedule": "linear", "clip_sample": False,
                               "timestep_spacing": "linspace", "steps_offset": 1}),
}
