"""scripts/local_head.sh stops cleanly when its process group gets SIGTERM, as its comment
says: in seconds, exit 0, no `RpcError` about a GCS that died first, nothing of Ray left;
and so does a head started in the background, which ignores SIGINT."""

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


def test_a_head_started_in_the_background_stops_on_sigterm_to_the_script():
    """`(setsid nohup scripts/local_head.sh > head.log 2>&1 &)`: the script and `ray start`
    inherit SIGINT and SIGHUP ignored, so stopping must not depend on them."""
    head = start_head(cpus=1, background=True)
    try:
        ignored = int(_status_field(head.proc.pid, "SigIgn"), 16)
        assert ignored & (1 << (signal.SIGINT - 1)) and ignored & (1 << (signal.SIGHUP - 1))  # as launched
        start = time.monotonic()
        os.kill(head.proc.pid, signal.SIGTERM)  # `kill -TERM <pid>`, as the script's comment says
        try:
            head.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"local_head.sh still running 15 s after SIGTERM:\n{head.log_tail()}")
        log = head.log_tail(20_000)
        assert time.monotonic() - start < 10, log
        assert "farm head: stopped" in log and "RpcError" not in log, log
        wait_for(lambda: not head.processes(), 10, 0.2, "the head's processes to exit")
    finally:
        head.stop()


def _status_field(pid: int, name: str) -> str:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(name + ":"):
            return line.split()[1]
    raise KeyError(name)
