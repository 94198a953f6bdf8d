"""Node-local details: an actor finds a submitted job's model files on its own node, and
the token file of a local Ray the farm starts is private."""

from __future__ import annotations

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


def test_the_auth_token_a_local_farm_ray_creates_is_private(tmp_path, monkeypatch):
    import stat

    from scheduler.cluster import connect

    monkeypatch.setenv("HOME", str(tmp_path))
    session = connect(None, cpus_wanted=1)
    try:
        token = tmp_path / ".ray" / "auth_token"
        assert token.exists(), "Ray 2.60 writes ~/.ray/auth_token on a local start"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
    finally:
        session.close()
