#!/usr/bin/env python
"""Benchmark (not a test): the farm's overhead over a plain diffusers loop, and E(2).

Measured side by side in one run, on the same job:
- plain: one process, one pipeline called window by window, the same per-frame noise,
  blend (farm.blend.Reconciler) and encoder (farm.encode.VideoWriter);
- farm: `scheduler.driver.render` on an already-running Ray (window store off, so every
  run renders every window).

On a CPU machine: farm/1 and plain with all cores; plain/t1, farm/1t1 and farm/2t1 with one
torch thread per pipeline, for E(2) = T(1 worker) / (2 · T(2 workers)).
On a CUDA machine: plain and farm/1 (one GPU actor), and farm/1 with `model.warmup: false`,
to show what the actor's warm-up window takes off the render. `--fullsize DIR` renders with
SD1.5-shaped random-weight models (scripts/_fullsize.py: real shapes, timing only).

Model loading is excluded from both sides (the plain loop loads before its clock starts;
the farm's time is its total minus the `startup` stage: actor start, load and warm-up).
After one unrecorded run of the plain loop (its first-call costs), every configuration runs
--repeats times, interleaved; the minimum is reported, and the median of the per-repeat
ratios beside it.

    .venv/bin/python scripts/bench_overhead.py --frames 124 --repeats 3
    python scripts/bench_overhead.py --fullsize /tmp/models --size 512 --steps 20 --frames 40 --repeats 2   # GPU
"""

from __future__ import annotations

from _bench import cpu_model

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def job(frames: int, out: str, size: int = 64, steps: int = 4, models: tuple | None = None, warmup: bool = True):
    from farm.spec import parse_spec

    model = {"pipeline": "animatediff", "warmup": warmup}
    if models:
        model |= {"base": str(models[0]), "motion_adapter": str(models[1])}
    return parse_spec(
        {
            "model": model,
            "prompt": "a red fox running through snow",
            "negative_prompt": "blurry",
            "frames": frames,
            "width": size,
            "height": size,
            "steps": steps,
            "window": {"length": 16, "overlap": 4, "reconcile": "crossfade"},  # windows dispatched one by one
            "output": out,
        }
    )


def plain_loop(spec, threads: int, renderer=None) -> tuple[float, object]:
    import torch

    from farm.blend import Reconciler
    from farm.encode import VideoWriter
    from farm.plan import plan_windows
    from farm.renderers import make_renderer
    from farm.tasks import WindowTask

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


def farm_run(spec, workers: int, threads: int, windows: list | None = None) -> float:
    """Seconds without startup; `windows` collects each run's per-window seconds."""
    from scheduler.driver import render

    report = render(spec, workers=workers, threads=threads, store=False)  # render every window, every run
    if windows is not None:
        windows.append([w["seconds"] for w in sorted(report["windows"], key=lambda w: w["started_at"])])
    return report["stages"]["total"] - report["stages"]["startup"]


def first_window_excess(runs: list[list[float]]) -> float:
    """How much longer each actor's first window took than its median window (mean over runs)."""
    return statistics.mean(r[0] / statistics.median(r[1:]) - 1 for r in runs if len(r) > 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=124)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=64, help="frame width = height")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--fullsize", metavar="DIR", help="SD1.5-shaped random-weight models, built (once) in DIR")
    args = ap.parse_args()

    import logging

    import ray
    import torch

    cpus = os.cpu_count() or 1
    gpu = torch.cuda.is_available()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    models = None
    if args.fullsize:
        from _fullsize import build

        models = build(args.fullsize)
    tmp = tempfile.mkdtemp(prefix="bench-overhead-")
    spec = job(args.frames, os.path.join(tmp, "out.mp4"), args.size, args.steps, models)
    cold = job(args.frames, os.path.join(tmp, "cold.mp4"), args.size, args.steps, models, warmup=False)
    if gpu:
        runs = {"plain": lambda r: plain_loop(spec, cpus, r),
                "farm/1": lambda r: (farm_run(spec, 1, 1, firsts["warm"]), r),
                "farm/1 no warm-up": lambda r: (farm_run(cold, 1, 1, firsts["cold"]), r)}
    else:
        runs = {"plain": lambda r: plain_loop(spec, cpus, r),
                "farm/1": lambda r: (farm_run(spec, 1, cpus), r),
                "plain/t1": lambda r: plain_loop(spec, 1, r),
                "farm/1t1": lambda r: (farm_run(spec, 1, 1, firsts["warm"]), r),
                "farm/2t1": lambda r: (farm_run(spec, 2, 1), r),
                "farm/1t1 no warm-up": lambda r: (farm_run(cold, 1, 1, firsts["cold"]), r)}
    firsts: dict[str, list] = {"warm": [], "cold": []}
    times: dict[str, list[float]] = {k: [] for k in runs}
    _, renderer = plain_loop(spec, threads=cpus)  # unrecorded: the plain process's first-call costs
    for r in range(args.repeats):
        for name, run in runs.items():
            t, renderer = run(renderer)
            times[name].append(t)
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    ray.shutdown()

    def ratio(a: str, b: str) -> str:
        pairs = statistics.median(x / y for x, y in zip(times[a], times[b]))
        return f"{min(times[a]) / min(times[b]):.3f}x (median of per-repeat ratios {pairs:.3f}x)"

    from farm.plan import plan_windows

    windows = len(plan_windows(spec).windows)
    print()
    print(f"machine: {cpus} cores, {cpu_model()}" + (f", {torch.cuda.get_device_name()}" if gpu else ", no GPU"))
    print(f"job: {args.frames} frames, {windows} windows of 16 (overlap 4), {args.size}x{args.size}, "
          f"{args.steps} steps, {'SD1.5-shaped random weights' if models else 'tiny model'}, "
          f"{'fp16 on CUDA' if gpu else 'fp32 on CPU'}; min of {args.repeats}")
    for k, v in times.items():
        print(f"  {k:<20} {min(v):7.2f} s")
    if gpu:
        print(f"overhead farm/plain (1 GPU actor):             {ratio('farm/1', 'plain')}")
        print(f"no warm-up: farm/plain                         {ratio('farm/1 no warm-up', 'plain')}")
    else:
        print(f"overhead farm/plain ({cpus} threads, 1 actor):       {ratio('farm/1', 'plain')}")
        print(f"overhead farm/plain (1 thread, 1 actor):       {ratio('farm/1t1', 'plain/t1')}")
        print(f"no warm-up: farm/plain (1 thread, 1 actor)     {ratio('farm/1t1 no warm-up', 'plain/t1')}")
        print(f"E(2) = T1 / (2 T2), 1 thread per actor:        "
              f"{min(times['farm/1t1']) / (2 * min(times['farm/2t1'])):.3f}")
    print(f"first window vs the actor's median window: {first_window_excess(firsts['warm']):+.1%} with warm-up, "
          f"{first_window_excess(firsts['cold']):+.1%} without")


if __name__ == "__main__":
    main()
