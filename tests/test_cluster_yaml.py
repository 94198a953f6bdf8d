"""cluster.yaml and scripts/fake_autoscaler.yaml pass Ray's own validator and keep the farm's
security and sizing choices (the checks `ray up` runs, without touching AWS)."""

from __future__ import annotations

import copy
import re
import tomllib

import pytest
import yaml

from tests.ray_heads import FAKE_AUTOSCALER_YAML, ROOT

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick

ray_util = pytest.importorskip("ray.autoscaler._private.util")


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_and_checks(cluster):
    ray_util.validate_config(copy.deepcopy(cluster))  # the file as written
    prepared = ray_util.prepare_config(copy.deepcopy(cluster))  # merged with Ray's AWS defaults, as `ray up` does
    ray_util.validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == {"ray.head.default", "gpu_worker"}


def test_the_head_takes_no_actors_and_gpu_workers_scale_from_zero(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and "GPU" not in head["resources"]
    assert "InstanceMarketOptions" not in head["node_config"]  # the driver must not be reclaimed
    worker = types["gpu_worker"]
    assert worker["resources"]["GPU"] >= 1 and worker["min_workers"] == 0
    assert 1 <= worker["max_workers"] <= cluster["max_workers"]
    assert re.match(r"g[56]\.", worker["node_config"]["InstanceType"])
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert cluster["idle_timeout_minutes"] > 0
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start


def test_every_node_runs_token_auth_and_the_dashboard_stays_on_loopback(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    worker_start = " ".join(cluster["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    mounts = cluster["file_mounts"]
    assert any(remote.endswith("/.ray/auth_token") for remote in mounts)
    assert "chmod 600 ~/.ray/auth_token" in cluster["setup_commands"]


def test_workers_get_the_cuda_build_of_the_pinned_torch(cluster):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    worker_setup = cluster["worker_setup_commands"]
    torch_line = next(c for c in worker_setup if "torch" in c)
    assert pin in torch_line and "download.pytorch.org/whl/cu" in torch_line
    assert worker_setup.index(torch_line) < next(i for i, c in enumerate(worker_setup) if "raygen-farm" in c)
    assert any(pin in c and "whl/cpu" in c for c in cluster["head_setup_commands"])
    assert any("boto3" in c for c in cluster["head_setup_commands"])  # Ray's AWS autoscaler needs it


def test_fake_autoscaler_config_is_valid_and_shaped_for_the_tests():
    config = yaml.safe_load(FAKE_AUTOSCALER_YAML.read_text())
    ray_util.validate_config(copy.deepcopy(config))
    assert config["provider"]["type"] == "fake_multinode"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["max_workers"] == 0
    assert types["gpu_worker"]["resources"] == {"CPU": 1, "GPU": 1}
    assert (types["gpu_worker"]["min_workers"], types["gpu_worker"]["max_workers"]) == (0, 2)
