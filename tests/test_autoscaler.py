"""The autoscaling path on one machine: Ray's fake multinode provider starts "GPU" worker
nodes when the farm asks for GPUs with `request_resources`, and the job's GPU actors run
on them. (The fake nodes have no CUDA, so the actors render on CPU while holding a GPU.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from farm.video import probe
from tests import ray_heads
from tests.conftest import base_spec, write_spec
from tests.ray_heads import resources

fake_autoscaler_head = ray_heads.fake_autoscaler_head  # fixture (tests/ray_heads.py)
FARM = str(Path(sys.executable).parent / "farm")


def test_a_two_actor_job_grows_the_cluster_from_zero_to_two_gpu_workers_and_completes(fake_autoscaler_head,
                                                                                        tmp_path):
    head = fake_autoscaler_head
    before = resources(head)["total"]
    assert before.get("GPU", 0) == 0 and before.get("CPU", 0) == 0  # min_workers 0; the head takes no work

    job = write_spec(tmp_path, base_spec(tmp_path, frames=28))  # 2 windows
    out = tmp_path / "grown.mp4"
    proc = subprocess.run(
        [FARM, "render", str(job), "-o", str(out), "--address", head.gcs_address, "--workers", "2",
         "--gpus-per-worker", "1", "--threads", "1", "--no-store", "--json"],
        env=head.driver_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    after = resources(head)["total"]
    assert after.get("GPU", 0) == 2  # two fake GPU workers were started for the job
    assert len({a["node"] for a in report["actors"]}) == 2  # one actor on each new node
    assert report["state"] == "DONE" and report["windows_rendered"] == 2
    assert probe(out).frames == 28
