"""`farm manager start|stop`, `farm queue`, `farm priority`: see and steer the shared farm
(scheduler/manager.py). `register(main)` adds them to the `farm` group.

Every command takes `--address`, as `farm submit` does, and reaches the manager one of two
ways:
- **the jobs API** (`http://HOST:8265`, the default, e.g. through `ray dashboard`'s SSH
  tunnel): the command runs on the cluster as a small Ray job of its own (`farm queue
  --address auto --json`) and its answer comes back in that job's log. Nothing but the
  dashboard's port is needed; an answer takes a Ray job's start-up, 4-7 s on a 2-core head.
- **a Ray address** (`--address auto` on a cluster node, or `ray://HOST:10001`): the
  command joins the cluster as a Ray driver (nearly 2 s) and calls the manager directly
  (milliseconds).

When the farm's web UI runs (`farm ui`), `farm queue` and `farm priority` given a jobs
API address ask it instead (scheduler/webui.py's JSON routes, on
FARM_UI_PORT of the same host, e.g. through `ray dashboard -p 8266 --remote-port 8266`):
an answer in milliseconds; when nothing answers there they go through the jobs API.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from farm.errors import ClusterError, FarmError
from farm.farmqueue import PRIORITY_RANGE
from scheduler.cli_jobs import _ADDRESS_HELP, _client, fail, parse_resources

_FARM_ADDRESS_HELP = _ADDRESS_HELP + " Or a Ray address (auto, ray://HOST:10001) to call the manager directly."


def _direct(address: str | None) -> bool:
    ray = sys.modules.get("ray")  # not imported: not joined (and importing it costs a second)
    joined = ray is not None and ray.is_initialized()
    return joined or address == "auto" or bool(address and address.startswith("ray://"))


def _join(address: str | None) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    env = os.environ.get("RAY_ADDRESS", "")
    target = env if address == "auto" and env and not env.startswith("http") else address
    try:
        ray.init(address=target, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - Ray raises many types for an unreachable address
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {err}") from err


def _on_cluster(address: str | None, argv: list[str]) -> dict:
    """Run `farm <argv> --address auto --json` on the cluster through the jobs API; the JSON
    it printed."""
    client = _client(address)
    log = client.run_command(["farm", *argv, "--address", "auto", "--json"])
    for line in reversed(log.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ClusterError(f"`farm {' '.join(argv)}` printed no answer on the cluster; its log: {log[-500:]}")


def _ui(address: str | None):
    """The farm UI's client when the command goes through the jobs API and the UI answers
    there: milliseconds instead of a Ray job."""
    from scheduler.webui import ui_for

    return None if _direct(address) else ui_for(address)


def _ask(ref):
    """The manager's answer to a call; its own error (a job it does not know, a bad
    priority) or Ray's (it is restarting, it did not answer) as a ClusterError."""
    import ray

    try:
        return ray.get(ref, timeout=30)
    except ray.exceptions.RayTaskError as err:
        raise ClusterError(str(err.cause if err.cause is not None else err).strip("'\"")) from None
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as err:
        raise ClusterError(f"the farm manager did not answer: {str(err).splitlines()[0]} "
                           "(if it is restarting, try again in a few seconds)") from None


def _manager():
    from scheduler.manager import find_manager

    handle = find_manager()
    if handle is None:
        raise ClusterError("no farm manager runs on this cluster: start one with `farm manager start` "
                           "(the first `farm submit` starts one too)")
    return handle


def _answer(data: dict, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(data, separators=(",", ":")))  # one line: the jobs path reads it back
    else:
        human(data)


# -- farm manager ----------------------------------------------------------------------------
@click.group()
def manager() -> None:
    """Start or stop the shared farm's manager (a detached Ray actor that queues jobs by
    priority and lends them warm pipeline actors)."""


@manager.command("start")
@click.option("--max-actors", type=click.IntRange(1, 4096), help="Pipeline actors in the pool at most. "
              "Default: one per GPU; on a CPU cluster half the cores left after one, at most 4.")
@click.option("--threads", type=click.IntRange(1, 1024), help="Torch threads (and CPUs) per CPU actor.")
@click.option("--gpus-per-actor", type=click.FloatRange(0, 64), help="GPUs per actor. Default: 1 on a GPU cluster.")
@click.option("--resource", "resources", multiple=True, metavar="NAME=AMOUNT",
              help="A custom Ray resource every pool actor requires (repeatable).")
@click.option("--max-models", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Pipelines one actor keeps loaded (least recently used out).")
@click.option("--idle-timeout", type=click.FloatRange(min=1), default=600, show_default=True, metavar="SECONDS",
              help="Stop an actor idle this long, so the cluster can scale down.")
@click.option("--lease-timeout", type=click.FloatRange(min=1), default=10, show_default=True, metavar="SECONDS",
              help="Reclaim the actors of a job whose driver is silent this long.")
@click.option("--start-timeout", type=click.FloatRange(min=1), default=600, show_default=True, metavar="SECONDS",
              help="Give up on a new actor the cluster has not placed and started within this long.")
@click.option("--prefetch", is_flag=True,
              help="Fetch the queued jobs' staged models onto each new node as its first actor starts.")
@click.option("--ui", is_flag=True, help="Serve the farm's web UI from the manager (see `farm ui`).")
@click.option("--ui-host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="With --ui: the address it binds on the head; beyond loopback it asks for the Ray auth token.")
@click.option("--ui-port", type=click.IntRange(1, 65535), default=8266, show_default=True, help="With --ui: its port.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.option("--address", metavar="URL", help=_FARM_ADDRESS_HELP)
def manager_start(max_actors, threads, gpus_per_actor, resources, max_models, idle_timeout, lease_timeout,
                  start_timeout, prefetch, ui, ui_host, ui_port, as_json, address):
    """Start the farm manager (nothing happens if one runs; with --ui, its web UI starts)."""
    parsed = parse_resources(None, None, resources)
    try:
        if not _direct(address):
            argv = ["manager", "start", "--max-models", str(max_models), "--idle-timeout", f"{idle_timeout:g}",
                    "--lease-timeout", f"{lease_timeout:g}", "--start-timeout", f"{start_timeout:g}"]
            if ui:
                argv += ["--ui", "--ui-host", ui_host, "--ui-port", str(ui_port)]
            if prefetch:
                argv.append("--prefetch")
            for flag, value in (("--max-actors", max_actors), ("--threads", threads),
                                ("--gpus-per-actor", gpus_per_actor)):
                if value is not None:
                    argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
            for item in resources:
                argv += ["--resource", item]
            data = _on_cluster(address, argv)
        else:
            from scheduler.manager import default_config, start_manager

            _join(address)
            config = default_config(max_actors, threads, gpus_per_actor, resources=parsed, max_models=max_models,
                                    idle_timeout_s=idle_timeout, lease_timeout_s=lease_timeout,
                                    start_timeout_s=start_timeout, prefetch=prefetch)
            handle, started = start_manager(config)
            data = {"started": started, "config": _ask(handle.pool_config.remote())}  # the one in force
            data["ui"] = _ask(handle.start_ui.remote(ui_host, ui_port)) if ui else _ask(handle.ui_url.remote())
    except FarmError as err:
        fail(err)

    def human(d):
        c = d["config"]
        shape = f"{c['gpus_per_actor']:g} GPU" if c["gpus_per_actor"] else f"{c['threads']} CPU"
        what = "started" if d["started"] else "already running"
        click.echo(f"farm manager {what}: up to {c['max_actors']} actors of {shape}"
                   + (f" and {c['resources']}" if c["resources"] else "")
                   + f", {c['max_models']} pipeline(s) each; idle actors stop after {c['idle_timeout_s']:g}s"
                   + ("; staged models prefetched onto new nodes" if c.get("prefetch") else ""))
        if d.get("ui"):
            click.echo(_ui_note(d["ui"]))
    _answer(data, as_json, human)


# -- farm ui ----------------------------------------------------------------------------------
@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address the UI binds on the head; beyond loopback it asks for the Ray auth token.")
@click.option("--port", type=click.IntRange(1, 65535), default=8266, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.option("--address", metavar="URL", help=_FARM_ADDRESS_HELP)
def ui(host, port, as_json, address):
    """Start the farm's web UI in the running manager, or print its URL if it runs: the
    queue, the actors, live previews of running jobs, priorities and stop."""
    try:
        if not _direct(address):
            data = _on_cluster(address, ["ui", "--host", host, "--port", str(port)])
        else:
            _join(address)
            try:
                data = {"ui": _ask(_manager().start_ui.remote(host, port))}
            except ClusterError as err:
                raise ClusterError(f"the farm UI did not start: {err}") from None
    except FarmError as err:
        fail(err)
    _answer(data, as_json, lambda d: click.echo(_ui_note(d["ui"])))


def _ui_note(url: str) -> str:
    from urllib.parse import urlsplit

    from scheduler.webui import _loopback

    parts = urlsplit(url)
    if not _loopback(parts.hostname or ""):
        return (f"farm UI: {url} (beyond loopback: every page asks for the cluster's Ray auth token, "
                "~/.ray/auth_token on the head)")
    port = parts.port
    return (f"farm UI: {url} on the head node; from your machine: `ray dashboard cluster.yaml -p {port} "
            f"--remote-port {port}` (the dashboard's SSH tunnel, to this port) and open http://localhost:{port}/")


@manager.command("stop")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.option("--address", metavar="URL", help=_FARM_ADDRESS_HELP)
def manager_stop(as_json, address):
    """Stop the farm manager and every actor of its pool. Running jobs lose their actors:
    stop them first (`farm stop ID`)."""
    try:
        if not _direct(address):
            data = _on_cluster(address, ["manager", "stop"])
        else:
            from scheduler.manager import stop_manager

            _join(address)
            stopped = stop_manager()
            data = {"stopped": stopped is not None, "actors": stopped or 0}
    except FarmError as err:
        fail(err)
    _answer(data, as_json, lambda d: click.echo(
        f"farm manager stopped, with its {d['actors']} pool actors" if d["stopped"] else "no farm manager runs"))


# -- farm queue, farm priority ---------------------------------------------------------------
@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the jobs and actors as JSON.")
@click.option("--watch", type=click.FloatRange(min=0.5), is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]", help="Show the tables again every SECONDS (2 if not given) until Ctrl-C.")
@click.option("--address", metavar="URL", help=_FARM_ADDRESS_HELP)
def queue(as_json, watch, address):
    """List the farm's jobs (by priority, then submission; ended ones last) and its actors."""
    if watch is not None and as_json:
        raise click.UsageError("--watch shows the tables; --json prints the queue once")
    try:
        data = _snapshot(address)
    except FarmError as err:
        fail(err)
    if as_json:
        _answer(data, True, None)
        return
    from rich.console import Console, Group
    from rich.live import Live

    console = Console()
    if watch is None:
        console.print(_queue_view(data))
        return
    try:  # Ctrl-C ends it
        with Live(_queue_view(data), console=console, auto_refresh=False) as live:
            while True:
                _wait(watch)
                try:
                    data = _snapshot(address)
                except FarmError as err:  # a manager restarting: say so, and ask again
                    live.update(Group(_queue_view(data), f"[red]{err}[/red]"), refresh=True)
                    continue
                live.update(_queue_view(data), refresh=True)
    except KeyboardInterrupt:
        pass


_wait = time.sleep  # between two views of `farm queue --watch`


def _snapshot(address: str | None) -> dict:
    """The manager's snapshot, with how long the answer took (`answered_in_seconds`; through
    the web UI: the request, after the probe that found it)."""
    ui = _ui(address)
    t0 = time.monotonic()
    if ui is not None:
        data = ui.state()
    elif not _direct(address):
        data = _on_cluster(address, ["queue"])
    else:
        _join(address)
        data = _ask(_manager().snapshot.remote())
    data["answered_in_seconds"] = round(time.monotonic() - t0, 3)
    return data


def _queue_view(data: dict):
    from rich.console import Group

    parts = queue_tables(data)
    if not data["jobs"]:
        parts.append("no jobs in the farm queue yet")
    return Group(*parts, f"[dim]answered in {data['answered_in_seconds']:.2f} s[/dim]")


def queue_tables(data: dict) -> list:
    """The tables `farm queue` prints: jobs, then actors."""
    from rich import box
    from rich.table import Table

    # 80 columns hold both tables: the short columns keep their whole header and value, and a
    # long id or name folds onto a second line instead of ending in "…"
    jobs = Table(title="farm jobs (served by priority, then submission)", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("id", "priority", "state", "windows", "actors", "pipelines", "age"):
        jobs.add_column(col, overflow="fold", min_width=len(col) if col != "id" else None,
                        no_wrap=col not in ("id", "pipelines"))
    for j in data["jobs"]:
        pipelines = "-" if not j["actors"] else f"loading {j['loading']}" if j["loading"] else "warm"
        jobs.add_row(j["id"], str(j["priority"]), j["state"], f"{j['windows_done']}/{j['windows_total']}",
                     str(len(j["actors"])), pipelines, _age(j["age_seconds"]))
    actors = Table(title=f"farm actors (up to {data['max_actors']}; {data['starting']} starting)",
                   box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("actor", "node", "pipelines held", "working for"):
        actors.add_column(col, overflow="fold", no_wrap=col == "node")
    for a in data["actors"]:
        working = (a["holder"] + (" (moving)" if a["moving"] else "")) if a["busy"] else "idle"
        actors.add_row(a["name"], a["node"][:8], "\n".join(a["model_names"]) or "-", working)
    return [jobs, actors]


def _age(seconds: float) -> str:
    for unit, span in (("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{seconds:.0f}s"


@click.command()
@click.argument("job_id")
@click.argument("value", type=click.IntRange(*PRIORITY_RANGE), metavar="PRIORITY")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.option("--address", metavar="URL", help=_FARM_ADDRESS_HELP)
def priority(job_id, value, as_json, address):
    """Set JOB_ID's priority (0-100; higher first). A queued job moves in the queue; a
    running job of higher priority than another takes its actors at their next window."""
    try:
        ui = _ui(address)
        if ui is not None:
            data = ui.set_priority(job_id, value)
        elif not _direct(address):
            data = _on_cluster(address, ["priority", job_id, str(value)])
        else:
            _join(address)
            data = _ask(_manager().set_priority.remote(job_id, value))
    except FarmError as err:
        fail(err)
    _answer(data, as_json, lambda d: click.echo(f"{d['id']}: priority {d['priority']} ({d['state']})"))


COMMANDS = (manager, queue, priority, ui)


def register(main: click.Group) -> None:
    for command in COMMANDS:
        main.add_command(command)
