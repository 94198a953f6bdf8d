"""The noise schedulers a job can pick, with the settings the farm applies on top of the
checkpoint's own scheduler config. Pure data: the window store hashes it into each key."""

from __future__ import annotations

#: name → (diffusers class, config overrides), as the diffusers AnimateDiff guides set them:
#: DDIM with linear betas, no sample clipping and linspace timesteps; Euler on the same
#: betas; LCM (AnimateLCM, 4–8 steps) with `beta_schedule: linear`.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {"beta_schedule": "linear", "clip_sample": False,
                               "timestep_spacing": "linspace", "steps_offset": 1}),
    "euler": ("EulerDiscreteScheduler", {"beta_schedule": "linear", "timestep_spacing": "linspace",
                                         "steps_offset": 1}),
    "lcm": ("LCMScheduler", {"beta_schedule": "linear"}),
}
