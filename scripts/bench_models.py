#!/usr/bin/env python
"""Benchmark (not a test): staged models and the node cache (farm/models/remote.py,
farm/models/nodecache.py), measured side by side in one run against a local S3 API
server (moto's server mode on 127.0.0.1, started here; its speed, not a cloud's).

fetch   a file of --fetch-mb MiB of random bytes, staged to the server, then copied to
        local disk by (a) one pyarrow input stream read in 8 MB pieces into a file, what a
        single-stream `aws s3 cp` of one object does, and (b) the farm's fetch into an empty
        node cache (the same stream, each piece also hashed, then checked against the
        manifest, renamed into the cache). Alternated --rounds times; MB/s and the ratio.

first   time to the first window on a cold node (empty node cache: fetch, load, render
        one window) against a warm one (the cache holds the copy: load and render), for
          tiny   the tests' tiny SD1.5 and motion adapter, staged as folders;
          sd15   SD1.5-shaped RANDOM weights (UNet, VAE, CLIP text encoder: 1.07 B
                 parameters) written as one fp16 LDM-layout .safetensors file (as
                 checkpoints are shared) and an AnimateDiff v2-shaped random motion
                 adapter, both staged. The window: 8 frames at 64x64, 1 step, fp32 on
                 the CPU (what is measured is fetching and loading, not denoising).
        Each load runs in this process after one untimed load (imports paid once).

Usage: scripts/bench_models.py [--fetch-mb 2048] [--rounds 2] [--models tiny,sd15] [--json PATH]
(tiny's first-window rounds are at least 3)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 8 << 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fetch-mb", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="tiny,sd15")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tests.ray_heads import start_s3_server

    server = start_s3_server(bucket="bench")
    os.environ.update(server.env)
    tmp = Path(tempfile.mkdtemp(prefix="bench-models-"))
    results: dict = {}
    try:
        if args.fetch_mb:
            results["fetch"] = bench_fetch(server, args.fetch_mb, args.rounds, tmp)
        for name in [m for m in args.models.split(",") if m]:
            rounds = max(args.rounds, 3) if name == "tiny" else args.rounds  # tiny: seconds, noisy
            results[f"first_window_{name}"] = bench_first_window(server, name, rounds, tmp)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


def bench_fetch(server, mb: int, rounds: int, tmp: Path) -> dict:
    from farm.models.nodecache import NodeCache
    from farm.models.remote import read_manifest, stage
    from farm.outputs import filesystem

    source = tmp / "random.bin"
    with open(source, "wb") as f:
        for _ in range(mb // 8):
            f.write(os.urandom(CHUNK))
    uri = f"s3://{server.bucket}/bench/random"
    t0 = time.perf_counter()
    stage(str(source), uri)
    staged_s = time.perf_counter() - t0
    source.unlink()
    manifest = read_manifest(uri)
    size = manifest.total_bytes
    fs, path = filesystem(f"{uri}/random.bin")
    single, farm = [], []
    for r in range(rounds):
        out = tmp / "single.bin"
        t0 = time.perf_counter()
        with fs.open_input_stream(path) as src, open(out, "wb") as dst:
            while piece := src.read(CHUNK):
                dst.write(piece)
        single.append(time.perf_counter() - t0)
        out.unlink()
        cache_root = tmp / f"cache-{r}"
        lease = NodeCache(cache_root).acquire(manifest)
        assert lease.source == "object storage" and lease.fetch_bytes == size
        farm.append(lease.fetch_seconds)
        lease.release()
        shutil.rmtree(cache_root)
        print(f"fetch round {r}: single stream {size / single[-1] / 1e6:.0f} MB/s, "
              f"farm {size / farm[-1] / 1e6:.0f} MB/s", file=sys.stderr)
    best_single, best_farm = min(single), min(farm)
    return {"mb": size / 1e6, "stage_mb_s": round(size / staged_s / 1e6, 1),
            "single_stream_mb_s": round(size / best_single / 1e6, 1), "farm_mb_s": round(size / best_farm / 1e6, 1),
            "farm_over_single_time": round(best_farm / best_single, 3),
            "rounds": {"single_s": [round(s, 2) for s in single], "farm_s": [round(s, 2) for s in farm]}}


def _sd15_files(tmp: Path) -> tuple[Path, Path]:
    """SD1.5-shaped random weights as one fp16 LDM-layout file, and an AnimateDiff
    v2-shaped random motion adapter folder (fp16), from the shipped configs."""
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from farm.models import ldm_layout
    from farm.models.single_file import SD15_CONFIG

    config = str(SD15_CONFIG)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config, subfolder="unet")).half()
    state = ldm_layout.unet_to_ldm(unet.state_dict(), 2)
    del unet
    torch.manual_seed(0)
    state |= ldm_layout.vae_to_ldm(AutoencoderKL.from_config(AutoencoderKL.load_config(config, subfolder="vae")).half().state_dict())
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(config, subfolder="text_encoder")).half()
    state |= ldm_layout.text_encoder_to_ldm(text.state_dict())
    checkpoint = tmp / "sd15-random" / "sd15-random.safetensors"
    checkpoint.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
    del state
    torch.manual_seed(0)
    adapter = MotionAdapter.from_config(MotionAdapter.load_config(config, subfolder="motion_adapter")).half()
    adapter.save_pretrained(tmp / "mm-random")
    return checkpoint, tmp / "mm-random"


def bench_first_window(server, name: str, rounds: int, tmp: Path) -> dict:
    import torch

    from farm.models.nodecache import NodeCache
    from farm.models.remote import stage
    from farm.models.sources import localize
    from farm.models.tiny import TINY_BASE, TINY_MOTION_ADAPTER, tiny_model_path
    from farm.plan import plan_windows
    from farm.renderers import make_renderer
    from farm.spec import parse_spec
    from farm.tasks import WindowTask

    if name == "tiny":
        base, adapter, config = tiny_model_path(TINY_BASE), tiny_model_path(TINY_MOTION_ADAPTER), None
    else:
        base, adapter = _sd15_files(tmp)
        config = "sd15"
    staged = {}
    for field, path in (("base", base), ("motion_adapter", adapter)):
        uri = f"s3://{server.bucket}/bench/{name}-{field}"
        staged[field] = (uri, stage(str(path), uri).total_bytes)
    model = {"pipeline": "animatediff", "base": staged["base"][0], "motion_adapter": staged["motion_adapter"][0],
             "dtype": "fp32", "warmup": False, **({"config": config} if config else {})}
    spec = parse_spec({"model": model, "prompt": "a red fox running through snow", "frames": 8, "width": 64,
                       "height": 64, "steps": 1, "window": {"length": 8, "overlap": 2, "reconcile": "crossfade"},
                       "output": str(tmp / "unused.mp4")})
    task = WindowTask.from_spec(spec, plan_windows(spec).windows[0])
    cache_root = tmp / f"node-{name}"

    def first_window() -> dict:
        t0 = time.perf_counter()
        local, fetched = localize(spec, lambda: NodeCache(cache_root))
        t1 = time.perf_counter()
        renderer = make_renderer(local, device="cpu")
        t2 = time.perf_counter()
        renderer.render(task)
        t3 = time.perf_counter()
        fetched.release()
        del renderer
        return {"from": fetched.report()["from"], "fetch_s": t1 - t0, "load_s": t2 - t1, "window_s": t3 - t2,
                "total_s": t3 - t0}

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    first_window()  # untimed: imports and first-call costs
    cold, warm = [], []
    for r in range(rounds):
        shutil.rmtree(cache_root, ignore_errors=True)
        cold.append(first_window())
        warm.append(first_window())
        print(f"{name} round {r}: cold {cold[-1]['total_s']:.1f}s ({cold[-1]['from']}), "
              f"warm {warm[-1]['total_s']:.1f}s ({warm[-1]['from']})", file=sys.stderr)
    assert all(c["from"] == "object storage" for c in cold) and all(w["from"] == "node cache" for w in warm)

    def best(runs):
        top = min(runs, key=lambda x: x["total_s"])
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in top.items()}

    c, w = best(cold), best(warm)
    return {"staged_mb": round(sum(b for _, b in staged.values()) / 1e6, 1), "cold": c, "warm": w,
            "cold_over_warm": round(c["total_s"] / w["total_s"], 2)}


if __name__ == "__main__":
    main()
