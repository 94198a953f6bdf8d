#!/usr/bin/env python
"""Benchmark (not a test): editing one shot of a film (farm/shots.py), measured side by
side in one run on a local Ray.

edit    the 12-shot tiny film (examples/tiny/film_sd15.yaml, co-denoised; --reconcile
        crossfade for the other mode) is rendered once into a window store; then shot
        --shot's prompt is changed and the film rendered again with that store (only that
        shot's run renders), against a render of the same edited film with an empty store
        (everything renders). Alternated --rounds times: windows denoised and wall time of
        each, and their ratio. Both write the same video, so the frames are compared too.

local   a local re-render inside one fused run (farm/rerender.py): a co-denoised run of
        --local-windows windows (8 frames, 2 shared, 32×32, --steps steps) rendered with
        window.keep_steps; then the prompt of the middle window's own frames changed and the
        run rendered again with that store (radius 1: 3 windows denoised), against the same
        edited run rendered whole (--full) with an empty store. Alternated --rounds times:
        windows denoised, wall time, their ratio, and the largest per-frame difference
        between the two videos inside the region and at its edges (outside it both are the
        first render's frames and the full render's own).

storage the bytes per minute of video that storing a co-denoised run's latents at every
        step takes (window.keep_steps; the farm stores them as float32), computed from the latent shapes: SD1.5
        at 512² (4 × 64 × 64 per frame, 8 fps, 25 steps) and Wan 2.1 at 832×480 (16 × 60 ×
        104 per latent frame of 4 frames, 16 fps, 30 and 50 steps), fp16 and fp32.

Usage: scripts/bench_shots.py [--rounds 2] [--shot 4] [--reconcile latent|crossfade] [--local-windows 20]
                              [--steps 4] [--only edit|local] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shot", type=int, default=4)
    ap.add_argument("--reconcile", choices=("latent", "crossfade"), default="latent")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--local-windows", type=int, default=20)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--only", choices=("edit", "local"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {"storage": storage()}
    if args.only != "local":
        results["edit"] = bench_edit(args)
    if args.only != "edit":
        results["local"] = bench_local(args)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


def bench_edit(args) -> dict:
    import numpy as np
    import ray
    import yaml

    from farm.spec import parse_spec
    from farm.video import read_frames
    from scheduler.driver import render

    ray.init(address="local", num_cpus=max(4, args.workers), include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shots-"))
    shutil.copytree(ROOT / "examples" / "tiny", tmp / "tiny")
    data = yaml.safe_load((tmp / "tiny" / "film_sd15.yaml").read_text())
    data["window"]["reconcile"] = args.reconcile
    data["encode"] = {"crf": 0, "preset": "ultrafast"}
    edited = json.loads(json.dumps(data))
    edited["shots"][args.shot]["prompt"] += ", at night"

    def run(spec: dict, store: Path, name: str) -> tuple[dict, float]:
        spec = dict(spec, output=str(tmp / name))
        t0 = time.perf_counter()
        report = render(parse_spec(spec, base=tmp / "tiny"), workers=args.workers, threads=1, store=str(store),
                        farm=False)
        return report, time.perf_counter() - t0

    rounds = []
    try:
        warm = tmp / "warm-store"
        warm.mkdir()
        run(data, warm, "first.mp4")  # the film as it was: the store the edit finds
        for r in range(args.rounds):
            edit_store = tmp / f"edit-{r}"
            shutil.copytree(warm, edit_store)
            fresh = tmp / f"fresh-{r}"
            fresh.mkdir()
            order = [("edit", edit_store), ("full", fresh)] if r % 2 == 0 else [("full", fresh), ("edit", edit_store)]
            out = {}
            for kind, store in order:
                report, wall = run(edited, store, f"{kind}-{r}.mp4")
                out[kind] = {"wall_s": round(wall, 3), "windows": len(report["windows"]),
                             "windows_rendered": report["windows_rendered"],
                             "shots_rendered": [s["index"] for s in report["shots"] if s["state"] != "from the store"]}
            same = np.array_equal(read_frames(tmp / f"edit-{r}.mp4"), read_frames(tmp / f"full-{r}.mp4"))
            rounds.append(out | {"edit_over_full": round(out["edit"]["wall_s"] / out["full"]["wall_s"], 3),
                                 "same_frames": bool(same)})
            print(json.dumps(rounds[-1]), file=sys.stderr)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"reconcile": args.reconcile, "shot": args.shot, "workers": args.workers, "rounds": rounds}


def bench_local(args) -> dict:
    import numpy as np
    import ray

    from farm.spec import parse_spec
    from farm.video import read_frames
    from scheduler.driver import render

    n, length, overlap = args.local_windows, 8, 2
    frames = length + (n - 1) * (length - overlap)
    mid = n // 2  # its own frames: those no neighbour covers
    own = (mid * (length - overlap) + overlap, mid * (length - overlap) + length - overlap)

    def spec(text: str, radius, name: str) -> dict:
        return {"model": {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny", "warmup": False},
                "prompts": {0: "a red fox running through snow", own[0]: text, own[1]: "a red fox running through snow"},
                "prompt_transition": 1, "frames": frames, "width": 32, "height": 32, "steps": args.steps, "seed": 3,
                "encode": {"crf": 0, "preset": "ultrafast"}, "output": str(tmp / name),
                "window": {"length": length, "overlap": overlap, "reconcile": "latent", "keep_steps": True,
                           "rerender_radius": radius}}

    def run(data: dict, store: Path) -> tuple[dict, float]:
        t0 = time.perf_counter()
        report = render(parse_spec(data), workers=args.workers, threads=1, store=str(store), farm=False)
        return report, time.perf_counter() - t0

    ray.init(address="local", num_cpus=max(4, args.workers), include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-local-"))
    rounds = []
    try:
        warm = tmp / "warm-store"
        warm.mkdir()
        run(spec("a grey wolf", 1, "local.mp4"), warm)  # the store keeps the last render per output: the same name
        first = read_frames(tmp / "local.mp4").astype(np.int16)
        for r in range(args.rounds):
            local_store = tmp / f"local-{r}"
            shutil.copytree(warm, local_store)
            fresh = tmp / f"fresh-{r}"
            fresh.mkdir()
            jobs = {"local": (spec("a green river", 1, "local.mp4"), local_store),
                    "full": (spec("a green river", "all", f"full-{r}.mp4"), fresh)}
            out = {}
            for kind in (("local", "full") if r % 2 == 0 else ("full", "local")):
                report, wall = run(*jobs[kind])
                lat = report["latent"]
                out[kind] = {"wall_s": round(wall, 3), "windows": len(report["windows"]),
                             "windows_denoised": sum(not w["cached"] for w in report["windows"]),
                             "denoise_s": (lat["local"] or lat)["denoise_seconds"]}
                if kind == "local":
                    out["region"] = lat["local"]
            a = read_frames(tmp / "local.mp4").astype(np.int16)
            b = read_frames(tmp / f"full-{r}.mp4").astype(np.int16)
            lo, hi = out["region"]["free"]
            per_frame = np.abs(a - b).max(axis=(1, 2, 3))
            rounds.append(out | {
                "local_over_full": round(out["local"]["wall_s"] / out["full"]["wall_s"], 3),
                "denoise_local_over_full": round(out["local"]["denoise_s"] / out["full"]["denoise_s"], 3),
                "outside_region_same_as_first": bool(np.array_equal(a[:lo], first[:lo])
                                                     and np.array_equal(a[hi:], first[hi:])),
                "max_diff_local_vs_full_in_region": int(per_frame[lo:hi].max()),
                "max_diff_local_vs_full_at_edges": [int(per_frame[lo]), int(per_frame[hi - 1])],
                "max_diff_local_vs_full_outside": int(max(per_frame[:lo].max(initial=0), per_frame[hi:].max(initial=0)))})
            print(json.dumps(rounds[-1]), file=sys.stderr)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"windows": n, "frames": frames, "steps": args.steps, "workers": args.workers, "rounds": rounds}


def storage() -> dict:
    """Per-step latents of one minute of video, from the latent shapes."""
    sd15 = {"frames_per_minute": 8 * 60, "bytes_per_frame_fp16": 4 * 64 * 64 * 2}
    wan = {"latent_frames_per_minute": 16 * 60 // 4, "bytes_per_latent_frame_fp16": 16 * 60 * 104 * 2}
    out = {}
    for steps in (25,):
        b = sd15["frames_per_minute"] * sd15["bytes_per_frame_fp16"] * steps
        out[f"sd15_512_{steps}_steps"] = {"fp16_MB": round(b / 1e6, 1), "fp32_MB": round(2 * b / 1e6, 1)}
    for steps in (30, 50):
        b = wan["latent_frames_per_minute"] * wan["bytes_per_latent_frame_fp16"] * steps
        out[f"wan_832x480_{steps}_steps"] = {"fp16_MB": round(b / 1e6, 1), "fp32_MB": round(2 * b / 1e6, 1)}
    return out


if __name__ == "__main__":
    main()
