#!/usr/bin/env python
"""Benchmark (not a test): how visible the window seams of each blend mode are.

A 64-frame pan and zoom over skimage's astronaut at 128×128 is cut into the planner's
windows (16 frames, overlap 4); each window gets its own drift (colour gain ±4 %,
brightness ±6 grey levels, shift ±0.2 px; `farm.drift`), and the windows are reconciled
with each blend mode. The table gives the seam jump ratio (`farm.metrics.seam_ratios`:
the largest frame-to-frame change over a handover ÷ the median change inside the
windows; 1.0 = invisible) over several drift seeds, and VBench's flicker score.
The `clean` row is the footage without drift: the floor of the measure.

    .venv/bin/python scripts/bench_drift.py [--seeds 8] [--length 16] [--overlap 4]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    from farm.blend import SCHEMES
    from farm.drift import seam_table
    from tests.clips import pan_zoom

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4)
    args = ap.parse_args()

    clip = pan_zoom(64, 128, zoom=0.004)
    shape = dict(length=args.length, overlap=args.overlap)
    clean = seam_table(clip, blends=["hard"], colour=0, brightness=0, shift=0, **shape)["hard"]
    runs = [seam_table(clip, seed=s, **shape) for s in range(args.seeds)]
    seams = len(clean["seams"])

    print(f"pan+zoom 64×128×128, windows {args.length}/{args.overlap} ({seams} seams), "
          f"{args.seeds} drift seeds")
    print(f"{'blend':<8} {'ratio max (median of seeds)':>28} {'worst seed':>11} "
          f"{'ratio median':>13} {'flicker score':>14}")
    rows = [("clean", [clean])] + [(b, [r[b] for r in runs]) for b in SCHEMES]
    for name, rs in rows:
        mx = np.array([r["seam_ratio_max"] for r in rs])
        med = np.median([r["seam_ratio_median"] for r in rs])
        score = np.median([r["flicker_score"] for r in rs])
        print(f"{name:<8} {np.median(mx):>28.3f} {mx.max():>11.3f} {med:>13.3f} {score:>14.4f}")


if __name__ == "__main__":
    main()
