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


#: Test modules by the time they take, longest first (scripts/test.sh --durations=40 on
#: 2 cores). Under pytest-xdist (scripts/test.sh) each worker takes whole modules in
#: collection order, so the long ones go out first and no worker is left with one at the
#: end while the other idles (longest processing time first). Unlisted modules follow, in
#: their own order.
LONGEST_FIRST = (
    "test_recovery", "test_resume", "test_codenoise", "test_farm_manager", "test_jobs", "test_ray_render",
    "test_examples", "test_segments", "test_wan", "test_local_cluster", "test_fallbacks", "test_autoscaler",
    "test_pool", "test_outputs", "test_pipelines", "test_cli_local_head", "test_rife",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's order is kept


_SHARED_RAY = {"up": False}  # the Ray `shared_ray` started in this pytest process, while it runs


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for the renders of every test module that asks for it in this pytest
    process: `farm render` and `render()` join a Ray that is already running instead of
    starting their own (seconds of CPU each on 2 cores). It stays up from one such module to
    the next; a module that does not ask for it finds none (`_shared_ray_only_where_asked`),
    so the tests that check what a render does with a Ray it started itself, and the modules
    that start a Ray of another shape, still do."""
    import logging

    import ray

    if not (_SHARED_RAY["up"] and ray.is_initialized()):
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)
        _SHARED_RAY["up"] = True
    yield


@pytest.fixture(scope="module", autouse=True)
def _shared_ray_only_where_asked(request):
    """Before a module none of whose tests asks for `shared_ray`: stop the one still up."""
    if _SHARED_RAY["up"] and not any("shared_ray" in item.fixturenames for item in request.session.items
                                     if item.module is request.module):
        _stop_shared_ray()
    yield


def _stop_shared_ray() -> None:
    import ray

    ray.shutdown()
    _SHARED_RAY["up"] = False


def pytest_sessionfinish(session, exitstatus):
    if _SHARED_RAY["up"]:
        _stop_shared_ray()


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
