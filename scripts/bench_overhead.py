#!/usr/bin/env python
"""Benchmark (not a test): the farm's overhead over a plain diffusers loop, and E(2).

Measured side by side in one run, on the same job:
- plain: one process, one pipeline called window by window, the same per-frame noise,
  blend (farm.blend.Reconciler) and encoder (farm.encode.VideoWriter);
- farm/1: `scheduler.driver.render` with 1 actor on an already-running Ray;
- farm/1t1 and farm/2t1: 1 and 2 actors with one torch thread each, for
  E(2) = T(1 worker) / (2 · T(2 workers)).

Model loading is excluded from both sides (the plain loop loads before its clock starts;
the farm's time is its total minus the `startup` stage, i.e. actor start and load).
After one warm-up run of each side, every configuration runs --repeats times,
interleaved; the minimum is reported.

    .venv/bin/python scripts/bench_overhead.py --frames 124 --repeats 3
"""

from __future__ import annotations

from _bench import cpu_model

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def job(frames: int, out: str):
    from farm.spec import parse_spec

    return parse_spec(
        {
            "model": {"pipeline": "animatediff"},
            "prompt": "a red fox running through snow",
            "negative_prompt": "blurry",
            "frames": frames,
            "width": 64,
            "height": 64,
            "steps": 4,
            "window": {"length": 16, "overlap": 4},
            "output": out,
        }
    )


def plain_loop(spec, threads: int, renderer=None) -> tuple[float, object]:
    import torch

    from farm.blend import Reconciler
    from farm.encode import VideoWriter
    from farm.plan import plan_windows
    from farm.render import WindowTask, make_renderer

    torch.set_num_threads(threads)
    renderer = renderer or make_renderer(spec)
    t0 = time.perf_counter()
    plan = plan_windows(spec)
    rec = Reconciler(plan.windows, spec.window.blend)
    with VideoWriter(spec.output, spec.width, spec.height, spec.fps, spec.encode.crf) as out:
        for w in plan.windows:
            frames, _ = renderer.render(WindowTask.from_spec(spec, w))
            rec.add(w.index, frames)
            for frame in rec.ready():
                out.write(frame)
    return time.perf_counter() - t0, renderer


def farm_run(spec, workers: int, threads: int) -> float:
    from scheduler.driver import render

    report = render(spec, workers=workers, threads=threads, store=False)  # render every window, every run
    return report["stages"]["total"] - report["stages"]["startup"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=124)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import logging

    import ray

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="bench-overhead-")
    spec = job(args.frames, os.path.join(tmp, "out.mp4"))
    times: dict[str, list[float]] = {"plain": [], "farm/1": [], "plain/t1": [], "farm/1t1": [], "farm/2t1": []}
    # Warm-up, not recorded: first-call costs (oneDNN kernels, worker imports) on both sides.
    _, renderer = plain_loop(spec, threads=cpus)
    farm_run(spec, 1, cpus)
    for r in range(args.repeats):
        t, renderer = plain_loop(spec, threads=cpus, renderer=renderer)
        times["plain"].append(t)
        times["farm/1"].append(farm_run(spec, 1, cpus))
        t, renderer = plain_loop(spec, threads=1, renderer=renderer)
        times["plain/t1"].append(t)
        times["farm/1t1"].append(farm_run(spec, 1, 1))
        times["farm/2t1"].append(farm_run(spec, 2, 1))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    ray.shutdown()

    best = {k: min(v) for k, v in times.items()}
    windows = len(__import__("farm.plan", fromlist=["plan_windows"]).plan_windows(spec).windows)
    print()
    print(f"machine: {cpus} cores, {cpu_model()}")
    print(f"job: {args.frames} frames, {windows} windows of 16 (overlap 4), 64x64, 4 steps; min of {args.repeats}")
    for k, v in best.items():
        print(f"  {k:<9} {v:7.2f} s")
    print(f"overhead farm/plain ({cpus} threads, 1 actor): {best['farm/1'] / best['plain']:.3f}x")
    print(f"overhead farm/plain (1 thread, 1 actor):       {best['farm/1t1'] / best['plain/t1']:.3f}x")
    print(f"E(2) = T1 / (2 T2), 1 thread per actor:        {best['farm/1t1'] / (2 * best['farm/2t1']):.3f}")


if __name__ == "__main__":
    main()
