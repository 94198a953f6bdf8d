"""Node-local details: an actor finds a submitted job's model files on its own node; the
token file of a local Ray the farm starts is private; `farm render` with no cluster starts
its own Ray and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import ray
from click.testing import CliRunner

from actors.pipeline import relocate_inputs
from farm.spec import parse_spec
from farm.video import probe, read_frames
from scheduler.cli import main
from tests.conftest import base_spec, write_spec


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


def test_farm_render_end_to_end_with_two_workers(tmp_path):
    data = base_spec(tmp_path, frames=52, fps=10)  # windows 0-15, 12-27, 24-39, 36-51
    job = write_spec(tmp_path, data)
    out = tmp_path / "video.mp4"
    result = CliRunner().invoke(main, ["render", str(job), "-o", str(out), "--workers", "2", "--threads", "1", "--json",
                                       "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)

    info = probe(out)
    assert (info.frames, info.width, info.height, info.fps) == (52, 64, 64, 10.0)
    assert len(read_frames(out)) == 52

    assert report["output"] == str(out) and report["output_frames"] == 52 and report["output_fps"] == 10
    assert [(w["index"], w["start"], w["end"]) for w in report["windows"]] == [
        (0, 0, 16), (1, 12, 28), (2, 24, 40), (3, 36, 52)
    ]
    assert len({w["actor"] for w in report["windows"]}) == 2  # both workers rendered
    assert all(w["attempts"] == 1 and w["node"] and w["seconds"] > 0 for w in report["windows"])
    assert set(report["stages"]) >= {"plan", "render", "blend", "encode", "total"}
    on_disk = json.loads((tmp_path / "video.mp4.report.json").read_text())
    assert on_disk["windows"] == report["windows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "store", "video.mp4", "video.mp4.report.html", "video.mp4.report.json"]
    assert not ray.is_initialized()  # the local cluster it started is gone


def test_ncnn_backend_problems_are_reported_before_ray_starts(tmp_path):
    data = base_spec(tmp_path, interpolate={"factor": 2, "backend": "ncnn", "model_dir": "rife-v4.6"})
    job = write_spec(tmp_path, data)
    missing = CliRunner().invoke(main, ["render", str(job)])  # the spec names a folder that is not there
    assert missing.exit_code == 2
    assert f"interpolate.model_dir: nothing at '{tmp_path / 'rife-v4.6'}' (the spec says 'rife-v4.6')" in missing.output
    (tmp_path / "rife-v4.6").mkdir()
    result = CliRunner().invoke(main, ["render", str(job)])
    assert result.exit_code == 1
    assert "interpolate.backend ncnn needs" in result.output or "interpolate.model_dir" in result.output
    assert not ray.is_initialized()
    assert not (tmp_path / "out.mp4").exists()
