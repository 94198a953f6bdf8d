"""A film of shots, compiled into runs: a pure function from a job to what it renders.

A job with `shots:` is a list of shots, each joined to the next by `then:`:

    cut        nothing is shared: the next shot starts a new run
    fuse       the next shot continues this one's run: the run is one continuous video,
               its windows span the join, and its prompt changes across
               `prompt_transition` frames as a prompt schedule does
    dissolve   {dissolve: N}: a new run, and the last N frames of this shot and the
               first N of the next, each rendered on its own, are crossfaded in pixels;
               the film is N frames shorter than the sum of its shots

A *run* (shots fused together) is rendered as a job of its own (`Run.spec`): its frames
are numbered from its own first frame, its seed and guidance are its first shot's, and
its windows' keys and noise do not depend on where it sits in the film, so editing one
shot leaves every other run's windows (and co-denoised latents) valid in the store.

Three frame numberings meet here:

    local    a run's own frames, 0 … rendered - 1: what its actors render and its keys name
    render   the runs laid end to end (each with all its rendered frames): the windows of
             the film (`Film.windows`) and the order frames come back in
    output   the video: a run's trimmed frames dropped (a video VAE renders 4k + 1
             frames, and a shot of another length renders the shortest such run that
             covers it), dissolves laid over each other

`Splice` turns frames in render order into output frames. A job without `shots` is one
run: the job itself, every numbering the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from farm.plan import Plan, Window, plan_windows

if TYPE_CHECKING:
    from farm.spec import JobSpec
    from farm.tasks import WindowResult, WindowTask


@dataclass(frozen=True)
class Shot:
    """One shot as the film places it."""

    index: int
    run: int
    start: int  # first output frame (its dissolve-in frames included)
    end: int  # one past its last output frame
    prompt: str
    then: str  # cut, fuse or dissolve
    dissolve: int  # frames crossfaded with the next shot (then: dissolve)
    anchor: dict | None = None  # its identity anchor, {"image", "scale"} (None: none, or scale 0)
    loras: dict | None = None  # its own weights for the job's LoRAs, {name: weight}

    @property
    def anchor_label(self) -> str:
        """`portrait.png × 0.8`, or "" without an anchor."""
        return "" if self.anchor is None else f"{Path(self.anchor['image']).name} × {self.anchor['scale']:g}"


@dataclass(frozen=True)
class Run:
    """Shots fused together, rendered as one job (`spec`, in local frames)."""

    index: int
    shots: tuple[int, ...]
    spec: "JobSpec"
    plan: Plan  # local windows
    frames: int  # frames it puts in the video (before dissolves overlap them)
    render_start: int
    out_start: int  # output frame = local frame + out_start
    first_window: int  # global index of its first window
    dissolve_in: int  # frames crossfaded with the run before
    dissolve_out: int  # … and with the run after
    lora_weights: tuple[float, ...] | None = None  # its shots' own LoRA weights (None: the job's)

    def task(self, w: Window) -> "WindowTask":
        """Its window `w` as its actors render it."""
        from farm.tasks import WindowTask

        return WindowTask.from_spec(self.spec, w, self.lora_weights)

    @property
    def rendered(self) -> int:
        return self.spec.frames

    @property
    def windows(self) -> range:
        """Global indices of its windows."""
        return range(self.first_window, self.first_window + len(self.plan.windows))

    def kept(self, w: Window, start: int = 0) -> Window:
        """Local window `w` numbered across the film, from frame `start`, cut at the frames
        the run keeps."""
        return Window(self.first_window + w.index, start + w.start, start + min(w.end, self.frames),
                      w.overlap_prev, w.overlap_next if w.end < self.frames else 0)


class Film:
    """A job as runs of shots. Built by `compile_film`; pure (no Ray, no torch)."""

    def __init__(self, spec: "JobSpec", runs: tuple[Run, ...], shots: tuple[Shot, ...]):
        self.spec, self.runs, self.shots = spec, runs, shots
        self._run_of = [r for r in runs for _ in r.plan.windows]

    @property
    def has_shots(self) -> bool:
        return bool(self.spec.shots)

    @property
    def frames(self) -> int:
        """Output frames."""
        last = self.runs[-1]
        return last.out_start + last.frames

    @cached_property
    def windows(self) -> tuple[Window, ...]:
        """Every run's windows, in render frames, numbered across the film. Windows of
        different runs never share a frame."""
        return tuple(Window(r.first_window + w.index, r.render_start + w.start, r.render_start + w.end,
                            w.overlap_prev, w.overlap_next)
                     for r in self.runs for w in r.plan.windows)

    @cached_property
    def out_windows(self) -> tuple[Window, ...]:
        """Every run's windows in output frames, cut at the frames the run keeps."""
        return tuple(r.kept(w, r.out_start) for r in self.runs for w in r.plan.windows)

    @property
    def plan(self) -> Plan:
        """The film's windows in render frames (one run: the job's own plan)."""
        if len(self.runs) == 1 and not self.has_shots:
            return self.runs[0].plan
        return Plan(self.runs[-1].render_start + self.runs[-1].rendered, self.windows, self.spec.steps)

    def run_of(self, index: int) -> Run:
        """The run that global window `index` belongs to."""
        return self._run_of[index]

    def local(self, index: int) -> Window:
        run = self.run_of(index)
        return run.plan.windows[index - run.first_window]

    def task(self, index: int) -> "WindowTask":
        """Global window `index` as its run renders it: local frames, global index (the
        dispatcher, the ledger and the reconciler know windows by index)."""
        return self.run_of(index).task(replace(self.local(index), index=index))

    def tasks(self) -> list["WindowTask"]:
        return [self.task(i) for i in range(len(self.windows))]

    def placed(self, result: "WindowResult") -> "WindowResult":
        """A window's result with its frames numbered as in the output."""
        run = self.run_of(result.index)
        w = self.local(result.index)
        return replace(result, start=run.out_start + w.start, end=run.out_start + w.end)

    def spec_of(self, index: int) -> "JobSpec":
        return self.run_of(index).spec

    @property
    def cuts(self) -> tuple[int, ...]:
        """Output frames that start a shot after a cut: the pair (f - 1, f) is never
        interpolated and is no seam."""
        return tuple(r.out_start for r in self.runs[1:] if not r.dissolve_in)

    def storyboard_frames(self) -> dict[int, int]:
        """{output frame: shot}: each shot's middle frame, for the report's storyboard."""
        return {(s.start + s.end - 1) // 2: s.index for s in self.shots}

    def splice(self) -> "Splice":
        return Splice(self.runs)

    def seam_runs(self) -> list[tuple[int, list[Window]]] | None:
        """For the seam metric (farm.metrics.flicker_report): each run's first output frame
        and its windows in its own frames (numbered across the film), cut at the frames it
        keeps. None for a job without shots (its windows are the video's)."""
        if not self.has_shots:
            return None
        return [(r.out_start, [r.kept(w) for w in r.plan.windows]) for r in self.runs]


def compile_film(spec: "JobSpec") -> Film:
    """The runs of a job: its shots grouped by `fuse`, each run a job of its own."""
    if not spec.shots:
        plan = plan_windows(spec)
        run = Run(0, (), spec, plan, spec.frames, 0, 0, 0, 0, 0)
        return Film(spec, (run,), ())
    groups = run_groups([shot.then for shot in spec.shots])
    runs, shots = [], []
    render = out = window = dissolve_in = 0
    for g, members in enumerate(groups):
        lengths = [spec.shot_frames(i) for i in members]
        frames = sum(lengths)
        dissolve_out = spec.shots[members[-1]].dissolve if members[-1] + 1 < len(spec.shots) else 0
        run_spec = run_job(spec, members, frames, out)
        plan = plan_windows(run_spec)
        runs.append(Run(g, tuple(members), run_spec, plan, frames, render, out, window, dissolve_in, dissolve_out,
                        spec.shot_lora_weights(members[0])))
        at = out
        for i, n in zip(members, lengths):
            shot = spec.shots[i]
            ref = spec.shot_reference(i)
            anchor = {"image": ref.image, "scale": ref.scale} if ref is not None and ref.scale else None
            shots.append(Shot(i, g, at, at + n, shot.first_prompt, shot.join, shot.dissolve, anchor, shot.loras))
            at += n
        render += run_spec.frames
        out += frames - dissolve_out
        window += len(plan.windows)
        dissolve_in = dissolve_out
    return Film(spec, tuple(runs), tuple(shots))


def run_groups(joins: list) -> list[list[int]]:
    """Shot indices grouped into runs (farm/shots.py): a shot whose `then` is `fuse` runs
    on into the next; `joins` holds each shot's `then` (None where it failed its rules)."""
    groups: list[list[int]] = [[]]
    for i, then in enumerate(joins):
        groups[-1].append(i)
        if then != "fuse" and i + 1 < len(joins):
            groups.append([])
    return groups


def run_job(spec: "JobSpec", members: list[int], frames: int, out_start: int) -> "JobSpec":
    """The job that renders shots `members` (fused) as one run, numbered from its own
    first frame: their prompts as one schedule, the first shot's seed, guidance,
    negative prompt, picture and identity anchor, its part of the control video (from the first shot's
    `control_start`, else the film's own frames), and a window no longer than the run
    (a video VAE's 4k + 1 frames: the shortest that covers it; the extra are dropped)."""
    first = spec.shots[members[0]]
    schedule, at = {}, 0
    for i in members:
        for frame, text in spec.shots[i].schedule.items():
            schedule[at + frame] = text
        at += spec.shot_frames(i)
    t = spec.temporal_compression
    rendered = frames if t == 1 else frames + (-(frames - 1)) % t
    window = spec.window
    if window.length > rendered:
        window = window.model_copy(update={"length": rendered, "overlap": min(window.overlap, rendered - 1)})
    update = {"shots": [], "frames": rendered, "prompt": None, "prompts": schedule if any(schedule.values()) else None,
              "window": window, "interpolate": None,
              "seed": first.seed if first.seed is not None else spec.seed,
              "guidance": first.guidance if first.guidance is not None else spec.guidance,
              "negative_prompt": first.negative_prompt if first.negative_prompt is not None else spec.negative_prompt}
    if spec.reference is not None or first.reference is not None:
        update["reference"] = spec.shot_reference(members[0])
    if spec.control is not None:
        start = first.control_start if first.control_start is not None else spec.control.start + out_start
        update["control"] = spec.control.model_copy(update={"start": start})
    if first.image is not None:
        block = spec.shot_image_block
        update[block] = getattr(spec, block).model_copy(update={"image": first.image})
    return spec.model_copy(update=update)


class Splice:
    """Frames in render order in, output frames out: a run's trimmed frames dropped, the
    frames of a dissolve crossfaded (a linear ramp over its N frames, as `window.blend:
    linear` crossfades an overlap)."""

    def __init__(self, runs: tuple[Run, ...]):
        self.runs = runs
        self.run, self.local = 0, 0
        self.held: list[np.ndarray] = []

    def push(self, frame: np.ndarray) -> Iterator[np.ndarray]:
        run = self.runs[self.run]
        j = self.local
        self.local += 1
        if self.local == run.rendered and self.run + 1 < len(self.runs):
            self.run, self.local = self.run + 1, 0
        if j >= run.frames:
            return  # trimmed: past the frames the shot asked for
        if j >= run.frames - run.dissolve_out:
            self.held.append(frame)  # blended with the next run's first frames
            return
        if j < run.dissolve_in:
            weight = (j + 1) / (run.dissolve_in + 1)
            before = self.held.pop(0).astype(np.float32)
            mixed = before + weight * (frame.astype(np.float32) - before)
            yield np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
            return
        yield frame


def shot_table(film: Film, records: dict[int, dict], latent_runs: list[dict]) -> list[dict]:
    """The report's `shots`: each shot's output frames, prompt, identity anchor, own LoRA
    weights, join, run, the windows that render it, whether they were rendered or read
    from the store, and their seconds (the windows' render time; a co-denoised run's wall
    time, shared by its shots)."""
    run_seconds = {r["run"].index: r.get("seconds") for r in latent_runs}
    rows = []
    for shot in film.shots:
        run = film.runs[shot.run]
        windows = [run.first_window + w.index for w in run.plan.windows
                   if run.out_start + w.start < shot.end and shot.start < run.out_start + min(w.end, run.frames)]
        done = [records[i] for i in windows if i in records]
        cached = sum(bool(r.get("cached")) for r in done)
        state = ("not rendered" if len(done) < len(windows) else "from the store" if cached == len(windows)
                 else "rendered" if not cached else "partly from the store")
        seconds = run_seconds.get(run.index) if latent_runs else round(
            sum(r.get("seconds") or 0.0 for r in done if not r.get("cached")), 4)
        rows.append({"index": shot.index, "frames": [shot.start, shot.end], "length": shot.end - shot.start,
                     "prompt": shot.prompt, "anchor": shot.anchor, "loras": shot.loras, "then": shot.then, "dissolve": shot.dissolve, "run": run.index,
                     "windows": windows, "state": state, "seconds": seconds})
    return rows


def merge_latent_reports(film: Film, runs: list[dict]) -> dict:
    """The report's `latent` for co-denoised runs, each {run, key, from_store,
    rendered_again, local (a local re-render's region, farm/rerender.py, or None), seconds,
    report (CoDenoiser.report())}. One run without shots: its
    report with its key, as for any job; a film: the runs' shards (windows and frames
    numbered across the film), recoveries and times together, and each run's own under
    `runs`."""
    if not film.has_shots:
        r = runs[0]
        return r["report"] | {"key": r["key"], "from_store": r["from_store"], "rendered_again": r["rendered_again"],
                              "local": r.get("local")}
    shards, stats, recoveries, reshapes = [], [], [], []
    for r in runs:
        run, rep = r["run"], r["report"]
        for shard in rep["shards"]:
            shards.append(shard | {"run": run.index, "windows": [run.first_window + w for w in shard["windows"]],
                                   "frames": [run.out_start + f for f in shard["frames"]]})
        stats += rep["shard_stats"]
        recoveries += [x | {"run": run.index} for x in rep["recoveries"]]
        reshapes += [x | {"run": run.index} for x in rep["reshapes"]]
    reports = [r["report"] for r in runs]
    waits = [rep["wait_share"] for rep in reports if rep["wait_share"] is not None]
    again = [f"shots {shot_span(r['run'].shots)}: {r['rendered_again']}" for r in runs if r["rendered_again"]]
    return {
        "actors": max(rep["actors"] for rep in reports),
        "shards": shards,
        "resumed_from_step": min(rep["resumed_from_step"] or 0 for rep in reports),
        "recoveries": recoveries,
        "reshapes": reshapes,
        "checkpoints": reports[0]["checkpoints"],
        "exchange_bytes_per_step": max(rep["exchange_bytes_per_step"] for rep in reports),
        "denoise_seconds": round(sum(rep["denoise_seconds"] for rep in reports), 4),
        "wait_share": round(sum(waits) / len(waits), 4) if waits else None,
        "shard_stats": stats,
        "key": None,  # each run has its own
        "from_store": all(r["from_store"] for r in runs),
        "rendered_again": "; ".join(again) or None,
        "runs": [{"run": r["run"].index, "shots": list(r["run"].shots), "key": r["key"], "from_store": r["from_store"],
                  "rendered_again": r["rendered_again"], "local": r.get("local"), "seconds": r.get("seconds"),
                  "denoise_seconds": r["report"]["denoise_seconds"]} for r in runs],
    }


def run_label(output: str, run: Run) -> str:
    """The name a co-denoised run's last render is remembered by in the window store (to
    say why it renders again): the output, and a film's run by its first shot."""
    return output + (f"#shot{run.shots[0]}" if run.shots else "")


def shot_span(shots: tuple[int, ...]) -> str:
    return f"{shots[0]}–{shots[-1]}" if len(shots) > 1 else str(shots[0])
