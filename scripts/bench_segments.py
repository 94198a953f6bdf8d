#!/usr/bin/env python
"""Benchmark (not a test): the segment path (`encode.path: segments`) beside the driver path.

1. Driver CPU per window. The same job, both paths, one after the other in one run
   (alternating, `--repeats` times): windows from real PipelineActors running the
   SIMULATED pipeline (`model.faults.simulate_seconds`, frames drawn per frame, reported
   as device `simulation`) at `--size`² (default 512), store off. The figure is the driver
   process's own CPU time over the render (`time.process_time()`: every thread of the
   process, Ray's own included) divided by the windows, from the job report
   (`encode.driver_cpu_ms_per_window`). Target: ≤ 2 ms per window on the segment path.
2. Capacity of the segment encoders, measured without the actors: segments of a moving
   photograph (a pan and zoom) at `--size`², each reconciled, metered and encoded by
   `farm.segments.run_segment` in Ray tasks, E at a time for each E in `--encoders`
   (never more than the cores). windows/s = windows encoded / wall; the GPUs one job can
   keep busy at T seconds a window = windows/s × T.

    .venv/bin/python scripts/bench_segments.py [--windows 48] [--size 512] [--repeats 2] [--encoders 1,2]
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


def job(windows: int, size: int, path: str, out: str, seconds: float = 0.0, segment_frames: int = 120):
    from farm.spec import parse_spec

    length, overlap = 16, 4
    return parse_spec({
        "model": {"pipeline": "animatediff", "faults": {"simulate_seconds": seconds}},
        "prompt": "simulation", "frames": length + (windows - 1) * (length - overlap), "width": size, "height": size,
        "steps": 1, "window": {"length": length, "overlap": overlap, "blend": "linear", "reconcile": "crossfade"},
        "encode": {"path": path, "segment_frames": segment_frames}, "output": out,
    })


def driver_cpu(args, tmp: str) -> list[dict]:
    from scheduler.driver import render

    rows = []
    for r in range(args.repeats):
        for path in ("driver", "segments"):
            spec = job(args.windows, args.size, path, os.path.join(tmp, f"{path}.mp4"), args.seconds)
            t0 = time.perf_counter()
            report = render(spec, workers=args.actors, threads=1, store=False)
            enc = report["encode"]
            rows.append({"path": path, "repeat": r, "wall": time.perf_counter() - t0,
                         "render": report["stages"]["render"], "cpu_ms": enc["driver_cpu_ms_per_window"],
                         "segments": enc.get("count", 0), "frames": report["output_frames"]})
            print(f"  {path:<9} #{r + 1}: driver CPU {enc['driver_cpu_ms_per_window']:7.2f} ms/window, "
                  f"render stage {report['stages']['render']:.2f} s", flush=True)
    return rows


class _Frames:
    """Ray's own floor: an actor that returns a window's frames as a second return, as
    `PipelineActor.render_apart` does, with nothing else."""

    def __init__(self, size: int):
        import numpy as np

        self.frames = np.zeros((16, size, size, 3), np.uint8)

    def render(self, i: int):
        return {"index": i}, self.frames.copy()


def _consume(*arrays) -> int:
    return len(arrays)


def ray_floor(args, n: int = 96) -> float:
    """The driver's CPU per window for the Ray calls alone: one actor call with two returns
    per window (the small one fetched), its frames' refs passed on to one task per 8
    windows, two actors, one window in flight each. In ms per window."""
    import ray

    actors = [ray.remote(_Frames).options(num_cpus=0).remote(args.size) for _ in range(args.actors)]
    consume = ray.remote(_consume).options(num_cpus=1)
    ray.get([a.render.options(num_returns=2).remote(0)[0] for a in actors])
    c0, refs, tasks = time.process_time(), [], []
    for i in range(n):
        meta, frames = actors[i % len(actors)].render.options(num_returns=2).remote(i)
        ray.get(meta)
        refs.append(frames)
        if len(refs) == 8:
            tasks.append(consume.remote(*refs))
            refs = []
    ray.get(tasks)
    ms = 1000 * (time.process_time() - c0) / n
    for a in actors:
        ray.kill(a)
    return ms


def idle_cpu() -> float:
    """The driver's CPU per second when it does nothing (Ray's own threads), in ms/s."""
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(3)
    return 1000 * (time.process_time() - c0) / (time.perf_counter() - t0)


def capacity(args, encoders: list[int]) -> dict[int, dict]:
    import numpy as np
    import ray

    from actors.segment import segment_task
    from farm.plan import split
    from farm.segments import Encoding, plan_segments
    from tests.clips import pan_zoom

    windows = split(16 + (args.cap_windows - 1) * 12, 16, 4)
    clip = pan_zoom(windows[-1].end, args.size, dx=0.5, zoom=0.002)
    refs = {w.index: ray.put(np.ascontiguousarray(clip[w.start:w.end])) for w in windows}
    jobs = plan_segments(windows, "linear", 120, Encoding(args.size, args.size, 8.0, 18, "medium"))
    task = segment_task().options(num_cpus=1)
    out = {}
    for e in encoders:
        ray.get(task.remote(jobs[0], None, *[refs[s.window] for s in jobs[0].sources]))  # workers warm
        t0 = time.perf_counter()
        pending, done = list(jobs), []
        running = []
        while pending or running:
            while pending and len(running) < e:
                j = pending.pop(0)
                running.append(task.remote(j, None, *[refs[s.window] for s in j.sources]))
            ready, running = ray.wait(running, num_returns=1)
            done += ray.get(ready)
        wall = time.perf_counter() - t0
        out[e] = {"wall": wall, "windows_per_s": len(windows) / wall, "segments": len(jobs),
                  "task_seconds": sum(o.seconds for o in done) / len(done)}
        print(f"  {e} encoder(s): {len(windows)} windows in {len(jobs)} segments, {wall:.2f} s, "
              f"{len(windows) / wall:.1f} windows/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.0, help="simulated seconds per window")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--encoders", default="1,2")
    ap.add_argument("--cap-windows", type=int, default=40, help="windows in the capacity probe")
    args = ap.parse_args()
    encoders = [int(e) for e in args.encoders.split(",")]

    import ray

    cores = os.cpu_count() or 1
    ray.init(num_cpus=max(cores, args.actors + 2), include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="bench-segments-")
    print(f"machine: {cores} cores, {cpu_model()}. SIMULATED pipeline (frames drawn per frame); "
          f"{args.windows} windows of 16 (overlap 4) at {args.size}x{args.size} on {args.actors} actors, store off")
    print("1. driver CPU per window, both paths alternating:")
    rows = driver_cpu(args, tmp)
    floor, idle = ray_floor(args), idle_cpu()
    print(f"  Ray's own floor (an actor call with two returns a window, refs passed to a task): {floor:.2f} ms/window;"
          f" an idle Ray driver: {idle:.2f} ms/s")
    print(f"2. segment encoders' capacity at {args.size}x{args.size} (pan-and-zoom photograph, crf 18 medium):")
    caps = capacity(args, [e for e in encoders if e <= cores])
    ray.shutdown()

    print()
    for path in ("driver", "segments"):
        sel = [r for r in rows if r["path"] == path]
        best = min(r["cpu_ms"] for r in sel)
        cpu = ", ".join(f"{r['cpu_ms']:.2f}" for r in sel)
        wall = ", ".join(f"{r['render']:.2f}" for r in sel)
        print(f"{path:<9} driver CPU per window: {cpu} ms (best {best:.2f}); render stage {wall} s")
    d = min(r["cpu_ms"] for r in rows if r["path"] == "driver")
    s = min(r["cpu_ms"] for r in rows if r["path"] == "segments")
    print(f"ratio driver / segments (driver CPU per window): {d / s:.1f}x; target <= 2 ms on the segment path: "
          f"{'MET' if s <= 2 else 'NOT MET'} ({s:.2f} ms); Ray's floor alone {floor:.2f} ms/window, "
          f"an idle Ray driver {idle:.2f} ms/s")
    for r in rows:
        per_s = args.windows / r["render"]
        print(f"  {r['path']:<9} #{r['repeat'] + 1}: {per_s:.1f} windows/s, so the idle share "
              f"is {idle / per_s:.2f} ms of its {r['cpu_ms']:.2f} ms per window")
    for e, c in caps.items():
        print(f"{e} segment encoder(s): {c['windows_per_s']:.1f} windows/s at {args.size}x{args.size} "
              f"({c['task_seconds']:.2f} s per segment task) -> keeps about {4 * c['windows_per_s']:.0f} GPUs "
              f"busy at 4 s windows, {c['windows_per_s']:.0f} at 1 s")


if __name__ == "__main__":
    main()
