"""scripts/local_head.sh stops cleanly when its process group gets SIGTERM, as its comment
says: in seconds, exit 0, no `RpcError` about a GCS that died first, nothing of Ray left;
and so does a head started in the background, which ignores SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.ray_heads import LOCAL_HEAD_SH, clean_env, start_head, wait_for


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


def test_a_signal_while_ray_start_is_still_starting_stops_the_head():
    """Wherever in `ray start`'s start-up the signal lands, the head stops in time."""
    head = start_head(cpus=1, wait_until="launched", env={"FARM_HEAD_STOP_TIMEOUT_S": "5"})
    try:
        wait_for(lambda: "Local node IP" in head.log_tail(20_000), 60, 0.05, "`ray start` to begin")
        start = time.monotonic()
        os.killpg(head.proc.pid, signal.SIGTERM)
        try:
            code = head.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"local_head.sh still running 20 s after SIGTERM:\n{head.log_tail()}")
        log = head.log_tail(20_000)
        assert time.monotonic() - start < 5 + 5, log
        assert code == 0 and "farm head: stopped" in log, log
        wait_for(lambda: not head.processes(), 10, 0.2, "the head's processes to exit")
    finally:
        head.stop()


def test_a_ray_start_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    """Once in CI a SIGTERM landed in `ray start`'s start-up where its exit was swallowed,
    and it kept running (a second SIGTERM is ignored by Ray's handler). That timing cannot
    be forced, so a stand-in `ray` that ignores SIGTERM takes its place on PATH: the
    script's watchdog must kill its process group and the script still ends."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_ray = bin_dir / "ray"
    fake_ray.write_text("#!/usr/bin/env bash\ntrap '' TERM INT\necho 'Ray runtime started.' >&2\n"
                        "sleep 613 &\nwait\n")
    fake_ray.chmod(0o755)
    env = clean_env(FARM_HEAD_DIR=str(tmp_path / "head"), FARM_HEAD_STOP_TIMEOUT_S="2",
                    HOME=str(tmp_path))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = subprocess.Popen([str(LOCAL_HEAD_SH)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        time.sleep(1)  # the stand-in is running
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert time.monotonic() - start < 2 + 5, out
        assert proc.returncode == 0 and "killing its processes" in out and "farm head: stopped" in out, out
        wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == _STAND_IN_CHILD],
                 5, 0.1, "the stand-in's child to be killed")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in psutil.process_iter(["cmdline"]):  # it ignores SIGTERM: do not leave it behind
            if p.info["cmdline"] == _STAND_IN_CHILD:
                p.kill()


_STAND_IN_CHILD = ["sleep", "613"]


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
