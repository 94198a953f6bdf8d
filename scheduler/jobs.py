"""Ray Jobs for the farm: ship a job spec to a cluster, then watch, stop and list it.

`farm submit` turns a spec into an ordinary Ray Job (so `ray job status/logs/stop` work on
it too):

    JOB.yaml ─► load_spec (locally; a bad spec stops here) ─► prepare_submission
       a staging folder: job.yaml (output and input paths rewritten) + inputs/ (links)
       ─► JobSubmissionClient.submit_job(entrypoint="farm render job.yaml --address auto",
                                         runtime_env={"working_dir": staging folder})

The spec and the local files it names travel in the job's `working_dir`, which Ray zips
and uploads through the dashboard; the dashboard takes at most `upload_limit()` bytes
(100 MiB in Ray 2.60), so larger inputs are refused before anything is sent.

Outputs. A path on this machine means nothing on the cluster, so a submitted job writes
to an object-storage URI (`s3://bucket/key.mp4`, `gs://…`: the recommended choice) or to
an absolute path on the head node, where the driver runs (the folder must exist there).
A relative path is refused. `-o` overrides the spec's `output`, as for `farm render`.

Auth. Requests carry `Authorization: Bearer <token>` when a token is found, in this order:
RAY_AUTH_TOKEN, the file at RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token (Ray's default
file), unless RAY_AUTH_MODE=disabled. Ray's errors become ClusterError with a message
that says what to do (a 401 names RAY_AUTH_TOKEN and token auth).

This module imports Ray only when it talks to a cluster.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from farm import __version__, outputs
from farm.farmqueue import DEFAULT_PRIORITY
from farm.errors import ClusterError, SpecError
from farm.pipelines import REGISTRY
from farm.identity import is_local_ref
from farm.spec import JobSpec, load_spec
from scheduler.auth import (  # noqa: F401 (also re-exported: the jobs client's addresses and tokens)
    DEFAULT_ADDRESS,
    Token,
    is_loopback,
    is_loopback_host,
    resolve_address,
    resolve_token,
)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SPEC_NAME = "job.yaml"
INPUTS_DIR = "inputs"
#: What the dashboard answers (HTTP 500) while no job agent is up to take a job.
NO_AGENT = "No available agent to submit job"
#: How long `submit` waits for a job agent before it gives up.
AGENT_WAIT_S = 60.0


# --- addresses and tokens: scheduler/auth.py (light: the CLI's fast paths import it) ---

def security_warnings(address: str, token: Token | None) -> list[str]:
    """What a user should hear about before talking to `address` with `token`."""
    notes = []
    if token is None and address.startswith("http://") and not is_loopback(address):
        notes.append(
            f"WARNING: {address} is a plain-HTTP address on the network and token auth is off for "
            "this client (no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). A Ray "
            "cluster that accepts this lets anyone who can reach the port run code on it. Turn "
            "token auth on for the cluster and here, and prefer an SSH tunnel "
            "(`ray dashboard cluster.yaml`, then --address http://127.0.0.1:8265)."
        )
    if token is not None and token.source not in ("RAY_AUTH_TOKEN",):
        try:
            mode = Path(token.source).stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            notes.append(f"WARNING: the token file {token.source} can be read by other users "
                         f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {token.source}")
    return notes


# --- what a spec ships with it -------------------------------------------------------

@dataclass(frozen=True)
class InputField:
    """A spec field that may name a file or folder on this machine.

    `path` is dotted; `*` steps into every item of a list (e.g. `model.loras.*.path`).
    `kind`: "path" (always a local file or folder when given) or "model" (a local folder or
    checkpoint file, or else a hub id / `tiny` / `sd15`, which stays as it is)."""

    path: str
    kind: str


#: Every field whose value may be a local path: the common ones here, and each pipeline's
#: own from its descriptor (`local_inputs`).
INPUT_FIELDS: tuple[InputField, ...] = (
    InputField("model.base", "model"),
    InputField("model.motion_adapter", "model"),
    InputField("model.vae", "model"),
    InputField("model.config", "model"),
    InputField("model.ip_adapter", "model"),
    InputField("model.loras.*.path", "path"),
    InputField("reference.image", "path"),
    InputField("shots.*.image", "path"),
    InputField("shots.*.reference.image", "path"),
    *dict.fromkeys(InputField(path, kind) for d in REGISTRY.values() for path, kind in d.local_inputs),
    InputField("interpolate.weights", "path"),
    InputField("interpolate.model_dir", "path"),
)


@dataclass(frozen=True)
class LocalInput:
    field: str       # e.g. "model.base" or "loras.1.file"
    location: tuple  # keys/indices into the spec mapping
    path: Path       # absolute, on this machine
    size: int        # bytes, folders summed (links followed)


def _walk(data: Any, steps: list[str], location: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if not steps:
        yield location, data
        return
    step, rest = steps[0], steps[1:]
    if step == "*":
        if isinstance(data, list):
            for i, item in enumerate(data):
                yield from _walk(item, rest, location + (i,))
    elif isinstance(data, dict) and data.get(step) is not None:
        yield from _walk(data[step], rest, location + (step,))


def _is_local(value: Any, kind: str) -> bool:
    if not isinstance(value, str) or not value:
        return False
    if kind == "model":
        return value not in ("tiny", "sd15") and is_local_ref(value)
    return True


def path_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path, followlinks=True):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                pass
    return total


def local_inputs(spec: dict, base: str | Path | None = None,
                 fields: tuple[InputField, ...] = INPUT_FIELDS) -> list[LocalInput]:
    """The files and folders on this machine that `spec` (a mapping, e.g. a validated
    spec's `model_dump()`, whose paths `load_spec` made absolute against the spec file's
    folder) names; relative paths are taken against `base` (default: the current
    directory). Pure apart from reading sizes."""
    base = Path(base or os.getcwd())
    found = []
    for f in fields:
        for location, value in _walk(spec, f.path.split(".")):
            if _is_local(value, f.kind):
                path = (base / Path(value).expanduser()).resolve()
                found.append(LocalInput(".".join(map(str, location)), location, path, path_size(path)))
    return found


def _set(data: dict, location: tuple, value: Any) -> None:
    for step in location[:-1]:
        data = data[step]
    data[location[-1]] = value


def upload_limit() -> int:
    """The most a job's working_dir may weigh: the dashboard's request limit (Ray's
    DASHBOARD_CLIENT_MAX_SIZE) or the GCS package limit, whichever is smaller."""
    try:
        from ray._private.ray_constants import DASHBOARD_CLIENT_MAX_SIZE
        from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE
    except ImportError:  # private names: if a Ray release moves them, use Ray 2.60's values
        return 100 * 2**20
    return min(DASHBOARD_CLIENT_MAX_SIZE, GCS_STORAGE_MAX_SIZE)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# --- outputs ---------------------------------------------------------------------------

def cluster_output(output: str | None, source: str | None = None, name: str = "output") -> str:
    """Where the job writes on the cluster: an object-storage URI (checked) or an absolute
    path on the head node. Raises SpecError for anything else, naming the field or option
    `name` the output came from (`-o/--output` when it came from the command line)."""
    if not output:
        raise SpecError([
            f"{name}: farm submit needs an output the cluster can write: "
            "-o s3://bucket/key.mp4 (or gs://…), or -o /absolute/path/on/the/head.mp4"
        ], source)
    if outputs.is_uri(output):
        try:
            return outputs.check_output_uri(output)
        except ValueError as err:
            raise SpecError([f"{name}: {str(err).removeprefix('output ')}"], source) from None
    if not output.lower().endswith(".mp4"):
        raise SpecError([f"{name}: must end in .mp4 (the farm writes H.264 in mp4); got {output!r}"], source)
    if not os.path.isabs(output):
        raise SpecError([
            f"{name}: {output!r} is a path on this machine, which the cluster cannot write. "
            "Give -o s3://bucket/key.mp4 (or gs://…) or an absolute path on the head node, "
            "e.g. -o /home/ubuntu/renders/video.mp4"
        ], source)
    return output


# --- the submission --------------------------------------------------------------------

@dataclass
class Submission:
    """A job ready to send: its staging folder, entrypoint and runtime env."""

    folder: Path
    entrypoint: str
    runtime_env: dict
    output: str
    inputs: list[LocalInput]
    size: int
    submission_id: str
    metadata: dict

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _mapping(job: Path) -> dict | None:
    try:
        data = yaml.safe_load(job.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _submission_id(job_path: Path) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", job_path.stem.lower()).strip("-")[:40] or "job"
    return f"farm-{stem}-{secrets.token_hex(4)}"


def prepare_submission(job: str | Path, output: str | None = None, *, workers: int | None = None,
                       threads: int | None = None, gpus_per_worker: float | None = None,
                       env: dict[str, str] | None = None, submission_id: str | None = None,
                       priority: int | None = None, private: bool = False) -> Submission:
    """Validate `job` here, decide its cluster output, and stage it with its local inputs.

    Raises SpecError (nothing was sent) for a bad spec, an output the cluster cannot
    write, or inputs over the upload limit."""
    job = Path(job)
    # 1. Validate the spec and its cluster output.
    spec, raw, target = _validate_for_cluster(job, output)
    # 2. The local files the spec names, and whether they fit in one upload.
    inputs = local_inputs(spec.model_dump(mode="json"))
    size = _upload_size(job, inputs, raw)
    # 3. Stage: job.yaml with the inputs renamed into inputs/, and links to the inputs.
    folder = _stage(raw, inputs, target)
    # 4. The entrypoint: `farm render` on the cluster, joining its Ray, its actors lent by
    #    the farm manager (started if none runs) under the Ray job's id, unless private.
    submission_id = submission_id or _submission_id(job)
    argv = ["farm", "render", SPEC_NAME, "--address", "auto"]
    if private:
        argv += ["--private"]
    else:
        argv += ["--farm", "--job-id", submission_id]
        if priority is not None:
            argv += ["--priority", str(priority)]
    if workers:
        argv += ["--workers", str(workers)]
    if threads:
        argv += ["--threads", str(threads)]
    if gpus_per_worker is not None:
        argv += ["--gpus-per-worker", f"{gpus_per_worker:g}"]
    submitter = submitted_by()
    # the farm's queue and web UI show who submitted the job (also in the Ray job's metadata)
    runtime_env: dict[str, Any] = {"working_dir": str(folder),
                                   "env_vars": {**(env or {}), "FARM_SUBMITTER": submitter}}
    return Submission(
        folder=folder,
        entrypoint=shlex.join(argv),
        runtime_env=runtime_env,
        output=target,
        inputs=inputs,
        size=size,
        submission_id=submission_id,
        metadata={"farm": __version__, "spec": job.name, "output": target, "submitted_by": submitter}
        | ({} if private else {"priority": str(DEFAULT_PRIORITY if priority is None else priority)}),
    )


def submitted_by() -> str:
    """Who submits, for the farm's queue: FARM_SUBMITTER (set for a submitted job's driver),
    else user@host."""
    import getpass
    import socket

    return os.environ.get("FARM_SUBMITTER") or f"{getpass.getuser()}@{socket.gethostname()}"


def _validate_for_cluster(job: Path, output: str | None) -> tuple[JobSpec, dict, str]:
    """(spec, the raw mapping, the cluster output). Everything but the output is validated
    here; the output names a place on the cluster, not here. Both are checked, so every
    problem is reported at once."""
    problems: list[str] = []
    spec = target = None
    with tempfile.TemporaryDirectory(prefix="farm-check-") as scratch:
        try:
            spec = load_spec(job, output=str(Path(scratch) / "out.mp4"))
        except SpecError as err:
            problems += err.problems
    raw = _mapping(job)  # None when load_spec could not read one (and has said so)
    if output or raw is not None:
        try:
            target = cluster_output(output or raw.get("output"), str(job), "-o/--output" if output else "output")
        except SpecError as err:
            problems += err.problems
    if problems:
        raise SpecError(problems, str(job))
    return spec, raw, target


def _upload_size(job: Path, inputs: list, raw: dict) -> int:
    """Bytes the job sends to the cluster; SpecError when they do not fit in one upload."""
    unique = {i.path: i.size for i in inputs}  # two fields may name one folder: it travels once
    size = sum(unique.values()) + len(yaml.safe_dump(raw))
    limit = upload_limit()
    if size >= limit - 2**20:
        raise SpecError(
            [f"{i.field}: {i.path} is {_mib(i.size)}" for i in inputs]
            + [f"the job's local inputs come to {_mib(size)}; Ray's job upload limit is {_mib(limit)}. "
               "Put large inputs where the cluster can read them instead: a hub id for models, "
               "or object storage / the nodes' disks (see docs/cluster.md)"],
            str(job),
        )
    return size


def _stage(raw: dict, inputs: list, target: str) -> Path:
    """A fresh folder holding job.yaml (its inputs renamed into inputs/) and links to them."""
    folder = Path(tempfile.mkdtemp(prefix="farm-submit-"))
    try:
        (folder / INPUTS_DIR).mkdir()
        staged: dict[Path, str] = {}
        for item in inputs:
            if item.path not in staged:
                staged[item.path] = f"{len(staged)}-{item.path.name}"
                link = folder / INPUTS_DIR / staged[item.path]
                link.symlink_to(item.path, target_is_directory=item.path.is_dir())
            _set(raw, item.location, f"./{INPUTS_DIR}/{staged[item.path]}")
        raw["output"] = target
        (folder / SPEC_NAME).write_text(yaml.safe_dump(raw, sort_keys=False))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


# --- the client --------------------------------------------------------------------------

class JobsClient:
    """The Ray Jobs API at one address, with the farm's token handling and error messages."""

    def __init__(self, address: str | None = None, *, submission_client=None):
        """`submission_client`: anything with JobSubmissionClient's methods (tests pass a
        fake); default a real one, made on first use."""
        self.address = resolve_address(address)
        self.token = resolve_token()
        self._client = submission_client

    def warnings(self) -> list[str]:
        return security_warnings(self.address, self.token)

    @property
    def client(self):
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            headers = {"Authorization": f"Bearer {self.token.value}"} if self.token else None
            self._client = self._call(lambda: JobSubmissionClient(self.address, headers=headers))
        return self._client

    # Every call to Ray goes through here, so no Ray or HTTP error escapes untranslated.
    def _call(self, fn, job_id: str | None = None):
        from ray.exceptions import AuthenticationError

        try:
            with quiet_ray_logs():
                return fn()
        except AuthenticationError as err:
            raise self._auth_error(str(err)) from None
        except (ClusterError, StopAsyncIteration):
            raise
        except Exception as err:  # noqa: BLE001 - requests, aiohttp and Ray raise many kinds
            raise self._translate(err, job_id) from None

    def _auth_error(self, detail: str) -> ClusterError:
        fix = ("Give this client the cluster's token with RAY_AUTH_TOKEN=<token>, or RAY_AUTH_TOKEN_PATH "
               "pointing to a file holding it, or put it in ~/.ray/auth_token (on the head, "
               "`ray get-auth-token` prints it).")
        if self.token is None or "required" in detail.lower() or "401" in detail:
            return ClusterError(f"the Ray cluster at {self.address} has token auth on and refused a request "
                                f"without a token (HTTP 401). {fix}")
        return ClusterError(f"the Ray cluster at {self.address} rejected the token from {self.token.source} "
                            f"(HTTP 403): it is not this cluster's token. {fix}")

    def _translate(self, err: Exception, job_id: str | None) -> ClusterError:
        text = str(err)
        status = getattr(err, "status", None)  # aiohttp's websocket handshake errors
        if status in (401, 403):
            return self._auth_error(f"{status}")
        if status == 404 or "does not exist" in text or ("404" in text and job_id):
            return ClusterError(f"no job {job_id!r} on {self.address}; `farm list` shows the jobs there")
        if isinstance(err, ConnectionError) or type(err).__name__ in ("ConnectionError", "ClientConnectorError"):
            return ClusterError(
                f"cannot reach the Ray jobs API at {self.address}: is the cluster up and its dashboard "
                "running? For a cluster from `ray up cluster.yaml`, run `ray dashboard cluster.yaml` "
                "to forward it to http://127.0.0.1:8265"
            )
        if NO_AGENT in text:
            return ClusterError(
                f"the Ray jobs API at {self.address} has no job agent up to take the job ({NO_AGENT}). "
                "The head may still be starting or be overloaded: try again in a minute; `ray status` "
                "on the head shows whether its node is up"
            )
        if isinstance(err, ValueError) and "size" in text.lower():
            return ClusterError(f"Ray refused the job's files: {text}")
        return ClusterError(f"the Ray jobs API at {self.address} failed: {text}")

    # --- operations ----------------------------------------------------------------

    def submit(self, sub: Submission, *, agent_wait: float = AGENT_WAIT_S, poll: float = 2.0,
               on_wait=lambda note: None) -> str:
        """Submit; while the head answers that no job agent is up yet (a head that has just
        started, or a busy one), wait and retry for up to `agent_wait` seconds, calling
        `on_wait(note)` once, when the waiting starts."""
        deadline = time.monotonic() + agent_wait
        waiting = False
        while True:
            try:
                return self._submit_once(sub)
            except ClusterError as err:
                if NO_AGENT not in str(err) or time.monotonic() + poll > deadline:
                    raise
            if not waiting:
                on_wait(f"the cluster's job agent is not up yet; retrying for up to {agent_wait:.0f}s")
                waiting = True
            time.sleep(poll)

    def _submit_once(self, sub: Submission) -> str:
        # The staging folder is ours, so every file in it must travel: a .gitignore inside a
        # model folder must not drop its weights (Ray reads this variable when it zips).
        saved = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
        os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = "1"
        try:
            return self._call(lambda: self.client.submit_job(
                entrypoint=sub.entrypoint, runtime_env=sub.runtime_env, submission_id=sub.submission_id,
                metadata=sub.metadata,
            ))
        finally:
            if saved is None:
                os.environ.pop("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", None)
            else:
                os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = saved

    def info(self, job_id: str) -> dict:
        return _details(self._call(lambda: self.client.get_job_info(job_id), job_id))

    def status(self, job_id: str) -> str:
        return self.info(job_id)["status"]

    def logs(self, job_id: str) -> str:
        return self._call(lambda: self.client.get_job_logs(job_id), job_id)

    def follow(self, job_id: str) -> Iterator[str]:
        """The job's log as it grows, until the job ends."""
        import asyncio

        self.info(job_id)  # a clear error for an unknown id before the websocket
        stream = self.client.tail_job_logs(job_id)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    chunk = self._call(lambda: loop.run_until_complete(stream.__anext__()), job_id)
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            try:
                loop.run_until_complete(stream.aclose())
            except Exception:  # noqa: BLE001 - closing a broken stream
                pass
            loop.close()

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop (SIGTERM to the driver, SIGKILL later); True if it was running."""
        return self._call(lambda: self.client.stop_job(job_id), job_id)

    def list(self) -> list[dict]:
        jobs = self._call(lambda: self.client.list_jobs())
        return sorted((_details(j) for j in jobs), key=lambda d: d.get("start_time") or 0)

    def run_command(self, argv: list[str], timeout: float = 120.0, poll: float = 0.25) -> str:
        """Run a short `farm` command on the cluster as a Ray job of its own (how `farm
        queue`, `farm priority` and `farm manager` reach the farm manager through the jobs
        API alone); its log. ClusterError if it fails, with the end of its log."""
        job_id = f"farm-control-{secrets.token_hex(4)}"
        self._call(lambda: self.client.submit_job(entrypoint=shlex.join(argv), submission_id=job_id,
                                                  metadata={"farm": __version__, "control": argv[1]}))
        try:
            info = self.wait(job_id, timeout=timeout, poll=poll)
        except ClusterError:
            self.stop(job_id)  # it did not finish in time: nothing is left running
            raise
        log = self.logs(job_id)
        if info["status"] != "SUCCEEDED":
            lines = log.strip().splitlines()
            said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
            if said:  # the command's own error lines, as it printed them
                raise ClusterError("; ".join(said))
            raise ClusterError(f"`{shlex.join(argv)}` failed on the cluster ({info['status']}): "
                               + "\n".join(lines[-5:]))
        return log

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> dict:
        """Poll until the job reaches a terminal state; its info. ClusterError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.info(job_id)
            if info["status"] in TERMINAL:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise ClusterError(f"job {job_id} is still {info['status']} after {timeout:.0f}s")
            time.sleep(poll)


def _details(d) -> dict:
    keys = ("submission_id", "job_id", "status", "message", "entrypoint", "start_time", "end_time",
            "metadata", "driver_exit_code", "error_type")
    out = {k: getattr(d, k, None) for k in keys}
    out["status"] = str(out["status"].value if hasattr(out["status"], "value") else out["status"])
    return out


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextmanager
def quiet_ray_logs():
    """Only Ray's warnings and errors reach the terminal while the block runs: its job
    client logs each step of an upload at INFO. (Ray's modules set their own loggers to
    INFO, so the filter sits on the handler they all write through, the `ray` logger's.)"""
    import ray.job_submission  # noqa: F401 - Ray sets up its handler on import

    quiet = _WarningsOnly()
    handlers = list(logging.getLogger("ray").handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


# --- what a job's status means -------------------------------------------------------------

#: What the head's shell says when it cannot find the entrypoint's `farm` (exit 127).
FARM_NOT_FOUND = ("farm: not found", "farm: command not found")


def failure_hint(info: dict) -> str | None:
    """What a failed job's end means, when the farm can tell; None otherwise."""
    message = info.get("message") or ""
    if info.get("status") != "FAILED":
        return None
    if info.get("driver_exit_code") == 127 or any(s in message for s in FARM_NOT_FOUND):
        return ("the head could not run `farm` (exit 127: command not found). The Python environment "
                "where the head's `ray` runs has no farm: install the project there (pip install -e . "
                "with that environment's pip), or start the head from the farm's environment, activated "
                "(`source .venv/bin/activate`, then `ray start --head` or scripts/local_head.sh) or with "
                "its bin folder first on PATH; then submit again")
    return None


def describe(job_id: str, info: dict) -> str:
    """What `farm status` prints: the status, Ray's message, and a hint for a known failure."""
    text = f"{job_id}: {info['status']}"
    if info.get("message"):
        text += f" — {info['message'].rstrip()}"
    hint = failure_hint(info)
    return f"{text}\nhint: {hint}" if hint else text
