"""Test setup: no model hub, a per-session farm cache, and helpers for job specs."""

from __future__ import annotations

import os
import tempfile

# Before anything imports huggingface_hub: any stray download must fail loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache for the whole session (tiny models are built once); Ray workers inherit it.
os.environ.setdefault("FARM_CACHE", tempfile.mkdtemp(prefix="farm-test-cache-"))

import pytest  # noqa: E402
import yaml  # noqa: E402


def base_spec(tmp_path, **overrides) -> dict:
    """A small valid AnimateDiff job as a plain dict; `overrides` replace top-level keys."""
    spec = {
        # no warm-up window: it changes no frame (tests/test_ray_render.py) and costs each actor start
        "model": {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny", "dtype": "auto", "warmup": False},
        "prompt": "a red fox running through snow",
        "negative_prompt": "blurry, flickering",
        "frames": 52,
        "fps": 8,
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 7.5,
        "seed": 42,
        "window": {"length": 16, "overlap": 4, "blend": "linear", "reconcile": "crossfade"},
        "output": str(tmp_path / "out.mp4"),
    }
    spec.update(overrides)
    return spec


def write_spec(tmp_path, data: dict, name: str = "job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for a test module's renders: `farm render` and `render()` join a Ray
    that is already running instead of starting their own (seconds each on 2 cores). The
    tests that check what a render does with a Ray it started itself do not use it."""
    import logging

    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def spec_dict(tmp_path):
    return base_spec(tmp_path)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread in this process, as each CPU actor has: the in-process runs of a
    co-denoised job give the farm's bits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
