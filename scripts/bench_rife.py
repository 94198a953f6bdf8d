#!/usr/bin/env python
"""Benchmark (not a test): RIFE pool throughput and interpolation quality.

- Throughput: frames/s out of the RIFE pool (real Ray actors, 1 torch thread each) for a
  2× job at 256×256 with 1 and with 2 actors, side by side; 1 actor at 1280×720.
- Quality: a 48-frame pan and zoom over skimage's astronaut at 256×256. Drop every other
  frame (2×) or three of four (4×), interpolate them back, and report the mean PSNR of
  RIFE and of a plain linear blend of the kept neighbours on the dropped frames.
- With CUDA: 1280×720 2× in fp16 (the RIFE authors report 30+ fps on a 2080 Ti).

    .venv/bin/python scripts/bench_rife.py
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def pool_fps(clip: np.ndarray, actors: int, weights: bytes) -> float:
    from farm.interpolate import retiming
    from farm.spec import InterpolateSpec
    from scheduler.cluster import Session, start_rife_actors, stop_actors
    from scheduler.rife_stage import InterpolationStage, rife_pool

    ip = InterpolateSpec(factor=2, workers=actors, scene_threshold=0)
    pool, infos = start_rife_actors(ip, weights, Session(False, 0, os.cpu_count() or 1))
    try:
        r = retiming(len(clip), 8, factor=2)
        chunk = max(1, (len(clip) - 1) // (2 * actors))
        stage = InterpolationStage(rife_pool(pool, infos, r, chunk, retries=0), r, chunk, 0.0)
        t0 = time.perf_counter()
        n = 0
        for f in clip:
            stage.push(f)
            n += sum(1 for _ in stage.ready())
        n += sum(1 for _ in stage.finish())
        return n / (time.perf_counter() - t0)
    finally:
        stop_actors(pool)


def main() -> None:
    import ray
    import torch

    from farm.interpolate import dropped_frame_psnr
    from farm.rife import weights
    from farm.rife.backends import TorchRife
    from tests.clips import pan_zoom

    path = weights.pull()
    wbytes = path.read_bytes()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"machine: {os.cpu_count()} cores, {cpu}; torch {torch.__version__}; CUDA: {torch.cuda.is_available()}")

    torch.set_num_threads(os.cpu_count() or 1)
    rife = TorchRife(str(path), device="cpu")
    clip = pan_zoom(49, size=256)
    for step in (2, 4):
        ours, blend = dropped_frame_psnr(rife, clip, step)
        print(f"quality {step}x, 48-frame astronaut pan/zoom 256x256: RIFE {ours:.2f} dB, "
              f"linear blend {blend:.2f} dB, margin {ours - blend:+.2f} dB")

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    small = pan_zoom(17, size=256)
    pool_fps(small[:3], 1, wbytes)  # warm-up
    f1 = pool_fps(small, 1, wbytes)
    f2 = pool_fps(small, 2, wbytes)
    print(f"pool 2x at 256x256, CPU, 1 thread per actor: 1 actor {f1:.2f} frames/s, 2 actors {f2:.2f} frames/s, "
          f"speed-up {f2 / f1:.2f}x")
    hd = pan_zoom(3, size=720)
    hd = np.stack([np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(f).resize((1280, 720))) for f in hd])
    fhd = pool_fps(hd, 1, wbytes)
    print(f"pool 2x at 1280x720, CPU, 1 actor, 1 thread: {fhd:.3f} frames/s out")
    ray.shutdown()

    if torch.cuda.is_available():
        gpu = TorchRife(str(path), device="cuda")
        a, b = (gpu.to_native(f) for f in hd[:2])
        for _ in range(3):
            gpu.midpoint(a, b)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(30):
            gpu.midpoint(a, b)
        torch.cuda.synchronize()
        print(f"GPU {torch.cuda.get_device_name()}: 1280x720 2x fp16 {30 / (time.perf_counter() - t0):.1f} midpoints/s "
              f"(RIFE authors: 30+ fps on a 2080 Ti)")


if __name__ == "__main__":
    main()
