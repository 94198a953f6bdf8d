#!/usr/bin/env python
"""Benchmark (not a test): the driver's peak memory does not grow with the video's length.

Jobs of 1× and 8× the length (default 64 and 512 frames) are rendered side by side, each
by `scheduler.driver.render(..., store=False)` in a fresh child process that starts its own
local Ray. The driver's peak RSS is that child's own `VmHWM` (/proc/self/status, read by
the child after render() returns): the driver process only, not the Ray actors, raylet or
GCS it started (separate processes), nor ffmpeg. The pairs run interleaved, --repeats
times; the median of each is reported.

Two configurations:
- `sim`: the fixed-cost SIMULATION renderer (`model.faults.simulate_seconds`) at 256×256,
  so that a driver that kept the whole video would show it (512 frames of 256×256 RGB are
  ~100 MB against a ~0.5 GB driver);
- `tiny`: the real tiny AnimateDiff model at 64×64, 1 step (a real render; at this size
  the whole video is only 6 MB, so this row is less sensitive).

Reported: peak(8×) / peak(1×) (target ≤ 1.15), and, because the driver's fixed cost
(Python, torch, Ray's core worker) dominates the peak, also the job-dependent part:
peak − RSS just before render() was called, and the peaks of the two parts of the RSS
that can grow: the private heap (RssAnon) and shared memory (RssShmem: the pages of Ray's
object store the driver has read windows from). The simulation also runs a 64× job
(4096 frames), to show whether the peak keeps growing with length or levels off.

    .venv/bin/python scripts/bench_memory.py [--frames 64] [--factor 8] [--repeats 2]
"""

from __future__ import annotations

from _bench import cpu_model

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FARM_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache", "farm"))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

CONFIGS = {
    # name: (size, steps, simulate_seconds or None, workers, threads)
    "sim": (256, 1, 0.05, 2, 1),
    "tiny": (64, 1, None, 1, 2),
}


def job_dict(config: str, frames: int, out: str) -> dict:
    size, steps, sim, _, _ = CONFIGS[config]
    model = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny"}
    if sim is not None:
        model["faults"] = {"simulate_seconds": sim}
    return {
        "model": model,
        "prompt": "a red fox running through snow",
        "negative_prompt": "blurry",
        "frames": frames,
        "width": size,
        "height": size,
        "steps": steps,
        "window": {"length": 16, "overlap": 4, "blend": "linear", "reconcile": "crossfade"},
        "output": out,
    }


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args_json: str) -> None:
    """Runs in the fresh child: import, note RSS, render, print the driver's own peak."""
    a = json.loads(args_json)
    from farm.spec import parse_spec
    from scheduler.driver import render

    spec = parse_spec(a["job"])
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    report = render(spec, workers=a["workers"], threads=a["threads"], store=False)
    print(json.dumps({
        "before_kb": before,
        "hwm_kb": _status_kb("VmHWM"),
        "rss_after_kb": _status_kb("VmRSS"),
        "seconds": time.perf_counter() - t0,
        "render_s": report["stages"]["render"],
        "frames": report["output_frames"],
        "windows": len(report["windows"]),
        "devices": sorted({w["device"] for w in report["windows"]}),
    }))


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def measure(config: str, frames: int, tmp: str) -> dict:
    """Run one job in a fresh child; poll the child's /proc status every 20 ms for the peak
    of each part of its RSS (private heap, mapped files, shared memory such as Ray's object
    store pages it read), and take its own VmHWM from what it prints."""
    _, _, _, workers, threads = CONFIGS[config]
    job = job_dict(config, frames, os.path.join(tmp, f"{config}-{frames}.mp4"))
    arg = json.dumps({"job": job, "workers": workers, "threads": threads})
    peaks: dict[str, int] = {}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", arg], cwd=ROOT,
                                stdout=out, stderr=err, text=True)
        while proc.poll() is None:
            for k, v in _status(proc.pid).items():
                peaks[k] = max(peaks.get(k, 0), v)
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        text = out.read()
        if proc.returncode != 0:
            sys.stderr.write(text + err.read())
            raise SystemExit(f"child for {config} {frames} frames failed ({proc.returncode})")
    result = json.loads(text.strip().splitlines()[-1])
    result.update({f"peak_{k}_kb": v for k, v in peaks.items()})
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64, help="frames of the 1x job")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--configs", default="sim,tiny")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    configs = [c for c in args.configs.split(",") if c]
    # The simulation also runs a job 8x longer still (64x the baseline): if the driver's
    # memory is bounded, its peak stays where the 8x job's is.
    factors = {c: [1, args.factor] + ([args.factor ** 2] if CONFIGS[c][2] is not None else []) for c in configs}
    tmp = tempfile.mkdtemp(prefix="bench-memory-")
    runs: dict[tuple[str, int], list[dict]] = {}
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}", flush=True)
    for r in range(args.repeats):
        for config in configs:
            for f in factors[config]:
                frames = args.frames * f
                m = measure(config, frames, tmp)
                runs.setdefault((config, frames), []).append(m)
                print(f"repeat {r + 1} {config:<4} {frames:>5} frames ({m['windows']} windows, {m['devices']}): "
                      f"driver VmHWM {m['hwm_kb'] / 1024:.1f} MiB (RssAnon peak {m['peak_RssAnon_kb'] / 1024:.1f}, "
                      f"RssShmem peak {m['peak_RssShmem_kb'] / 1024:.1f}), before render() "
                      f"{m['before_kb'] / 1024:.1f} MiB, render {m['render_s']:.1f} s", flush=True)

    def med(config: str, frames: int, fn) -> float:
        return statistics.median(fn(m) for m in runs[(config, frames)]) / 1024

    print()
    print(f"driver process only (not the Ray actors, raylet, GCS or ffmpeg), MiB, median of {args.repeats}")
    print(f"{'config':<32} {'frames':>6} {'VmHWM':>8} {'ratio':>7} {'job part':>9} {'RssAnon':>8} {'RssShmem':>9} "
          f"{'video':>7}")
    verdicts = []
    for config in configs:
        size, steps, sim, workers, threads = CONFIGS[config]
        label = (f"{'SIMULATION' if sim is not None else 'tiny model'} {size}x{size}, {workers} actor"
                 f"{'s' if workers > 1 else ''}")
        base = med(config, args.frames, lambda m: m["hwm_kb"])
        for f in factors[config]:
            frames = args.frames * f
            peak = med(config, frames, lambda m: m["hwm_kb"])
            ratio = peak / base
            if f == args.factor:
                anon = (med(config, frames, lambda m: m["peak_RssAnon_kb"])
                        / med(config, args.frames, lambda m: m["peak_RssAnon_kb"]))
                verdicts.append(f"{label}: VmHWM {ratio:.3f}x {'MET' if ratio <= 1.15 else 'NOT MET'} "
                                f"(private heap RssAnon {anon:.3f}x)")
            print(f"{label if f == 1 else '':<32} {frames:>6} {peak:>8.1f} {ratio:>6.3f}x "
                  f"{med(config, frames, lambda m: m['hwm_kb'] - m['before_kb']):>9.1f} "
                  f"{med(config, frames, lambda m: m['peak_RssAnon_kb']):>8.1f} "
                  f"{med(config, frames, lambda m: m['peak_RssShmem_kb']):>9.1f} "
                  f"{frames * size * size * 3 / 2**20:>7.1f}")
    print("VmHWM: the driver's peak RSS (its own /proc/self/status after render()); ratio: against the 1x job; "
          "job part: VmHWM - RSS just before render() (after imports); RssAnon / RssShmem: peaks of the private "
          "heap and of shared memory (Ray object-store pages the driver read) polled every 20 ms; video: all frames "
          "of the job as uint8, what a driver holding the whole video would add")
    print(f"target peak({args.factor}x)/peak(1x) <= 1.15:")
    for v in verdicts:
        print(f"  {v}")


if __name__ == "__main__":
    main()
