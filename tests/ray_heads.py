"""Private Ray heads (and a local S3 server) for tests.

A head here is `scripts/local_head.sh` (token auth on, a fresh 0600 token file, the
dashboard and jobs API on 127.0.0.1, `ray start --head --block`) with every port it takes
picked free on 127.0.0.1 and worker ports left to the OS. Other people run Ray on the same
machine, so a test head never uses Ray's default ports or temp dir and is never stopped
with `ray stop` (which kills every Ray on the host):

- its temp dir is a fresh folder under /tmp holding the token, Ray's files, a HOME of its
  own (so Ray never reads or writes the real ~/.ray) and a fresh window store (FARM_STORE);
- it runs in its own process group; `Head.stop()` sends SIGTERM then SIGKILL to that group,
  then kills any process whose command line names the temp dir (the raylets that the fake
  autoscaler starts for its worker nodes live under it too);
- `HEAD_LOCK`, a file lock, makes tests that start heads run one at a time, even across
  pytest processes.

Fixtures to reuse: `token_head` (a 2-CPU head shared by a test module),
`fake_autoscaler_head` (scripts/fake_autoscaler.yaml: a head with no CPUs for actors, and
0..2 `gpu_worker` nodes of {CPU: 1, GPU: 1} started on demand) and `s3_server` (moto on
127.0.0.1, one bucket, AWS_* variables set). Helpers: `run_driver(head, code)` runs Python
in a fresh process joined to a head and returns the JSON it prints last; `resources(head)`;
`farm_actors_alive(head)`; `Head.client_env()` for farm/ray CLI children.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
FARM = str(VENV_BIN / "farm")
HEAD_LOCK = Path(tempfile.gettempdir()) / "raygen-farm-test-heads.lock"
FAKE_AUTOSCALER_YAML = ROOT / "scripts" / "fake_autoscaler.yaml"
LOCAL_HEAD_SH = ROOT / "scripts" / "local_head.sh"

#: Environment variables that would point a child at somebody else's cluster or token.
_FOREIGN_ENV = (
    "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "FARM_JOBS_ADDRESS", "FARM_ADDRESS",
    "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
)


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that are free on 127.0.0.1 right now."""
    with ExitStack() as stack:
        socks = []
        for _ in range(n):
            s = stack.enter_context(closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)))
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]


def clean_env(**extra: str) -> dict:
    """This process's environment minus anything that names a cluster or a token."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll `predicate()` until it returns something truthy; return that, or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Head:
    """A running head: where it listens, its token, and how to reach it from a child process."""

    proc: subprocess.Popen
    temp_dir: Path
    token: str
    token_path: Path
    ports: dict[str, int]
    log_path: Path
    _lock: object = field(default=None, repr=False)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    def client_env(self, token: bool = True, **extra: str) -> dict:
        """Environment for a farm/ray CLI child: the jobs address, and the token if asked."""
        env = clean_env(FARM_JOBS_ADDRESS=self.dashboard_url, RAY_ADDRESS=self.dashboard_url,
                        HOME=str(self.temp_dir / "home"))
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        env.update(extra)
        return env

    def driver_env(self) -> dict:
        """Environment for a Python driver that joins the cluster with `ray.init()`."""
        return clean_env(RAY_ADDRESS=self.gcs_address, RAY_AUTH_MODE="token",
                         RAY_AUTH_TOKEN_PATH=str(self.token_path), HOME=str(self.temp_dir / "home"))

    def auth_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def processes(self) -> list[psutil.Process]:
        """Every live process of this head: its process group and anything under its temp dir."""
        found = {}
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if p.info["status"] == psutil.STATUS_ZOMBIE:
                    continue  # already dead; its parent has yet to reap it
                if os.getpgid(p.pid) == self.proc.pid or str(self.temp_dir) in " ".join(p.info["cmdline"] or ()):
                    found[p.pid] = p
            except (ProcessLookupError, psutil.Error):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it and every straggler under the temp dir."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for sig_wait in (5, 0):
            procs = self.processes()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for p in procs:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=sig_wait or 5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


def start_head(*, cpus: int = 2, gpus: int = 0, autoscaling_config: dict | None = None,
               env: dict | None = None, timeout: float = 120, background: bool = False,
               wait_until: str = "started") -> Head:
    """Start a token-auth head bound to 127.0.0.1 on free ports; wait until its jobs API
    answers and `ray start` has finished starting.

    `autoscaling_config` (a dict) turns on Ray's fake multinode autoscaler
    (RAY_FAKE_CLUSTER=1); its provider is pointed at this head's GCS port. `background`
    launches the script as a shell script would put it in the background,
    `(setsid nohup scripts/local_head.sh … > log 2>&1 &)`: it inherits SIGINT and SIGHUP
    ignored, and is not this process's child. `wait_until="launched"` returns as soon as the
    script has written the token, with `ray start` still starting.
    """
    lock = open(HEAD_LOCK, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one test head at a time on this machine
    temp_dir = Path(tempfile.mkdtemp(prefix="farmh-", dir="/tmp"))  # short: Ray's socket paths
    (temp_dir / "home").mkdir()
    token_path = temp_dir / "auth_token"  # scripts/local_head.sh creates it, mode 0600
    names = ["gcs", "dashboard", "client", "node_manager", "object_manager", "agent_listen",
             "agent_grpc", "runtime_env_agent", "metrics", "autoscaler_metrics", "dashboard_metrics"]
    ports = dict(zip(names, free_ports(len(names))))
    child_env = clean_env(
        FARM_HEAD_DIR=str(temp_dir), RAY_AUTH_TOKEN_PATH=str(token_path),
        FARM_GCS_PORT=str(ports["gcs"]), FARM_DASHBOARD_PORT=str(ports["dashboard"]),
        HOME=str(temp_dir / "home"), RAY_USAGE_STATS_ENABLED="0",
        FARM_STORE=str(temp_dir / "store"),  # a fresh window store: jobs here really render
        AUTOSCALER_METRIC_PORT=str(ports["autoscaler_metrics"]),
        DASHBOARD_METRIC_PORT=str(ports["dashboard_metrics"]),
    )
    cmd = [
        str(LOCAL_HEAD_SH),
        "--ray-client-server-port", str(ports["client"]),
        "--node-manager-port", str(ports["node_manager"]),
        "--object-manager-port", str(ports["object_manager"]),
        "--dashboard-agent-listen-port", str(ports["agent_listen"]),
        "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
        "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
        "--metrics-export-port", str(ports["metrics"]),
        "--min-worker-port", "0", "--max-worker-port", "0",
        "--num-cpus", str(cpus), "--num-gpus", str(gpus),
        "--object-store-memory", str(256 * 1024**2),
    ]
    if autoscaling_config is not None:
        config = json.loads(json.dumps(autoscaling_config))
        config["provider"]["gcs_address"] = f"127.0.0.1:{ports['gcs']}"
        config_path = temp_dir / "autoscaler.yaml"
        config_path.write_text(yaml.safe_dump(config))
        cmd += ["--autoscaling-config", str(config_path)]
        child_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    child_env.update(env or {})
    log_path = temp_dir / "ray-start.log"
    if background:
        launch = ["bash", "-c", '(setsid nohup "$@" > "$FARM_TEST_HEAD_LOG" 2>&1 < /dev/null &)', "bash", *cmd]
        subprocess.run(launch, env={**child_env, "FARM_TEST_HEAD_LOG": str(log_path)}, cwd=temp_dir, check=True)
        script = wait_for(lambda: _process_running(cmd), 30, 0.1, "the background local_head.sh")
        proc = _NotOurChild(script)
    else:
        with open(log_path, "wb") as log:
            # as from a terminal: SIGINT and SIGHUP at their defaults. A child inherits a
            # signal ignored, and bash cannot trap one ignored on entry; something in a
            # pytest-xdist worker (after some modules) leaves SIGINT ignored.
            proc = subprocess.Popen(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=temp_dir,
                                    preexec_fn=_default_signals)
    head = Head(proc, temp_dir, "", token_path, ports, log_path, lock)
    try:
        wait_for(lambda: token_path.is_file() and token_path.stat().st_size, 30, 0.1, "the token file")
        head.token = token_path.read_text().strip()
        if wait_until == "launched":
            return head
        _wait_until_jobs_api_answers(head, timeout)
        # The jobs API answers a few seconds before `ray start` has finished starting (the
        # raylet comes last); a head is up once it says so.
        wait_for(lambda: "Ray runtime started" in head.log_tail(100_000), timeout, 0.1,
                 "`ray start` to say the runtime started")
    except BaseException:
        tail = head.log_tail()
        head.stop()
        raise RuntimeError(f"the test head did not come up; ray start said:\n{tail}") from None
    return head


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _process_running(cmd: list[str]) -> psutil.Process | None:
    """The process whose command line ends with `cmd` (the script run by bash)."""
    for p in psutil.process_iter(["cmdline"]):
        if (p.info["cmdline"] or [])[-len(cmd):] == cmd:
            return p
    return None


class _NotOurChild:
    """A background head's script, which is not our child: its pid, and whether it has
    exited (a zombie its new parent has yet to reap counts as exited). No exit status."""

    returncode = None

    def __init__(self, process: psutil.Process):
        self.pid, self._process = process.pid, process

    def poll(self):
        try:
            running = self._process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            running = False
        return None if running else 0

    def wait(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("local_head.sh", timeout)
            time.sleep(0.1)
        return 0


def _wait_until_jobs_api_answers(head: Head, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.proc.returncode}")
        try:
            r = requests.get(f"{head.dashboard_url}/api/jobs/", headers=head.auth_headers(), timeout=5)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no jobs API at {head.dashboard_url} after {timeout:.0f}s")


def run_driver(head: Head, code: str, timeout: float = 120) -> dict:
    """Run `code` in a fresh Python joined to `head` (`ray` is imported and initialised);
    it must print one JSON document on its last stdout line, which is returned."""
    script = "import json, ray\nray.init(log_to_driver=False)\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], env=head.driver_env(), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resources(head: Head) -> dict:
    """{"total": …, "available": …} of the cluster, seen by a fresh driver."""
    return run_driver(head, """
        print(json.dumps({"total": ray.cluster_resources(), "available": ray.available_resources()}))
    """)


def farm_actors_alive(head: Head) -> list[dict]:
    """Actors of the farm's classes that are still alive, from the state API."""
    r = requests.get(f"{head.dashboard_url}/api/v0/actors", params={"limit": 1000, "detail": "1"},
                     headers=head.auth_headers(), timeout=30)
    r.raise_for_status()
    actors = r.json()["data"]["result"]["result"]
    return [a for a in actors if a.get("state") != "DEAD"
            and any(name in a.get("class_name", "") for name in ("PipelineActor", "RifeActor"))]


def load_fake_autoscaler_config() -> dict:
    return yaml.safe_load(FAKE_AUTOSCALER_YAML.read_text())


@pytest.fixture(scope="module")
def token_head():
    """A 2-CPU token-auth head on free loopback ports, shared by the tests of one module."""
    head = start_head(cpus=2)
    try:
        yield head
    finally:
        head.stop()
    assert not head.processes(), "processes of the test head outlived it"


@pytest.fixture
def fake_autoscaler_head():
    """A head with Ray's fake multinode autoscaler (scripts/fake_autoscaler.yaml): a CPU-only
    head that takes no work, and 0..2 `gpu_worker` nodes ({CPU: 1, GPU: 1}) started on demand."""
    config = load_fake_autoscaler_config()
    head = start_head(cpus=0, autoscaling_config=config, timeout=180)
    try:
        yield head
    finally:
        head.stop()
    assert not head.processes(), "processes of the test head (or its fake nodes) outlived it"


# --- a local S3 server -------------------------------------------------------------------

@dataclass
class S3Server:
    """moto's S3 server on 127.0.0.1, and the AWS environment that points a client at it."""

    proc: subprocess.Popen
    endpoint: str
    bucket: str
    log_path: Path | None = None  # the server's access log: one line per request

    def requests(self, method: str, path: str) -> int:
        """How many `method` requests for exactly `path` (/bucket/key) the server answered."""
        if self.log_path is None or not self.log_path.exists():
            return 0
        needle = f"{method} {path} HTTP/"
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))  # werkzeug's colours
        return sum(needle in line for line in text.splitlines())

    @property
    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "farm-test",
                "AWS_SECRET_ACCESS_KEY": "farm-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        if self.log_path is not None:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)


def start_s3_server(bucket: str = "farm-test", timeout: float = 30) -> S3Server:
    """Start `moto_server` on a free loopback port and create `bucket` in it."""
    exe = VENV_BIN / "moto_server"
    if not exe.exists():
        pytest.skip("moto_server is not installed (pip install -e '.[test]')")
    port = free_ports(1)[0]
    log_path = Path(tempfile.mkdtemp(prefix="farm-s3-")) / "access.log"
    with open(log_path, "wb") as log:  # werkzeug logs every request to stderr
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = S3Server(proc, f"http://127.0.0.1:{port}", bucket, log_path)
    try:
        def answers():
            try:
                return requests.get(server.endpoint, timeout=2).status_code < 500
            except requests.RequestException:
                return False
        wait_for(answers, timeout, 0.2, "moto_server")
        r = requests.put(f"{server.endpoint}/{bucket}", timeout=10)  # CreateBucket (moto needs no signature)
        r.raise_for_status()
    except BaseException:
        server.stop()
        raise
    return server


def point_aws_at(server: S3Server, monkeypatch) -> None:
    """Set this process's AWS_* variables to `server` (and unset any that would win over them)."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3 server with one bucket; AWS_* variables in this process point at it."""
    server = start_s3_server()
    point_aws_at(server, monkeypatch)
    try:
        yield server
    finally:
        server.stop()
