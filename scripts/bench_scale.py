#!/usr/bin/env python
"""Benchmark (not a test): scheduling overhead of a SIMULATED 64-GPU run.

THIS IS A SIMULATION. One machine announces 64 logical GPUs to Ray
(`ray.init(num_gpus=64, num_cpus=...)`), so the driver places one pipeline actor per
"GPU" exactly as on a GPU cluster (`num_gpus=1, num_cpus=1` each). The job spec's
`model.faults.simulate_seconds: S` replaces the diffusers pipeline inside each real
PipelineActor by `farm.faults.SimulatedRenderer`: it sleeps S seconds per window and
returns cheap deterministic frames (reported as device `simulation`). Everything else is
the real farm: `scheduler.driver.render`, the Dispatcher, the Reconciler (blend), the
flicker meter and the H.264 encoder, all in this driver process.

With N windows on A actors and a fixed cost S per window, a perfect scheduler needs
ideal = ceil(N / A) · S seconds. The scheduling overhead is

    overhead = (render stage wall − ideal) / ideal        (target ≤ 2 %)

where the render stage (`report["stages"]["render"]`) starts after every actor has
started, so actor start-up is not counted. The script also prints what the driver was
busy with (blend, encode, window bookkeeping), how late each actor got its first
window, and how long the last results took to drain, to say where any overhead comes
from. With --profile the first measured run is run under cProfile and the top driver
functions are printed.

    .venv/bin/python scripts/bench_scale.py [--actors 64] [--windows 512] [--seconds 1.0] [--size 32]

Starting 64 actors takes 1.5-2.5 minutes on 2 cores (each imports torch); it is not
counted. To see whether the overhead is a fixed cost per job or per window, run a longer
job too, e.g. `--seconds 4 --windows 512 --small-actors 0 --no-e2 --capacity-size 0`.
`--encoders 1,4` runs the 64-actor job and the driver capacity probe once per value of
`encode.parallel`, side by side. `--paths driver,segments` runs the 64-actor job once per
`encode.path`, side by side (on the segment path, Ray tasks blend, measure and encode:
docs/benchmarks.md, "Segments").
"""

from __future__ import annotations

from _bench import Periodic, cpu_model

import argparse
import logging
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FARM_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache", "farm"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def job(windows: int, length: int, overlap: int, size: int, seconds: float, out: str, blend: str = "linear",
        encoders: int = 1, path: str = "driver"):
    from farm.spec import parse_spec

    frames = length + (windows - 1) * (length - overlap)
    return parse_spec(
        {
            "model": {"pipeline": "animatediff", "faults": {"simulate_seconds": seconds}},
            "prompt": "simulation",
            "frames": frames,
            "width": size,
            "height": size,
            "steps": 1,
            "window": {"length": length, "overlap": overlap, "blend": blend, "reconcile": "crossfade"},
            "encode": {"parallel": encoders, "path": path},
            "output": out,
        }
    )


def run(spec, actors: int, profile: bool = False) -> dict:
    from scheduler.driver import render

    if not profile:
        return render(spec, workers=actors, threads=1, store=False)
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    try:
        report = render(spec, workers=actors, threads=1, store=False)
    finally:
        prof.disable()
    print("\n--- cProfile of the driver process (whole render() call, cumulative, top 25) ---")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    print("--- tottime, top 20 ---")
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    return report


def analyse(report: dict, actors: int, seconds: float) -> dict:
    """Where the render stage's time went, from the report alone.

    On the critical actor (the one whose last window ends last) the render stage splits
    exactly into: its first window's start latency + the simulated windows' own cost
    beyond S (frame generation, sleep wake-up) + the gaps between its windows (Ray's
    per-call latency with the next call already queued) + the drain. The drain splits in
    turn into collection (until the driver has taken the last result back) and the driver
    tail (blending and encoding the last results: the final wave of windows all arrive at
    once, and one encoder works through them)."""
    st = report["stages"]
    wins = report["windows"]
    n = len(wins)
    ideal = math.ceil(n / actors) * seconds
    render_wall = st["render"]
    per_actor: dict[str, list[dict]] = {}
    for w in wins:
        per_actor.setdefault(w["actor"], []).append(w)
    firsts = [min(x["started_at"] for x in ws) for ws in per_actor.values()]
    crit = max(per_actor.values(), key=lambda ws: max(x["started_at"] + x["seconds"] for x in ws))
    crit.sort(key=lambda x: x["started_at"])
    last_done = crit[-1]["started_at"] + crit[-1]["seconds"]
    gaps = sum(b["started_at"] - (a["started_at"] + a["seconds"]) for a, b in zip(crit, crit[1:]))
    excess = sum(x["seconds"] for x in crit) - len(crit) * seconds
    busy = sum(x["seconds"] for x in wins)
    firsts_cost, later_cost = [], []  # each actor's first window vs the rest, beyond S
    for ws in per_actor.values():
        ws = sorted(ws, key=lambda x: x["started_at"])
        firsts_cost.append(ws[0]["seconds"] - seconds)
        later_cost += [x["seconds"] - seconds for x in ws[1:]]
    return {
        "windows": n,
        "ideal": ideal,
        "render": render_wall,
        "overhead": (render_wall - ideal) / ideal,
        "startup": st["startup"],
        "blend": st["blend"],
        "encode": st["encode"],
        "store": st.get("store", 0.0),
        "first_start": min(firsts),
        "first_start_last_actor": max(firsts),
        "crit_windows": len(crit),
        "crit_first": crit[0]["started_at"],
        "crit_excess": excess,
        "crit_warm": crit[0]["seconds"] - seconds,
        "first_cost": sum(firsts_cost) / len(firsts_cost),
        "later_cost": sum(later_cost) / len(later_cost) if later_cost else 0.0,
        "crit_gaps": gaps,
        "drain": render_wall - last_done,
        "collect": max(0.0, max(w["finished_at"] for w in wins) - last_done),
        "tail": render_wall - max(last_done, max(w["finished_at"] for w in wins)),
        "excess_per_window": busy / n - seconds,
        "busy_frac": busy / (len(per_actor) * render_wall),
        "actors_used": len(per_actor),
        "devices": sorted({w["device"] for w in wins}),
        "frames": report["frames"],
    }


class CpuSampler(Periodic):
    """Samples, every `period` s: the machine's busy CPU time (/proc/stat, every process,
    other users' included), the CPU time of this driver's whole process tree (the driver,
    ffmpeg, and the Ray head and actors it started; summed from per-process increments
    between samples, so a process that exits keeps what it used except its last period),
    the driver process's own CPU time and its ffmpeg children's. Afterwards
    `between(t0, t1)` says how loaded the machine was, and by whom."""

    def __init__(self, period: float = 0.25):
        super().__init__(period)
        self.samples: list[tuple[float, ...]] = []
        self._ffmpeg: dict[int, float] = {}
        self._hz = os.sysconf("SC_CLK_TCK")
        self._last: dict[int, float] = {}
        self._tree = 0.0
        self._sample()  # the baseline of the per-process increments
        self._tree = 0.0

    def _sample(self) -> tuple[float, ...]:
        hz, me = self._hz, os.getpid()
        with open("/proc/stat") as fh:
            cpu = [int(x) for x in fh.readline().split()[1:]]
        idle, total = cpu[3] + cpu[4], sum(cpu[:8])
        procs: dict[int, tuple[int, str, float]] = {}  # pid -> (ppid, comm, its own utime + stime)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    st = fh.read()
            except OSError:
                continue
            comm, rest = st[st.index("(") + 1 : st.rindex(")")], st[st.rindex(")") + 2 :].split()
            procs[int(pid)] = (int(rest[1]), comm, (int(rest[11]) + int(rest[12])) / hz)
        kids: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            kids.setdefault(ppid, []).append(pid)
        now, todo = {}, list(kids.get(me, []))
        while todo:
            pid = todo.pop()
            _, comm, c = procs[pid]
            now[pid] = c
            todo += kids.get(pid, [])
            if procs[pid][0] == me and comm.startswith("ffmpeg"):
                self._ffmpeg[pid] = c
        t = os.times()
        own = t.user + t.system
        now[me] = own
        # Accumulate per-process increments, so a process that exits (an actor that is
        # stopped) keeps what it used; only its last `period` is lost.
        self._tree += sum(c - self._last.get(pid, 0.0) for pid, c in now.items() if c >= self._last.get(pid, 0.0))
        self._last = now
        return (time.perf_counter(), (total - idle) / hz, total / hz, own, sum(self._ffmpeg.values()), self._tree)

    def tick(self) -> None:
        self.samples.append(self._sample())

    def between(self, t0: float, t1: float) -> dict:
        """In [t0, t1]: the machine's busy fraction (of all cores) and, in cores, the CPU used
        by this job's process tree, by everything else, by the driver and by ffmpeg."""
        a = min(self.samples, key=lambda x: abs(x[0] - t0))
        b = min(self.samples, key=lambda x: abs(x[0] - t1))
        span = max(b[0] - a[0], 1e-9)
        busy = (b[1] - a[1]) / max(b[2] - a[2], 1e-9)
        cores = os.cpu_count() or 1
        ours = (b[5] - a[5]) / span
        return {"machine_busy": busy, "ours_cpu": ours, "others_cpu": max(0.0, busy * cores - ours),
                "driver_cpu": (b[3] - a[3]) / span, "ffmpeg_cpu": (b[4] - a[4]) / span, "span": span}


def driver_capacity(size: int, windows: int, length: int, overlap: int, encoders: int = 1) -> dict:
    """The driver's own per-window work at size x size, measured in this process without
    Ray on a moving photograph (a pan and zoom): blend + flicker meter alone, H.264 encode
    alone (frames handed to ffmpeg and the file closed), and both as the driver runs them
    (one after the other, per window). Returned as windows per second."""
    from farm.blend import Reconciler
    from farm.encode import open_writer
    from farm.metrics import FlickerMeter
    from farm.plan import plan_windows
    from tests.clips import pan_zoom

    tmp = tempfile.mkdtemp(prefix="bench-scale-cap-")
    spec = job(windows, length, overlap, size, 0.0, os.path.join(tmp, "cap.mp4"), encoders=encoders)
    enc = spec.encode
    plan = plan_windows(spec)
    clip = pan_zoom(spec.frames, size, dx=0.5, zoom=0.002)
    parts = [clip[w.start : w.end] for w in plan.windows]

    def blend() -> list:
        rec, meter, out = Reconciler(plan.windows, "linear"), FlickerMeter(), []
        for w, frames in zip(plan.windows, parts):
            rec.add(w.index, frames)
            for frame in rec.ready():
                meter.add(frame)
                out.append(frame)
        return out

    t0 = time.perf_counter()
    blended = blend()
    t_blend = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open_writer(spec.output, size, size, spec.fps, enc.crf, enc.preset, enc.parallel, enc.segment_frames) as out:
        for frame in blended:
            out.write(frame)
    t_encode = time.perf_counter() - t0
    rec, meter = Reconciler(plan.windows, "linear"), FlickerMeter()
    t0 = time.perf_counter()
    with open_writer(spec.output, size, size, spec.fps, enc.crf, enc.preset, enc.parallel, enc.segment_frames) as out:
        for w, frames in zip(plan.windows, parts):
            rec.add(w.index, frames)
            for frame in rec.ready():
                meter.add(frame)
                out.write(frame)
    t_both = time.perf_counter() - t0
    return {"blend": windows / t_blend, "encode": windows / t_encode, "both": windows / t_both}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", type=int, default=64, help="logical GPUs = pipeline actors")
    ap.add_argument("--windows", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=1.0, help="simulated seconds per window (S)")
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--size", type=int, default=32, help="frame width = height")
    ap.add_argument("--repeats", type=int, default=1, help="64-actor runs (each starts 64 actors: ~2 min on 2 cores)")
    ap.add_argument("--small-actors", type=int, default=8, help="side-by-side run with fewer actors (0: skip)")
    ap.add_argument("--profile", action="store_true", help="run one extra render under cProfile")
    ap.add_argument("--no-e2", action="store_true", help="skip the small simulated E(2) check")
    ap.add_argument("--capacity-size", type=int, default=512, help="frame size for the driver capacity probe (0: skip)")
    ap.add_argument("--encoders", default="1", help="encode.parallel values to compare, e.g. 1,4")
    ap.add_argument("--paths", default="driver", help="encode.path values to compare, e.g. driver,segments")
    args = ap.parse_args()
    paths = args.paths.split(",")
    encoders = [int(p) for p in args.encoders.split(",")]

    import ray

    cores = os.cpu_count() or 1
    # Logical resources: each actor asks for 1 GPU and 1 CPU; the driver's own work is not
    # a Ray task, so actors + a few spare CPUs is enough.
    ray.init(num_cpus=args.actors + 4, num_gpus=args.actors, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="bench-scale-")
    print(f"SIMULATION: {args.actors} logical GPUs on one machine ({cores} cores, {cpu_model()}); "
          f"each window sleeps {args.seconds:g} s in a real PipelineActor (SimulatedRenderer)", flush=True)

    def measured(actors: int, windows: int, label: str, encoders: int = 1, path: str = "driver") -> dict:
        spec = job(windows, args.length, args.overlap, args.size, args.seconds, os.path.join(tmp, "out.mp4"),
                   encoders=encoders, path=path)
        load = os.getloadavg()[0]
        with CpuSampler() as cpu:
            t_call = time.perf_counter()
            report = run(spec, actors)
        a = analyse(report, actors, args.seconds)
        t0 = t_call + report["stages"]["plan"] + a["startup"]
        a.update(cpu.between(t0, t0 + a["render"]), label=label, actors=actors, load=load,
                 cpu_ms_per_window=report["encode"]["driver_cpu_ms_per_window"])
        print(f"{label}: {windows} windows ({spec.frames} frames {args.size}x{args.size}) on {actors} actors: "
              f"startup {a['startup']:.1f} s (not counted), render {a['render']:.3f} s, ideal {a['ideal']:.3f} s, "
              f"overhead {100 * a['overhead']:+.2f} %; load average before {load:.1f}", flush=True)
        return a

    rows = []
    if args.small_actors:
        rows.append(measured(args.small_actors, args.small_actors * args.windows // args.actors,
                             f"{args.small_actors} actors"))
    for r in range(args.repeats):
        for path in paths:
            for p in encoders if path == "driver" else [1]:
                label = (f"{args.actors} actors" + (f", {p} enc" if p > 1 else "") + (", segments" if path != "driver"
                         else "") + (f" #{r + 1}" if r else ""))
                rows.append(measured(args.actors, args.windows, label, p, path))
    if args.profile:
        spec = job(args.windows, args.length, args.overlap, args.size, args.seconds, os.path.join(tmp, "prof.mp4"))
        a = analyse(run(spec, args.actors, profile=True), args.actors, args.seconds)
        print(f"profiled run (not in the table): render {a['render']:.3f} s, overhead {100 * a['overhead']:+.2f} %")

    e2 = None
    if not args.no_e2:
        # E(2) = T(1 actor) / (2 · T(2 actors)) on the same simulated job: scheduling only.
        small = job(16, args.length, args.overlap, args.size, 0.25, os.path.join(tmp, "e2.mp4"))
        t1 = min(run(small, 1)["stages"]["render"] for _ in range(2))
        t2 = min(run(small, 2)["stages"]["render"] for _ in range(2))
        e2 = (t1, t2, t1 / (2 * t2))
    ray.shutdown()
    caps = {p: driver_capacity(args.capacity_size, 24, args.length, args.overlap, p) for p in encoders
            } if args.capacity_size else {}

    if rows:
        print()
        print("=== SIMULATION (SimulatedRenderer sleeps S per window; not a real model, not real GPUs) ===")
        print(f"machine: {cores} cores, {cpu_model()}; Ray with {args.actors} logical GPUs; "
              f"devices reported: {sorted({d for a in rows for d in a['devices']})}")
        print(f"S = {args.seconds:g} s per window; windows of {args.length} (overlap {args.overlap}), "
              f"{args.size}x{args.size}, linear blend, H.264 (crf 18, medium); store off")
        cols = [a["label"] for a in rows]
        print(f"{'':<52}" + "".join(f"{c:>18}" for c in cols))

        def line(name: str, key, fmt: str = "{:>18.3f}") -> None:
            print(f"{name:<52}" + "".join(fmt.format(key(a)) for a in rows))

        line("windows (N)", lambda a: a["windows"], "{:>18d}")
        line("ideal = ceil(N / actors) x S (s)", lambda a: a["ideal"])
        line("render stage wall (s)", lambda a: a["render"])
        line("SCHEDULING OVERHEAD (render - ideal) / ideal", lambda a: 100 * a["overhead"], "{:>17.2f}%")
        line("  of which: scheduling (first start+gaps+collection)",
             lambda a: 100 * (a["crit_first"] + a["crit_gaps"] + a["collect"]) / a["ideal"], "{:>17.2f}%")
        line("  of which: driver tail (blend+encode last results)", lambda a: 100 * a["tail"] / a["ideal"],
             "{:>17.2f}%")
        line("  of which: simulated windows' own cost beyond S", lambda a: 100 * a["crit_excess"] / a["ideal"],
             "{:>17.2f}%")
        line("actor busy fraction", lambda a: a["busy_frac"])
        line("critical actor: first window start (s)", lambda a: a["crit_first"])
        line("critical actor: window cost beyond S, sum (s)", lambda a: a["crit_excess"])
        line("  of which its first window (s)", lambda a: a["crit_warm"])
        line("critical actor: gaps between its windows, sum (s)", lambda a: a["crit_gaps"])
        line("drain after its last window (s)", lambda a: a["drain"])
        line("  collecting the last results (s)", lambda a: a["collect"])
        line("  driver tail: blending + encoding them (s)", lambda a: a["tail"])
        line("all windows: mean cost beyond S (ms)", lambda a: 1000 * a["excess_per_window"], "{:>18.1f}")
        line("  each actor's first window: mean (ms)", lambda a: 1000 * a["first_cost"], "{:>18.1f}")
        line("  later windows: mean (ms)", lambda a: 1000 * a["later_cost"], "{:>18.1f}")
        line("last actor's first window start (s)", lambda a: a["first_start_last_actor"])
        line("machine CPU busy during render (all cores)", lambda a: a["machine_busy"])
        line("  CPU (cores) used by this job's processes", lambda a: a["ours_cpu"])
        line("  CPU (cores) used by other processes", lambda a: a["others_cpu"])
        line("driver process CPU (cores) during render", lambda a: a["driver_cpu"])
        line("ffmpeg CPU (cores) during render", lambda a: a["ffmpeg_cpu"])
        line("driver CPU per window, from the report (ms)", lambda a: a["cpu_ms_per_window"])
        line("driver busy: blend (s)", lambda a: a["blend"])
        line("driver busy: encode writes (s)", lambda a: a["encode"])
        line("driver busy: store bookkeeping, store off (s)", lambda a: a["store"])
        line("1-min load average before the run", lambda a: a["load"], "{:>18.1f}")
    for big in rows:
        if big["actors"] == args.actors:
            print(f"target: scheduling overhead <= 2 % at {big['label']}: "
                  f"{'MET' if big['overhead'] <= 0.02 else 'NOT MET'} ({100 * big['overhead']:.2f} %)")
    for p, cap in caps.items():
        n = args.capacity_size
        print(f"driver capacity at {n}x{n}, {p} encoder(s) (no Ray; windows of {args.length}/{args.overlap}): "
              f"blend+flicker alone {cap['blend']:.1f} windows/s, encode alone {cap['encode']:.1f} windows/s, both "
              f"as the driver runs them {cap['both']:.1f} windows/s -> one driver keeps up with about "
              f"{cap['both']:.1f} x T actors whose windows take T seconds")
    if e2:
        print(f"simulated E(2) = T1 / (2 T2), 16 windows x 0.25 s: T1 {e2[0]:.3f} s, T2 {e2[1]:.3f} s, "
              f"E(2) = {e2[2]:.3f}  (real-model E(2): scripts/bench_overhead.py)")


if __name__ == "__main__":
    main()
