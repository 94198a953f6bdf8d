"""`farm submit`, `farm status`, `farm logs`, `farm stop`, `farm list`: render on a cluster
through the Ray Jobs API (scheduler/jobs.py). `register(main)` adds them to the `farm` group.

Every command takes `--address URL`, the cluster's jobs API (its dashboard); default
$FARM_JOBS_ADDRESS, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS when it is an http(s)
URL, else http://127.0.0.1:8265 (where `ray dashboard cluster.yaml` forwards it).

Exit codes as for the other commands: 0 done; 1 the cluster refused or failed (or, with
--follow/--wait, the job did not succeed); 2 the spec or the command line is invalid,
in which case nothing was sent to the cluster.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime

import click
from click.core import ParameterSource

from farm.errors import FarmError, SpecError

EXIT_FAILED = 1
EXIT_BAD_SPEC = 2
#: Upper bounds of the actor options: far above a real cluster, far below a typo.
MAX_WORKERS = 1024
MAX_THREADS = 1024
MAX_GPUS_PER_WORKER = 64

_ADDRESS_HELP = ("The cluster's jobs API (its dashboard), e.g. http://127.0.0.1:8265. Default: $FARM_JOBS_ADDRESS, "
                 "$RAY_API_SERVER_ADDRESS, $RAY_ADDRESS if http(s), else http://127.0.0.1:8265.")


def fail(err: FarmError) -> None:
    """Print `err` and exit: 2 for a bad spec or command line, 1 for anything else."""
    if isinstance(err, SpecError):
        for line in spec_error_lines(err):
            click.echo(line, err=True)
        sys.exit(EXIT_BAD_SPEC)
    click.echo(f"error: {err}", err=True)
    sys.exit(EXIT_FAILED)


def spec_error_lines(err: SpecError) -> list[str]:
    """A problem with a command-line option or argument (`-o/--output: …`, `VIDEO: …`) on a
    line of its own; the spec file's problems under the file's name."""
    def on_command_line(problem: str) -> bool:
        name = problem.split(":", 1)[0]
        return name.startswith("-") or name.isupper()

    options = [p for p in err.problems if on_command_line(p)]
    in_spec = [p for p in err.problems if not on_command_line(p)]
    lines = [f"error: {p}" for p in options]
    if in_spec or not options:
        lines.append(f"error: {SpecError(in_spec, err.source)}")
    return lines


class EnvOption(click.Option):
    """An option with an environment variable: `--help` lists the variable, and a bad value
    taken from it is reported as coming from it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("show_envvar", True)
        super().__init__(*args, **kwargs)

    def get_error_hint(self, ctx: click.Context | None) -> str:
        hint = click.Parameter.get_error_hint(self, ctx)  # click.Option's always adds the variable
        if ctx is not None and ctx.get_parameter_source(self.name) is ParameterSource.ENVIRONMENT:
            hint += f" (set by the environment variable {self.envvar})"
        return hint


def parse_resources(ctx, param, values) -> dict:
    """`--resource NAME=AMOUNT` options (a click callback) as a dict."""
    out = {}
    for v in values:
        name, sep, amount = v.partition("=")
        try:
            out[name] = float(amount) if sep else 1.0
        except ValueError:
            raise click.BadParameter(f"expected NAME=AMOUNT, e.g. accelerator_a10g=1; got {v!r}") from None
        if not name or out[name] <= 0:
            raise click.BadParameter(f"expected NAME=AMOUNT with AMOUNT > 0; got {v!r}")
    return out


def _address_option(f):
    return click.option("--address", metavar="URL", help=_ADDRESS_HELP)(f)


def _client(address: str | None):
    """A JobsClient for `address`, after printing any security warning to stderr."""
    from scheduler.jobs import JobsClient, resolve_address

    try:
        address = resolve_address(address)
    except FarmError as err:
        raise click.BadParameter(str(err), param_hint="--address") from None
    try:
        client = JobsClient(address)
    except FarmError as err:
        fail(err)
    for note in client.warnings():
        click.secho(note, err=True, fg="red", bold=True)
    return client


def _parse_env(items: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name or not name.replace("_", "").isalnum():
            raise click.BadParameter(f"{item!r}: expected NAME or NAME=VALUE", param_hint="--env")
        if not sep:
            if name not in os.environ:
                raise click.BadParameter(f"{name} is not set in this shell", param_hint="--env")
            value = os.environ[name]
        env[name] = value
    return env


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%m-%d %H:%M") if ms else "-"


def _follow(client, job_id: str) -> None:
    """Stream the log until the job ends; exit 0 only if it succeeded."""
    try:
        for chunk in client.follow(job_id):
            click.echo(chunk, nl=False)
        info = client.wait(job_id, timeout=60)
    except FarmError as err:
        fail(err)
    from scheduler.jobs import failure_hint

    click.echo(f"{job_id}: {info['status']}", err=True)  # the log above has said the rest
    hint = failure_hint(info)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(0 if info["status"] == "SUCCEEDED" else EXIT_FAILED)


@click.command()
@click.argument("job", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", metavar="URI|PATH",
              help="Where the cluster writes the mp4: s3://bucket/key.mp4, gs://bucket/key.mp4, or an absolute "
                   "path on the head node. Overrides the spec's `output`.")
@click.option("--workers", "-w", type=click.IntRange(1, MAX_WORKERS), help="Pipeline actors (as for `farm render`).")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS),
              help="Torch threads per CPU actor (as for `farm render`).")
@click.option("--gpus-per-worker", type=click.FloatRange(0, MAX_GPUS_PER_WORKER),
              help="GPUs per pipeline actor (as for `farm render`); set 1 on an autoscaling cluster whose GPU "
                   "workers start at 0, so the autoscaler is asked for them.")
@click.option("--env", "env_items", multiple=True, metavar="NAME[=VALUE]",
              help="Set an environment variable for the job; NAME alone copies this shell's value. Repeatable. "
                   "Job settings are visible to anyone with the cluster's token: never pass secrets this way.")
@click.option("--submission-id", help="The job's id. Default: farm-<spec name>-<random>.")
@click.option("--priority", type=click.IntRange(0, 100), default=None,
              help="Priority in the farm's queue, 0-100, higher first (default 50). `farm priority` changes it later.")
@click.option("--private", is_flag=True,
              help="Start the job's own pipeline actors instead of taking them from the farm manager.")
@click.option("--follow", "-f", is_flag=True, help="Then stream the job's log until it ends; exit 0 only if it succeeded.")
@_address_option
def submit(job, output, workers, threads, gpus_per_worker, env_items, submission_id, priority, private, follow,
           address):
    """Send JOB (a YAML job spec) to a Ray cluster as a Ray Job; print the job id.

    The job takes its pipeline actors from the cluster's farm manager (the first
    submission starts one): jobs are served by priority, then submission, on warm actors
    that outlive them (`farm queue` shows the farm). `--private` starts its own instead.

    The spec is validated here first: a bad spec exits 2 and is never sent. Local files
    the spec names (model folders, RIFE weights) travel with the job, up to Ray's upload
    limit. The output must be one the cluster can write: an s3:// or gs:// URI, or an
    absolute path on the head node (see docs/cluster.md).
    """
    from scheduler.jobs import prepare_submission

    env = _parse_env(env_items)
    try:
        sub = prepare_submission(job, output, workers=workers, threads=threads, gpus_per_worker=gpus_per_worker,
                                 env=env, submission_id=submission_id, priority=priority, private=private)
    except SpecError as err:
        fail(err)
    try:
        client = _client(address)
        try:
            job_id = client.submit(sub, on_wait=lambda note: click.echo(f"farm submit: {note}", err=True))
        except FarmError as err:
            fail(err)
    finally:
        sub.cleanup()
    where = "on the head node" if not sub.output.startswith(("s3://", "gs://", "gcs://")) else ""
    click.echo(job_id)
    click.echo(f"submitted to {client.address}: {sub.entrypoint}  → {sub.output} {where}".rstrip(), err=True)
    if sub.inputs:
        shipped = ", ".join(f"{i.field} ({i.size / 2**20:.1f} MiB)" for i in sub.inputs)
        click.echo(f"shipped with the job: {shipped}", err=True)
    if follow:
        _follow(client, job_id)
    click.echo(f"follow: farm logs {job_id} --follow    status: farm status {job_id}    "
               f"stop: farm stop {job_id}", err=True)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job's details as JSON.")
@click.option("--wait", is_flag=True, help="Wait until the job ends; exit 0 only if it succeeded.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up after this many seconds.")
@_address_option
def status(job_id, as_json, wait, timeout, address):
    """Show the status of JOB_ID (PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED)."""
    client = _client(address)
    try:
        info = client.wait(job_id, timeout=timeout) if wait else client.info(job_id)
    except FarmError as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        from scheduler.jobs import describe

        click.echo(describe(job_id, info))
    if wait and info["status"] != "SUCCEEDED":
        sys.exit(EXIT_FAILED)


@click.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the log grows, until the job ends.")
@_address_option
def logs(job_id, follow, address):
    """Print the log of JOB_ID (the driver's output: progress, the report summary, errors)."""
    client = _client(address)
    if follow:
        _follow(client, job_id)
    try:
        click.echo(client.logs(job_id), nl=False)
    except FarmError as err:
        fail(err)


@click.command()
@click.argument("job_id")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the job has stopped.")
@click.option("--timeout", type=click.FloatRange(min=0), default=60, show_default=True,
              help="With --wait: give up after this many seconds.")
@_address_option
def stop(job_id, wait, timeout, address):
    """Stop JOB_ID: its driver gets SIGTERM (then SIGKILL). Its private actors go with it;
    actors the farm lent it go back to the farm's pool, warm."""
    client = _client(address)
    try:
        was_running = client.stop(job_id)
        state = client.wait(job_id, timeout=timeout)["status"] if wait else client.status(job_id)
    except FarmError as err:
        fail(err)
    note = "" if was_running else " (it was not running)"
    click.echo(f"{job_id}: {state}{note}")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@_address_option
def list_jobs(as_json, address):
    """List the cluster's jobs, oldest first (farm jobs and any other Ray jobs)."""
    client = _client(address)
    try:
        jobs = client.list()
    except FarmError as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    if not jobs:
        click.echo(f"no jobs on {client.address}")
        return
    from rich.console import Console

    Console().print(jobs_table(jobs, client.address))


def jobs_table(jobs: list[dict], address: str):
    """The table `farm list` prints. The id never wraps (it is what the other commands
    take); the other columns fold to fit."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"jobs on {address}", box=box.SIMPLE_HEAD, title_justify="left")
    rows = [_job_row(j) for j in jobs]
    for i, col in enumerate(("id", "status", "started")):
        table.add_column(col, no_wrap=True, min_width=max(len(r[i]) for r in rows))
    for col in ("output", "message"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _job_row(job: dict) -> tuple[str, ...]:
    meta = job.get("metadata") or {}
    message = (job.get("message") or "").strip().splitlines()
    return (_job_id(job), job["status"], _when(job["start_time"]), meta.get("output", "-"),
            message[0][:80] if message else "")


def _job_id(job: dict) -> str:
    return job.get("submission_id") or job.get("job_id") or "-"


COMMANDS = (submit, status, logs, stop, list_jobs)


def register(main: click.Group) -> None:
    """Add the jobs commands to the `farm` group."""
    for command in COMMANDS:
        main.add_command(command)
