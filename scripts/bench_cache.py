#!/usr/bin/env python
"""Benchmark (not a test): step caching (`model.cache`) on Wan, cached against uncached,
per kind, side by side in one run.

Two models, each loaded by the farm's own Wan renderer (farm/pipelines/wan.py) on the CPU,
fp32, 1 torch thread per renderer as a CPU actor has:

tiny   the tests' tiny Wan (2 transformer blocks of width 24);
1.3b   a Wan 2.1 T2V 1.3B-shaped transformer (30 blocks, 12 heads of 128, ffn 8960, text
       width 4096; 1.42 B parameters) with RANDOM weights (seed 0), and the tiny VAE and
       text encoder (the encoder at width 4096): the shape of the real model's compute,
       none of its behaviour. Built once into $FARM_CACHE/bench/.

Each configuration runs on a fresh renderer (its hooks are set when it loads):
  none         no cache
  first_block  FirstBlockCache at diffusers' default threshold (0.05)
  taylorseer   TaylorSeer at diffusers' defaults (full steps 0-2, then one full step in 5)
  pab          Pyramid Attention Broadcast, self-attention every 2nd call within
               timesteps (100, 800) (the values diffusers' documentation uses)
  mag          MagCache at diffusers' defaults (threshold 0.06, 3 skips at most, the first
               20 % of steps kept), with magnitude ratios of 1.0 at every step: no ratios
               are published for a random model; it shows the mechanism only
and renders, 17-frame windows at 64x64, --steps steps, guidance 5:
  crossfade    one window alone (the renderer's `render`)
  latent       a 2-window job (25 frames, windows of 17 overlapping by 8) co-denoised on
               one shard (farm.latent.ShardRunner, as an actor runs it)
For each: wall seconds (the fastest of --repeats renders on the same renderer; every
render starts each window's cache empty), the share of the transformer blocks' work skipped (the report's
`cache.skipped`), and the largest difference from the uncached frames in 8-bit levels.

Resume (when --models has tiny): per kind, the latent job run straight through against the same job
stopped after step --resume-at and resumed from its latents on fresh renderers (a
checkpoint resume: every window's cache restarts empty), largest difference in levels.

Usage: scripts/bench_cache.py [--models tiny,1.3b,FOLDER|HUB_ID] [--steps 8] [--resume-at 4] [--repeats 3]
                              [--device cpu|cuda] [--length 17] [--width 64] [--height 64] [--dtype auto]
                              [--json PATH]
On a GPU: --models Wan-AI/Wan2.1-T2V-1.3B-Diffusers --device cuda --dtype bf16 --length 81
--width 832 --height 480 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from _bench import cpu_model  # noqa: E402

from farm.codenoise import LatentJob, checkpoint_steps, fuse_weights, partition  # noqa: E402
from farm.latent import ShardRunner  # noqa: E402
from farm.pipelines import descriptor  # noqa: E402
from farm.plan import plan_windows  # noqa: E402
from farm.renderers import renderer_class  # noqa: E402
from farm.spec import parse_spec  # noqa: E402
from farm.tasks import WindowTask  # noqa: E402

DEVICE = "cpu"

CONFIGS = {
    "none": None,
    "first_block": {"kind": "first_block"},
    "taylorseer": {"kind": "taylorseer"},
    "pab": {"kind": "pab"},
    "mag": {"kind": "mag", "mag_ratios": [1.0, 1.0]},
}


def build_13b(folder: Path) -> Path:
    """A WanPipeline folder: the 1.3B transformer's shape with random weights, tiny VAE,
    a tiny text encoder of width 4096 and the tiny tokenizer."""
    if (folder / "model_index.json").exists():
        return folder
    from diffusers import WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from farm.models.tiny import _wan_components

    parts = _wan_components(None)
    torch.manual_seed(0)
    parts["transformer"] = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    torch.manual_seed(0)
    parts["text_encoder"] = UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=4096, d_kv=8, num_heads=4,
                                                        num_layers=2, d_ff=37, relative_attention_num_buckets=8))
    tmp = folder.with_name(folder.name + ".tmp")
    WanPipeline(**parts).save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, folder)
    return folder


#: the window's shape: --length frames (4k + 1) at --width x --height, in --dtype
SHAPE = {"length": 17, "width": 64, "height": 64, "dtype": "auto"}


def spec_for(base: str, cache: dict | None, steps: int, frames: int, reconcile: str):
    model = {"pipeline": "wan", "base": base, "warmup": False, "dtype": SHAPE["dtype"]} | (
        {"cache": cache} if cache else {})
    return parse_spec({"model": model, "prompt": "a red fox running through snow", "negative_prompt": "blurry",
                       "frames": frames, "fps": 16, "width": SHAPE["width"], "height": SHAPE["height"],
                       "steps": steps, "guidance": 5.0, "seed": 1, "wan": {"max_sequence_length": 16},
                       "window": {"length": SHAPE["length"], "overlap": 8, "reconcile": reconcile},
                       "output": "/tmp/bench_cache.mp4"})


def latent_run(renderers, spec, stop_at: int | None = None, latents=None, start: int = 0):
    """The job's shards (one per renderer) stepped in lockstep from `start` (with
    `latents`, the whole video's); stopped after `stop_at` steps: returns the latents, else
    the decoded frames (uint8)."""
    plan = plan_windows(spec)
    windows = plan.latent_windows
    job = LatentJob(windows, fuse_weights(windows, spec.window.blend), spec.steps, spec.seed, spec.height,
                    spec.width, checkpoint_steps(spec.steps, spec.window.checkpoint_every), causal_decode=True)
    tasks = [WindowTask.from_spec(spec, w) for w in plan.windows]
    cut = partition(windows, len(renderers))
    runners = [ShardRunner(r, job, s, [tasks[w] for w in s.windows], start,
                           None if latents is None else latents[:, :, s.covers[0]:s.covers[1]])
               for r, s in zip(renderers, cut)]
    for _ in range(start, stop_at or job.steps):
        sent = [r.evaluate() for r in runners]
        for s, r in zip(cut, runners):
            r.apply([sent[k][cut[k].peers.index(s.index)] for k in s.peers])
    if stop_at is not None:
        return np.concatenate([r.owned_latents() for r in runners], axis=2)
    frames, carry = [], None
    for r in runners:
        got, carry = r.decode(*r.shard.owns, carry=carry, hand_over=True)
        frames.append(got)
    return np.concatenate(frames), [r.stats.cache for r in runners]


def measure(base: str, steps: int, repeats: int) -> list[dict]:
    rows, reference = [], {}
    for name, cache in CONFIGS.items():
        for mode in ("crossfade", "latent"):
            spec = spec_for(base, cache, steps, SHAPE["length"] + (0 if mode == "crossfade" else 8), mode)
            renderer = renderer_class("wan")(spec, DEVICE)
            walls = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                if mode == "crossfade":
                    task = WindowTask.from_spec(spec, plan_windows(spec).windows[0])
                    frames = np.clip(np.rint(renderer.render(task) * 255), 0, 255).astype(np.uint8)
                    skipped = (renderer.last_cache or {}).get("skipped", 0.0)
                else:
                    frames, stats = latent_run([renderer], spec)
                    skipped = stats[0]["skipped"] if stats[0] else 0.0
                walls.append(time.perf_counter() - t0)
            wall = min(walls)
            if DEVICE.startswith("cuda"):
                torch.cuda.synchronize()
            reference.setdefault(mode, frames)
            diff = int(np.abs(frames.astype(np.int16) - reference[mode]).max())
            rows.append({"model": base, "cache": name, "mode": mode, "wall_s": round(wall, 2),
                         "skipped": skipped, "max_diff_levels": diff})
            print(json.dumps(rows[-1]), flush=True)
            del renderer
    return rows


def resume(base: str, steps: int, at: int) -> list[dict]:
    rows = []
    for name, cache in CONFIGS.items():
        spec = spec_for(base, cache, steps, 2 * SHAPE["length"] + 7, "latent")
        straight, _ = latent_run([renderer_class("wan")(spec, DEVICE) for _ in range(2)], spec)
        halfway = latent_run([renderer_class("wan")(spec, DEVICE) for _ in range(2)], spec, stop_at=at)
        resumed, _ = latent_run([renderer_class("wan")(spec, DEVICE) for _ in range(2)], spec,
                                latents=halfway, start=at)
        rows.append({"model": base, "cache": name, "resumed_at_step": at,
                     "max_diff_levels": int(np.abs(resumed.astype(np.int16) - straight).max())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,1.3b",
                        help="tiny, 1.3b (random weights), or a real checkpoint (a folder or hub id)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU measurement")
    parser.add_argument("--length", type=int, default=17, help="window frames (4k + 1; 81 for Wan's native)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="fp32 on CPU; fp16 on CUDA unless bf16 is asked")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--resume-at", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="renders per configuration for the tiny model "
                                                                "(the 1.3B-shaped one renders once)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    SHAPE.update(length=args.length, width=args.width, height=args.height, dtype=args.dtype)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    gpu = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else "no GPU"
    print(f"# {cpu_model()}, {gpu}, torch {torch.__version__}, 1 thread, {SHAPE}", flush=True)
    from farm.models.tiny import tiny_model_path

    cache_root = Path(os.environ.get("FARM_CACHE", ROOT / ".cache/farm"))
    bases = {"tiny": str(tiny_model_path(descriptor("wan").tiny_base)),
             "1.3b": lambda: str(build_13b(cache_root / "bench" / "wan-1.3b-shaped-random"))}
    out = {"steps": args.steps, "runs": [], "resume": []}
    for model in args.models.split(","):
        base = bases["tiny"] if model == "tiny" else bases["1.3b"]() if model == "1.3b" else model
        out["runs"] += measure(base, args.steps, args.repeats if model == "tiny" else 1)
    if "tiny" in args.models.split(","):
        out["resume"] = resume(bases["tiny"], args.steps, args.resume_at)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
