"""Node-local details: an actor finds a submitted job's model files on its own node, and
the token file of a local Ray the farm starts is private."""

from __future__ import annotations

from pathlib import Path

from actors.pipeline import relocate_inputs
from farm.spec import parse_spec
from tests.conftest import base_spec


def test_model_files_missing_on_this_node_are_found_in_the_shipped_inputs(tmp_path):
    """A job sent with `farm submit` names its local model files by their path on the head;
    an actor on another node finds them in the job's working_dir copy instead."""
    head = tmp_path / "head" / "inputs"
    (head / "0-adapter").mkdir(parents=True)
    (head / "1-zoom.safetensors").write_bytes(b"lora")
    data = base_spec(tmp_path)
    data["model"] = {**data["model"], "motion_adapter": str(head / "0-adapter"),
                     "loras": [{"path": str(head / "1-zoom.safetensors"), "name": "zoom", "weight": 0.5}]}
    spec = parse_spec(data)

    # On the head every path exists: nothing changes.
    assert relocate_inputs(spec, cwd=tmp_path / "worker") == spec

    # On a worker node the head's folder is gone; its working_dir copy is the cwd.
    worker = tmp_path / "worker"
    (head.parent).rename(worker)
    moved = relocate_inputs(spec, cwd=worker)
    assert moved.model.motion_adapter == str(worker / "inputs" / "0-adapter")
    assert moved.model.loras[0].path == str(worker / "inputs" / "1-zoom.safetensors")
    assert moved.model.loras[0].weight == 0.5 and moved.model.base == "tiny"


def test_the_auth_token_a_local_farm_ray_creates_is_private(tmp_path):
    """Ray 2.60 writes ~/.ray/auth_token, world-readable, on a local start; the farm makes it
    0600. A fresh process with its own HOME: Ray caches the token per process."""
    import os
    import stat
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)
    code = "from scheduler.cluster import connect; connect(None, cpus_wanted=1).close()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=180,
                   cwd=Path(__file__).resolve().parent.parent)
    token = tmp_path / ".ray" / "auth_token"
    assert token.exists(), "Ray 2.60 writes ~/.ray/auth_token on a local start"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
