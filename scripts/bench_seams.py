#!/usr/bin/env python
"""Benchmark (not a test): seam visibility of real farm renders, per blend mode.

The same job is rendered by the farm (`scheduler.driver.render`, tiny AnimateDiff model,
store off) once per `window.blend` mode: hard, linear, cosine, for --seeds seeds. The
windows' frames are identical across the modes (per-frame noise depends only on the seed
and the frame), so only the crossfade differs. The table gives the report's
`seam_ratio_max` and `seam_ratio_median` (farm.metrics.seam_ratios: the largest
frame-to-frame change over a handover ÷ the median change inside the two windows;
1.0 = the seam cannot be seen) and the flicker score (`flicker.score`), as the median over
the seeds, plus the worst seed's `seam_ratio_max`.

The tiny model has random weights: its frames are coloured noise whose every frame
differs a lot from the next, so the interior change is large and seams are hard to see
against it. For a controlled measure of the blend modes with realistic footage and
window drift, see scripts/bench_drift.py.

    .venv/bin/python scripts/bench_seams.py [--frames 124] [--seeds 3]
"""

from __future__ import annotations

from _bench import cpu_model

import argparse
import logging
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FARM_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache", "farm"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

BLENDS = ("hard", "linear", "cosine")


def job(frames: int, size: int, steps: int, seed: int, blend: str, out: str):
    from farm.spec import parse_spec

    return parse_spec(
        {
            "model": {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny"},
            "prompt": "a red fox running through snow",
            "negative_prompt": "blurry",
            "frames": frames,
            "width": size,
            "height": size,
            "steps": steps,
            "seed": seed,
            "window": {"length": 16, "overlap": 4, "blend": blend, "reconcile": "crossfade"},
            "output": out,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=124)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()

    import ray

    from scheduler.driver import render

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="bench-seams-")
    rows: dict[str, list[dict]] = {b: [] for b in BLENDS}
    disagreement: list[float] = []
    seams = 0
    for seed in range(args.seeds):
        for blend in BLENDS:
            spec = job(args.frames, args.size, args.steps, seed, blend, os.path.join(tmp, f"{blend}-{seed}.mp4"))
            rep = render(spec, workers=1, threads=cores, store=False)
            if blend == BLENDS[0]:  # how much neighbouring windows disagree on shared frames (the report's)
                disagreement.append(float(np.median([s["disagreement"] for s in rep["seams"]])))
            seams = len(rep["seams"])
            rows[blend].append({"max": rep["seam_ratio_max"], "median": rep["seam_ratio_median"],
                                "score": rep["flicker"]["score"],
                                "interior": float(np.median([s["interior"] for s in rep["seams"]]))})
            print(f"seed {seed} {blend:<7} seam ratio max {rep['seam_ratio_max']:.3f}, "
                  f"median {rep['seam_ratio_median']:.3f}, flicker score {rep['flicker']['score']:.4f}", flush=True)
    ray.shutdown()

    print()
    print(f"machine: {cores} cores, {cpu_model()}")
    print(f"real farm renders, tiny AnimateDiff (random weights: noise-like frames), {args.frames} frames "
          f"{args.size}x{args.size}, {args.steps} steps, windows 16/4 ({seams} seams), {args.seeds} seeds")
    print(f"{'blend':<8} {'ratio max (median of seeds)':>28} {'worst seed':>11} {'ratio median':>13} "
          f"{'flicker score':>14} {'interior diff':>14}")
    for blend in BLENDS:
        rs = rows[blend]
        mx = np.array([r["max"] for r in rs])
        print(f"{blend:<8} {np.median(mx):>28.3f} {mx.max():>11.3f} "
              f"{np.median([r['median'] for r in rs]):>13.3f} {np.median([r['score'] for r in rs]):>14.4f} "
              f"{np.median([r['interior'] for r in rs]):>14.2f}")
    print("interior diff: median over seams of the mean absolute change from frame to frame inside the windows "
          "(grey levels)")
    print(f"neighbouring windows disagree on their shared frames by {np.median(disagreement):.2f} grey levels "
          f"(mean absolute difference, median over seams and seeds): what the crossfade has to hide")


if __name__ == "__main__":
    main()
