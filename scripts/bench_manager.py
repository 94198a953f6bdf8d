#!/usr/bin/env python
"""Benchmark (not a test): the shared farm's manager (scheduler/manager.py).

Three parts, each measured side by side in one run (`--parts` picks them):

warm      Time from submission to the first rendered window of the same job (the real tiny
          AnimateDiff, 64x64, one window), with the farm's pool COLD (a fresh manager: the
          actor process starts and loads the pipeline) and WARM (the same job again: the
          actor holds the pipeline), alternating; and with private actors (today's
          `farm render` without a manager) for reference. Reported as the cold/warm ratio.
          "Submission to first window" = the report's plan + startup stages + the first
          window's start in the render (the driver joined Ray before; each run is one
          `render()` call in this process).
priority  A low-priority job holds every actor (SIMULATED pipeline: `simulate_seconds` S per
          window); a high-priority job is submitted at a different point of a window each
          time. Its latency to its first window, in windows of the low job (target: at most
          one window time plus dispatch).
manager   64 SIMULATED actors (64 logical `farm_gpu`, one CPU each: `simulate_seconds` S per
          window) and 8 jobs of different priorities, all submitted at once: the windows per
          second the actors produce, against the scheduling decisions per second the
          manager made and the time it spent per decision (its own wall clock around
          `FarmQueue.plan`), i.e. how far the manager is from being the bottleneck.

    .venv/bin/python scripts/bench_manager.py [--parts warm,priority,manager] [--rounds 3]
        [--seconds 1.0] [--actors 64] [--jobs 8]

Starting 64 actors takes 1-2 minutes on 2 cores (each imports torch); that is not counted.
"""

from __future__ import annotations

from _bench import cpu_model

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FARM_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache", "farm"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ray  # noqa: E402

from farm.spec import JobSpec  # noqa: E402
from scheduler.driver import render  # noqa: E402
from scheduler.manager import ManagerConfig, start_manager, stop_manager  # noqa: E402

POOL = {"farm_gpu": 1}


def spec(folder: Path, name: str, *, windows: int = 1, seed: int = 1, seconds: float | None = None,
         path: str = "auto") -> JobSpec:
    model = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny", "warmup": False}
    if seconds is not None:
        model["faults"] = {"simulate_seconds": seconds}
    return JobSpec.model_validate({
        "model": model, "prompt": "a red fox running through snow", "frames": 16 + 12 * (windows - 1), "fps": 8,
        "width": 64, "height": 64, "steps": 2, "seed": seed,
        "window": {"length": 16, "overlap": 4, "blend": "linear", "reconcile": "crossfade"},
        "encode": {"path": path},
        "output": str(folder / f"{name}.mp4"),
    })


def to_first_window(report) -> float:
    started = min(w["started_at"] for w in report["windows"] if w.get("started_at") is not None)
    return report["stages"]["plan"] + report["stages"]["startup"] + started


def bench_warm(folder: Path, rounds: int) -> None:
    job = spec(folder, "warm")
    cold, warm, private = [], [], []
    for _ in range(rounds):
        private.append(to_first_window(render(job, store=False, farm=False, workers=1, threads=1)))
        start_manager(ManagerConfig(max_actors=1, threads=1, resources=POOL))
        try:
            cold.append(to_first_window(render(job, store=False)))
            warm.append(to_first_window(render(job, store=False)))
        finally:
            stop_manager()
    med = statistics.median
    print(f"\n[warm] submission to first rendered window, tiny AnimateDiff 64x64, {rounds} rounds, medians:")
    print(f"  private actors (no manager)   {med(private):7.3f} s   {_all(private)}")
    print(f"  farm, cold pool               {med(cold):7.3f} s   {_all(cold)}")
    print(f"  farm, warm pool (same job)    {med(warm):7.3f} s   {_all(warm)}")
    print(f"  cold / warm = {med(cold) / med(warm):.1f}x;  private / warm = {med(private) / med(warm):.1f}x")


def bench_priority(folder: Path, rounds: int, seconds: float) -> None:
    latencies = []
    config = ManagerConfig(max_actors=2, threads=1, resources=POOL)
    start_manager(config)
    try:
        render(spec(folder, "warmup", windows=2, seconds=0.0), store=False)  # the pool up and warm
        for r in range(rounds):
            low = threading.Thread(target=render, args=(spec(folder, f"low{r}", windows=24, seed=r, seconds=seconds),),
                                   kwargs={"store": False, "priority": 10}, daemon=True)
            low.start()
            # submit somewhere inside a window: 3 windows in, plus a different fraction each round
            time.sleep(3 * seconds + seconds * (r + 0.5) / rounds)
            t0 = time.time()
            report = render(spec(folder, f"high{r}", windows=2, seed=100 + r, seconds=seconds), store=False,
                            priority=90)
            farm = report["farm"]
            first = farm["registered_at"] + farm["first_window_seconds"] - t0
            latencies.append(first / seconds)
            low.join()
    finally:
        stop_manager()
    print(f"\n[priority] a high-priority job's first window while a low one holds both actors "
          f"(S = {seconds:g} s per window, {rounds} rounds):")
    print(f"  latency in windows of the low job: median {statistics.median(latencies):.2f}, "
          f"max {max(latencies):.2f}   {_all(latencies)}")


def bench_manager(folder: Path, actors: int, jobs: int, seconds: float) -> None:
    handle, _ = start_manager(ManagerConfig(max_actors=actors, threads=1, resources=POOL, lease_timeout_s=60))
    try:
        fill = spec(folder, "fill", windows=actors, seconds=seconds, path="driver")
        render(fill, store=False)  # starts the pool's actors
        while True:  # every actor up (on 2 cores they come up over a minute or two) ...
            snap = ray.get(handle.snapshot.remote())
            if len(snap["actors"]) == actors and not snap["starting"]:
                break
            time.sleep(1)
        render(fill, store=False)  # ... and warm: one window each
        before = ray.get(handle.snapshot.remote())["manager"]
        windows = 4 * actors // jobs  # each job: 4 rounds on its share of the pool
        threads, reports, t0 = [], {}, time.time()
        for j in range(jobs):
            # the driver path: the 2 cores left beside 64 actors would make segment tasks the bottleneck
            job = spec(folder, f"job{j}", windows=windows, seed=j, seconds=seconds, path="driver")
            t = threading.Thread(target=lambda j=j, job=job: reports.setdefault(j, render(
                job, store=False, priority=10 * j, workers=actors // jobs)), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        wall = time.time() - t0
        after = ray.get(handle.snapshot.remote())["manager"]
    finally:
        stop_manager()
    for j, report in sorted(reports.items()):
        farm, stages = report["farm"], report["stages"]
        print(f"  job{j}: queued {farm['queued_seconds']:.2f} s, startup {stages['startup']:.2f} s, "
              f"render {stages['render']:.2f} s, {farm['lent']} actors lent ({farm['warm']} warm)")
    decisions = after["decisions"] - before["decisions"]
    total_windows = jobs * windows
    ms = after["decision_ms"]
    print(f"\n[manager] {actors} simulated actors, {jobs} jobs (priorities 0..{10 * (jobs - 1)}), "
          f"{total_windows} windows of {seconds:g} s:")
    ideal = 4 * seconds
    print(f"  wall {wall:.1f} s (ideal {ideal:.0f} s: 4 windows per actor); the actors produced "
          f"{total_windows / wall:.1f} windows/s (ideal {actors / seconds:.0f})")
    print(f"  the manager made {decisions / wall:.1f} decisions/s, {ms:.3f} ms each inside plan(): "
          f"capacity {1000 / ms:.0f} decisions/s, {100 * decisions * ms / 1000 / wall:.2f} % busy")


def _all(values) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="warm,priority,manager")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--actors", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=8)
    args = ap.parse_args()
    parts = args.parts.split(",")
    cpus = max(4, args.actors + 2) if "manager" in parts else 4
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; Ray {ray.__version__}")
    ray.init(address="local", num_cpus=cpus, resources={"farm_gpu": max(2, args.actors)}, include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "warm" in parts:
            bench_warm(folder, args.rounds)
        if "priority" in parts:
            bench_priority(folder, args.rounds, args.seconds)
        if "manager" in parts:
            bench_manager(folder, args.actors, args.jobs, args.seconds)


if __name__ == "__main__":
    main()
