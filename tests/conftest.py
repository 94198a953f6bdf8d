"""Test setup: no model hub, a per-session farm cache, and helpers for job specs."""

from __future__ import annotations

import os
import tempfile

# Before anything imports huggingface_hub: any stray download must fail loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache for the whole session (tiny models are built once); Ray workers inherit it.
# scripts/test.sh keeps one with the checkout; a bare `pytest` gets a temporary one,
# removed when the session ends (pytest_unconfigure).
_OWN_CACHE = None
if not os.environ.get("FARM_CACHE"):
    _OWN_CACHE = os.environ["FARM_CACHE"] = tempfile.mkdtemp(prefix="farm-test-cache-")

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
    "test_recovery", "test_farm_manager", "test_codenoise", "test_jobs", "test_ray_render", "test_wan",
    "test_resume", "test_autoscaler", "test_node_models_ray", "test_cli_local_head", "test_pool", "test_examples",
    "test_shots_actors", "test_shots", "test_rerender",
    "test_segments", "test_local_cluster", "test_webui", "test_fallbacks", "test_outputs", "test_model_files",
    "test_pipelines", "test_rife", "test_node_models",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's order is kept


_SHARED_RAY = {"up": False, "farm": False}  # what `shared_ray` (and `warm_farm`) started in this process


@pytest.fixture(scope="module")
def farm_ray():
    """A local Ray of the farm tests' shape: 4 CPUs and two `farm_gpu`, the custom resource
    that pins the farm manager's pool actors (standing in for GPUs)."""
    import logging

    import ray

    ray.init(address="local", num_cpus=4, resources={"farm_gpu": 2}, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


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


@pytest.fixture(scope="module")
def warm_farm(shared_ray):
    """A farm manager (scheduler/manager.py) in the shared Ray: every render of the module
    that may use the shared farm (not `--private`, nothing shipped) borrows its actors,
    which keep the pipelines they loaded warm from one job, test and module to the next. A
    lent actor renders the same frames as a private one (tests/test_farm_manager.py); what
    it saves is the actor start-up (seconds of CPU each). For modules whose tests do not
    check how a job starts its own actors. Two actors, the most these jobs ask for."""
    from scheduler.manager import ManagerConfig, find_manager, start_manager

    if not (_SHARED_RAY["farm"] and find_manager() is not None):
        # a long lease: a driver starved of CPU on 2 cores for seconds is not lost
        start_manager(ManagerConfig(max_actors=2, threads=1, max_models=8, lease_timeout_s=60.0,
                                    idle_timeout_s=3600.0))
        _SHARED_RAY["farm"] = True
    yield


def _module_asks_for(request, fixture: str) -> bool:
    return any(fixture in item.fixturenames for item in request.session.items if item.module is request.module)


@pytest.fixture(scope="module", autouse=True)
def _shared_ray_only_where_asked(request):
    """Before a module none of whose tests asks for `shared_ray`: stop the one still up.
    Before one that does not ask for `warm_farm`: stop the farm manager, whose actors its
    renders would otherwise borrow."""
    if _SHARED_RAY["up"] and not _module_asks_for(request, "shared_ray"):
        _stop_shared_ray()
    elif _SHARED_RAY["farm"] and not _module_asks_for(request, "warm_farm"):
        _stop_warm_farm()
    yield


def _stop_warm_farm() -> None:
    """Stop the farm manager and wait until its actors' CPUs are free again: the next
    module's tests count on the shared Ray's every CPU (4 actors placed of 6 asked)."""
    import time

    import ray

    from scheduler.manager import stop_manager

    stop_manager()
    _SHARED_RAY["farm"] = False
    total = ray.cluster_resources().get("CPU", 0)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.1)


def _stop_shared_ray() -> None:
    import ray

    ray.shutdown()
    _SHARED_RAY["up"] = _SHARED_RAY["farm"] = False


def pytest_sessionfinish(session, exitstatus):
    if _SHARED_RAY["up"]:
        _stop_shared_ray()


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
