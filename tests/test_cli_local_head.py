"""scripts/local_head.sh stops cleanly when its process group gets SIGTERM, as its comment
says: in seconds, exit 0, no `RpcError` about a GCS that died first, nothing of Ray left."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.ray_heads import start_head, wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_scripts_process_group_stops_the_head_cleanly(sig):
    head = start_head(cpus=1)
    try:
        start = time.monotonic()
        os.killpg(head.proc.pid, sig)  # as `kill -- -PGID` does; the harness's Head.stop does the same
        try:
            code = head.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"local_head.sh still running 15 s after {sig.name}:\n{head.log_tail()}")
        took = time.monotonic() - start
        log = head.log_tail(20_000)
        assert took < 10, f"{sig.name} took {took:.1f}s:\n{log}"
        assert code == 0, log
        assert "RpcError" not in log and "Timed out while waiting for GCS" not in log, log
        assert "farm head: stopped" in log
        wait_for(lambda: not head.processes(), 10, 0.2, "the head's processes to exit")
    finally:
        head.stop()
