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
ui        The same 64 actors and 8 jobs with the manager's web UI on, run --rounds times
          without and with --pages open pages (each a thread doing what the page does:
          GET /api/state every second and every thumbnail it has not fetched yet),
          alternating: the manager's decisions per second and time per decision, and the
          windows per second, side by side. Then the latency from a driver publishing a
          thumbnail (the moment it finished that frame) to the thumbnail being in
          /api/state, seen by a poller every 20 ms: median and p95 (the page's own poll
          adds up to 1 s on top).

    .venv/bin/python scripts/bench_manager.py [--parts warm,priority,manager,ui] [--rounds 3]
        [--seconds 1.0] [--actors 64] [--jobs 8] [--pages 5]

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


def fill_pool(folder: Path, handle, actors: int, seconds: float) -> None:
    """Start the pool's actors and warm each with one window."""
    fill = spec(folder, "fill", windows=actors, seconds=seconds, path="driver")
    render(fill, store=False)  # starts the pool's actors
    while True:  # every actor up (on 2 cores they come up over a minute or two) ...
        snap = ray.get(handle.snapshot.remote())
        if len(snap["actors"]) == actors and not snap["starting"]:
            break
        time.sleep(1)
    render(fill, store=False)  # ... and warm: one window each


def run_jobs(folder: Path, handle, actors: int, jobs: int, seconds: float, tag: str = "") -> dict:
    """The 8 jobs at once on the warm pool; what the manager and the actors did."""
    before = ray.get(handle.snapshot.remote())["manager"]
    windows = 4 * actors // jobs  # each job: 4 rounds on its share of the pool
    threads, reports, t0 = [], {}, time.time()
    for j in range(jobs):
        # the driver path: the 2 cores left beside 64 actors would make segment tasks the bottleneck
        job = spec(folder, f"job{j}{tag}", windows=windows, seed=j, seconds=seconds, path="driver")
        t = threading.Thread(target=lambda j=j, job=job: reports.setdefault(j, render(
            job, store=False, priority=10 * j, workers=actors // jobs, job_id=f"job{j}{tag}")), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    wall = time.time() - t0
    after = ray.get(handle.snapshot.remote())["manager"]
    decisions = after["decisions"] - before["decisions"]
    spent = after["decision_ms"] * after["decisions"] - before["decision_ms"] * before["decisions"]
    return {"reports": reports, "wall": wall, "windows": jobs * windows, "decisions": decisions,
            "decision_ms": spent / max(1, decisions)}


def bench_manager(folder: Path, actors: int, jobs: int, seconds: float) -> None:
    handle, _ = start_manager(ManagerConfig(max_actors=actors, threads=1, resources=POOL, lease_timeout_s=60))
    try:
        fill_pool(folder, handle, actors, seconds)
        run = run_jobs(folder, handle, actors, jobs, seconds)
    finally:
        stop_manager()
    for j, report in sorted(run["reports"].items()):
        farm, stages = report["farm"], report["stages"]
        print(f"  job{j}: queued {farm['queued_seconds']:.2f} s, startup {stages['startup']:.2f} s, "
              f"render {stages['render']:.2f} s, {farm['lent']} actors lent ({farm['warm']} warm)")
    wall, ms, decisions, total_windows = run["wall"], run["decision_ms"], run["decisions"], run["windows"]
    print(f"\n[manager] {actors} simulated actors, {jobs} jobs (priorities 0..{10 * (jobs - 1)}), "
          f"{total_windows} windows of {seconds:g} s:")
    ideal = 4 * seconds
    print(f"  wall {wall:.1f} s (ideal {ideal:.0f} s: 4 windows per actor); the actors produced "
          f"{total_windows / wall:.1f} windows/s (ideal {actors / seconds:.0f})")
    print(f"  the manager made {decisions / wall:.1f} decisions/s, {ms:.3f} ms each inside plan(): "
          f"capacity {1000 / ms:.0f} decisions/s, {100 * decisions * ms / 1000 / wall:.2f} % busy")


class Page(threading.Thread):
    """What one open page does: the state every `every` s, and each new thumbnail."""

    def __init__(self, url: str, every: float = 1.0):
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.stop, self.requests, self.seen = threading.Event(), 0, set()

    def run(self):
        import json
        import urllib.error
        import urllib.request

        while not self.stop.is_set():
            state = json.loads(urllib.request.urlopen(self.url + "api/state", timeout=10).read())
            self.requests += 1
            for job in state["jobs"]:
                for frame in job.get("previews", []):
                    if (job["id"], frame) not in self.seen:
                        self.seen.add((job["id"], frame))
                        self.requests += 1
                        try:
                            urllib.request.urlopen(f"{self.url}api/preview/{job['id']}/{frame}.jpg", timeout=10).read()
                        except urllib.error.HTTPError:  # gone meanwhile (its job ended): a page shows no image
                            pass
            self.stop.wait(self.every)


def bench_ui(folder: Path, actors: int, jobs: int, seconds: float, pages: int, rounds: int) -> None:
    import json
    import urllib.request

    import scheduler.lease as lease

    handle, _ = start_manager(ManagerConfig(max_actors=actors, threads=1, resources=POOL, lease_timeout_s=60))
    rows = []
    try:
        url = ray.get(handle.start_ui.remote("127.0.0.1", 0))
        fill_pool(folder, handle, actors, seconds)
        for r in range(rounds):
            for open_pages in (0, pages):
                browsers = [Page(url) for _ in range(open_pages)]
                for b in browsers:
                    b.start()
                run = run_jobs(folder, handle, actors, jobs, seconds, tag=f"-{r}-{open_pages}")
                for b in browsers:
                    b.stop.set()
                rows.append((open_pages, run, sum(b.requests for b in browsers)))
                print(f"  round {r}, {open_pages} pages: wall {run['wall']:.1f} s, "
                      f"{run['windows'] / run['wall']:.1f} windows/s, {run['decisions'] / run['wall']:.1f} "
                      f"decisions/s, {run['decision_ms']:.3f} ms each", flush=True)
        # thumbnail latency: published by the driver → in /api/state
        sent, seen = {}, {}
        make = lease.Previews.__init__

        def timed(self, publish, *args, **kwargs):
            def record(frame, jpeg):
                sent[frame] = time.time()
                return publish(frame, jpeg)
            make(self, record, *args, **kwargs)

        lease.Previews.__init__ = timed
        lease.PREVIEW_EVERY_S = 0.5
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                state = json.loads(urllib.request.urlopen(url + "api/state", timeout=10).read())
                for job in state["jobs"]:
                    for frame in job.get("previews", []):
                        seen.setdefault(frame, time.time())
                time.sleep(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        render(spec(folder, "latency", windows=40, seconds=0.25, path="driver"), store=False, job_id="latency",
               workers=1)
        stop.set()
        poller.join()
        lease.Previews.__init__ = make
    finally:
        stop_manager()
    print(f"\n[ui] {actors} simulated actors, {jobs} jobs of {4 * actors // jobs} windows of {seconds:g} s; "
          f"{pages} pages polling every second (median of {rounds} rounds each):")
    for n in (0, pages):
        runs = [run for p, run, _ in rows if p == n]
        requests = sum(q for p, _, q in rows if p == n)
        print(f"  {n} pages: {statistics.median(r['windows'] / r['wall'] for r in runs):.1f} windows/s, "
              f"{statistics.median(r['decisions'] / r['wall'] for r in runs):.1f} decisions/s, "
              f"{statistics.median(r['decision_ms'] for r in runs):.3f} ms per decision"
              + (f"; {requests} page requests served" if n else ""))
    lags = sorted(seen[f] - sent[f] for f in sent if f in seen)
    if lags:
        p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))]
        print(f"  thumbnail published → in /api/state: median {1000 * statistics.median(lags):.1f} ms, "
              f"p95 {1000 * p95:.1f} ms over {len(lags)} thumbnails ({len(sent) - len(lags)} replaced before seen)")


def _all(values) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="warm,priority,manager")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--actors", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--pages", type=int, default=5)
    args = ap.parse_args()
    parts = args.parts.split(",")
    cpus = max(4, args.actors + 2) if {"manager", "ui"} & set(parts) else 4
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
        if "ui" in parts:
            bench_ui(folder, args.actors, args.jobs, args.seconds, args.pages, args.rounds)


if __name__ == "__main__":
    main()
