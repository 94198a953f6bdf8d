#!/usr/bin/env python
"""Benchmark (not a test): do render, interpolation and encoding overlap?

One job with RIFE interpolation (factor 2, scene detection off) is timed end to end, and
each of its three stages is timed ALONE on the same input, side by side in the same run:

- total: `scheduler.driver.render(job with interpolate)`; its wall is the report's
  `total − startup − plan` (actor start and model load excluded), i.e. render + the
  interpolation and encoding of the tail + closing the file + the report;
- render alone: the same job without `interpolate`, `report["stages"]["render"]` (the
  pipeline actors' windows; blending and the 1× encode run inside that loop as in any job);
- interpolate alone: the rendered video's frames (decoded into memory first) pushed
  through `scheduler.rife_stage.InterpolationStage` on already-started RIFE actors, the same
  pool size and chunk the job uses; timed from the first push to the last output frame;
- encode alone: `farm.encode.VideoWriter` (same crf and preset) over those interpolated
  frames held in memory, including closing the file.

Why not the report's own stages: `blend` and `encode` there are the driver's busy time
(the encode figure is only the time to hand frames to the ffmpeg pipe, not ffmpeg's own
work), and `interpolate.seconds` is the RIFE actors' busy time while they compete with the
pipeline actor for the same cores, so none of them is the stage's cost alone.

    ratio = wall(total) / max(render alone, interpolate alone, encode alone)   (target ≤ 1.2)

1.0 means the two later stages hide completely behind the slowest; a serial pipeline would
give (render + interpolate + encode) / max, printed alongside. Each measurement is the
minimum of --repeats interleaved runs. Even perfect streaming has a tail: the last
window's frames can only be interpolated and encoded once it is back, so with balanced
stages the ratio cannot go below about 1 + 1/windows (1.05 for the default 20 windows,
1.1 for 124 frames / 10 windows).

Two renderers, side by side:
- `tiny`: the real tiny AnimateDiff model on a CPU actor (1 torch thread). On a 2-core
  machine it competes with the RIFE actor, the driver and ffmpeg for the same cores.
- `sim`: the fixed-cost SIMULATION renderer (`model.faults.simulate_seconds`, sleeps S
  per window), which leaves the cores free as a GPU actor does; S is chosen so that render
  alone takes about as long as interpolation alone, the case where overlap matters most.

The script also prints the CPU-seconds used, by this job's process tree and by the whole
machine (other users included), so CPU contention can be told apart from serialisation.

    .venv/bin/python scripts/bench_pipeline.py [--frames 244] [--size 64] [--steps 2] [--sim-seconds 0.3]
"""

from __future__ import annotations

from _bench import cpu_model

import argparse
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FARM_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache", "farm"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_scale import CpuSampler  # noqa: E402  (samples /proc/stat in a thread)


def job(args, out: str, interpolate: bool, sim: float | None = None):
    from farm.spec import parse_spec

    model = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny"}
    if sim is not None:
        model["faults"] = {"simulate_seconds": sim}
    data = {
        "model": model,
        "prompt": "a red fox running through snow",
        "negative_prompt": "blurry",
        "frames": args.frames,
        "fps": 8,
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "window": {"length": 16, "overlap": 4, "blend": "linear", "reconcile": "crossfade"},
        "output": out,
    }
    if interpolate:
        data["interpolate"] = {"factor": 2, "workers": args.rife_workers, "scene_threshold": 0, "chunk": args.chunk}
    return parse_spec(data)


def cpu_used(cpu: CpuSampler, t0: float, t1: float) -> tuple[float, float]:
    """(CPU-seconds used by this job's processes, by the whole machine) in [t0, t1]."""
    u = cpu.between(t0, t1)
    return u["ours_cpu"] * u["span"], u["machine_busy"] * u["span"] * (os.cpu_count() or 1)


def interpolate_alone(frames, ip, wbytes: bytes, fps: float) -> tuple[float, tuple, list]:
    from farm.interpolate import retiming
    from scheduler.cluster import Session, start_rife_actors, stop_actors
    from scheduler.rife_stage import InterpolationStage, rife_pool

    pool, infos = start_rife_actors(ip, wbytes, Session(False, 0, os.cpu_count() or 1))
    try:
        r = retiming(len(frames), fps, factor=ip.factor)
        stage = InterpolationStage(rife_pool(pool, infos, r, ip.chunk, retries=0), r, ip.chunk, ip.scene_threshold,
                                   ip.cuts, backend=ip.backend)
        out = []
        with CpuSampler() as cpu:
            t0 = time.perf_counter()
            for f in frames:
                stage.push(f)
                out.extend(stage.ready())
            out.extend(stage.finish())
            t1 = time.perf_counter()
        return t1 - t0, cpu_used(cpu, t0, t1), out
    finally:
        stop_actors(pool)


def encode_alone(frames, path: str, fps: float, crf: int, preset: str) -> tuple[float, tuple]:
    from farm.encode import VideoWriter

    h, w = frames[0].shape[:2]
    with CpuSampler(period=0.05) as cpu:
        t0 = time.perf_counter()
        with VideoWriter(path, w, h, fps, crf, preset) as out:
            for f in frames:
                out.write(f)
        t1 = time.perf_counter()
        time.sleep(0.06)  # one more sample after the end
    return t1 - t0, cpu_used(cpu, t0, t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=244)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="pipeline actors")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per pipeline actor")
    ap.add_argument("--rife-workers", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--sim-seconds", type=float, default=0.3, help="S of the simulated renderer (0: skip it)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import ray

    from farm.video import read_frames
    from farm.rife import weights
    from scheduler.driver import render

    wbytes = weights.pull().read_bytes()  # `farm models pull rife`: idempotent, verifies the sha256
    cores = os.cpu_count() or 1
    ray.init(num_cpus=max(cores, args.workers * args.threads + args.rife_workers), include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="bench-pipeline-")
    configs = {"tiny": None} | ({f"sim {args.sim_seconds:g}s": args.sim_seconds} if args.sim_seconds else {})
    print(f"machine: {cores} cores, {cpu_model()}", flush=True)
    print(f"job: {args.frames} frames {args.size}x{args.size}, {args.workers} pipeline actor(s) x {args.threads} "
          f"thread(s) (tiny AnimateDiff, {args.steps} steps, or the SIMULATION); RIFE 2x, {args.rife_workers} "
          f"actor(s) x 1 thread, chunk {args.chunk}, scene detection off", flush=True)

    def farm(spec, stage_end: str) -> tuple[dict, tuple]:
        """(report, (our, the machine's) CPU-seconds from the end of startup to the end of
        `stage_end`: `render` = the render loop, `total` = the whole job after startup)."""
        with CpuSampler() as cpu:
            t_call = time.perf_counter()
            rep = render(spec, workers=args.workers, threads=args.threads, store=False)
        st = rep["stages"]
        t0 = t_call + st["plan"] + st["startup"]
        t1 = t0 + st["render"] if stage_end == "render" else t_call + st["total"]
        return rep, cpu_used(cpu, t0, t1)

    keys = ("total", "render", "interpolate", "encode")
    times = {c: {k: [] for k in keys} for c in configs}
    cpus = {c: {k: [] for k in keys} for c in configs}
    details: dict[str, list[dict]] = {c: [] for c in configs}
    farm(job(args, os.path.join(tmp, "warm.mp4"), False), "render")  # warm-up (first-call costs), not recorded
    for r in range(args.repeats):
        for name, sim in configs.items():
            plain = job(args, os.path.join(tmp, "plain.mp4"), interpolate=False, sim=sim)
            interp = job(args, os.path.join(tmp, "interp.mp4"), interpolate=True, sim=sim)
            t, c = times[name], cpus[name]
            load = os.getloadavg()[0]
            rep, used = farm(interp, "total")
            st = rep["stages"]
            t["total"].append(st["total"] - st["startup"] - st["plan"])
            c["total"].append(used)
            details[name].append(rep)
            rep_plain, used = farm(plain, "render")
            t["render"].append(rep_plain["stages"]["render"])
            c["render"].append(used)
            frames = list(read_frames(plain.output))
            t_i, used, out = interpolate_alone(frames, interp.interpolate, wbytes, plain.fps)
            t["interpolate"].append(t_i)
            c["interpolate"].append(used)
            t_e, used = encode_alone(out, os.path.join(tmp, "enc.mp4"), interp.output_fps, interp.encode.crf,
                                     interp.encode.preset)
            t["encode"].append(t_e)
            c["encode"].append(used)
            print(f"repeat {r + 1} {name}: " + ", ".join(f"{k} {v[-1]:.2f} s (ours {c[k][-1][0]:.1f} CPU-s, "
                                                         f"machine {c[k][-1][1]:.1f})" for k, v in t.items())
                  + f"; {len(out)} frames out; load average before {load:.1f}", flush=True)
    ray.shutdown()

    print()
    print(f"machine: {cores} cores, {cpu_model()}; min of {args.repeats} interleaved repeats; seconds, and in "
          f"brackets CPU-s used by this job's processes / by the whole machine")
    cols = list(configs)
    print(f"{'measurement':<48}" + "".join(f"{c:>24}" for c in cols))
    names = {"total": "total (pipelined job, excl. startup)",
             "render": "render alone (job without interpolation)",
             "interpolate": "interpolate alone (RIFE pool)",
             "encode": "encode alone (H.264, 2x frames)"}
    summary = {}
    for name in cols:
        t, c = times[name], cpus[name]
        best = {k: min(v) for k, v in t.items()}
        used = {k: c[k][t[k].index(best[k])] for k in keys}
        slowest = max(("render", "interpolate", "encode"), key=lambda k: best[k])
        rep = min(details[name], key=lambda d: d["stages"]["total"] - d["stages"]["startup"])
        alone = used["render"][0] + used["interpolate"][0] + used["encode"][0]
        share = used["total"][0] / best["total"]  # cores this job got while pipelined
        summary[name] = {
            "best": best, "used": used, "slowest": slowest,
            "ratio": best["total"] / best[slowest],
            "serial": (best["render"] + best["interpolate"] + best["encode"]) / best[slowest],
            "share": share,
            "bound": max(best[slowest], alone / cores) / best[slowest],
            "first_chunk": rep["interpolate"]["first_chunk_at"],
            "last_window": max(w["finished_at"] for w in rep["windows"]),
            "rife_busy": rep["interpolate"]["seconds"],
            "loop": rep["stages"]["render"],
        }
    for k, label in names.items():
        print(f"{label:<48}" + "".join(
            f"{summary[n]['best'][k]:>9.2f} ({summary[n]['used'][k][0]:>4.1f} / {summary[n]['used'][k][1]:>4.1f})"
            for n in cols))

    def line(label: str, fn, fmt: str = "{:>24.3f}") -> None:
        print(f"{label:<48}" + "".join(fmt.format(fn(summary[n])) for n in cols))

    line("slowest stage alone", lambda x: x["slowest"], "{:>24}")
    line("WALL(TOTAL) / MAX(STAGE ALONE)", lambda x: x["ratio"])
    line("no overlap: (render + interp + encode) / max", lambda x: x["serial"])
    line(f"{cores}-core bound: max(slowest, our CPU-s / {cores}) / max", lambda x: x["bound"])
    line("cores this job got while pipelined", lambda x: x["share"], "{:>24.2f}")
    line("pipelined: first RIFE chunk sent at (s)", lambda x: x["first_chunk"], "{:>24.2f}")
    line("pipelined: last window back at (s)", lambda x: x["last_window"], "{:>24.2f}")
    line("pipelined: render loop ended at (s)", lambda x: x["loop"], "{:>24.2f}")
    line("pipelined: RIFE actor busy (s)", lambda x: x["rife_busy"], "{:>24.2f}")
    for n in cols:
        print(f"target wall/max <= 1.2 ({n}): {'MET' if summary[n]['ratio'] <= 1.2 else 'NOT MET'} "
              f"({summary[n]['ratio']:.3f}x)")


if __name__ == "__main__":
    main()
