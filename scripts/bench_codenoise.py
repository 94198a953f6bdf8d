#!/usr/bin/env python
"""Benchmark (not a test): co-denoising (`window.reconcile: latent`) against the crossfade
and against diffusers' own FreeNoise, side by side in one run per part.

`window.reconcile: latent` denoises the overlapping windows together on the actors (each
actor a contiguous shard of windows; every step the shards swap their per-window noise
predictions for the frames they share); `crossfade` renders each window alone and blends
the decoded overlaps in pixels. Four parts, one subcommand each:

ratio      The same job (tiny AnimateDiff, default 76 frames = 6 windows of 16/4, 64x64,
           8 DDIM steps) on the same number of actors, 1 torch thread each, rendered
           `latent` and `crossfade`, interleaved over --repeats: wall(latent) / wall(crossfade)
           of the render stage (report["stages"]["render"]: after the actors are up and
           warmed up), as the ratio of the minima and the median of the per-repeat ratios
           (target <= 1.10); latent's `wait_share` (share of the shards' time not spent
           computing: barrier + exchange) and exchange bytes per step; and
           E(2) = T_latent(1 actor) / (2 * T_latent(2 actors)) (target >= 0.85), with
           crossfade's E(2) beside it. On a 2-core box, 2 actors at 1 thread fill the
           machine: the driver, ffmpeg and Ray's daemons take their CPU from the actors.
freenoise  The same long video through diffusers' FreeNoise in one process
           (AnimateDiffPipeline loaded as farm/models/load.py `load_animatediff` loads it,
           `pipe.enable_free_noise(context_length=16, context_stride=...)`, same prompt,
           size, frames, steps, guidance; the frames are written to an mp4 with
           farm.encode.VideoWriter as the farm does), against the farm's latent mode on 1
           and 2 actors. Each configuration runs in its own fresh child process (the farm's
           child starts its own local Ray). Wall: FreeNoise's call + encode, after an
           unrecorded 1-step warm-up call (the farm's actors warm up too); the farm's render
           stage. Memory, per process: VmHWM (peak RSS) of the FreeNoise process, of each
           farm actor and of the farm's driver, over the whole life and "during the render"
           (the peak is reset through /proc/<pid>/clear_refs once loading and warm-up are
           done: FreeNoise just before its timed call, the farm's processes when the driver
           enters its render stage); plus the peak of the summed PSS of the child's whole
           process tree (raylet, GCS, Ray workers, ffmpeg included), sampled every ~1 s.
           A sampler thread in each child reads /proc/<pid>/status of the tree every 0.2 s;
           farm actors are read once more, synchronously, when the driver reports
           "finishing" (every shard done, actors not yet stopped), so their peaks miss
           nothing. FreeNoise runs at --fn-strides (4: diffusers' default, windows every 4
           frames; 12: the farm's geometry, windows of 16 overlapping by 4) and at 1 and all
           threads.
sim        SIMULATED: one machine announces --actors logical GPUs to Ray (as
           scripts/bench_scale.py does); `model.faults.simulate_seconds: S` makes each
           window's prediction sleep S/steps per step in a real PipelineActor
           (farm.faults.SimulatedRenderer). Latent mode, --windows windows, 20 steps, 32x32:
           overhead = (render stage - ideal) / ideal, ideal = ceil(windows/actors) * S
           (target <= 3 %), and what the per-step barrier costs; the same job in crossfade
           beside it (--no-crossfade to skip). FARM_LATENT_PLACEMENT_S is raised to 900 s here
           (default 120 s) so a slow start of 64 actors on 2 cores does not start the job
           on fewer.
transport  SIMULATED actors (as `sim`, --actors 4 --windows 8 --seconds 1 suit it): the farm's
           transport (`refs`: predictions go from actor to actor by object ref, every step
           submitted at once) against the driver relay (`driver`: FARM_LATENT_TRANSPORT's
           other value), at --sizes 32,512, interleaved: denoise wall and wait_share.
seams      The tiny model, --seeds seeds, both modes (1 actor): per-seam disagreement of the
           neighbouring windows (crossfade) vs fused (latent), the seam jump ratios
           (farm.metrics.seam_ratios), flicker score, and how far the two videos are apart
           in the overlaps and outside them. --fullsize DIR adds one seed on SD1.5-shaped
           random-weight models (scripts/_fullsize.py), 1 actor, at a small size.

Commands (repository root; `all` runs the four parts one after the other):

    .venv/bin/python scripts/bench_codenoise.py ratio [--frames 76 --steps 8 --repeats 3]
    .venv/bin/python scripts/bench_codenoise.py freenoise [--frames 76 --steps 8 --repeats 2]
    .venv/bin/python scripts/bench_codenoise.py sim [--actors 64 --windows 128 --seconds 4 --steps 20]
    .venv/bin/python scripts/bench_codenoise.py seams [--seeds 3] [--fullsize /tmp/models]
    .venv/bin/python scripts/bench_codenoise.py transport --actors 4 --windows 8 --seconds 1 --sim-steps 10 --repeats 3
"""

from __future__ import annotations

import os

# Set before anything imports scheduler.driver (it reads it at import): on 2 cores, 64
# actors take 1.5-2.5 min to start, and a latent job would otherwise start on those placed
# after 120 s.
os.environ.setdefault("FARM_LATENT_PLACEMENT_S", "900")

from _bench import Periodic, cpu_model  # noqa: E402
from bench_scale import CpuSampler, analyse  # noqa: E402  (also puts the repository on sys.path)
from bench_scale import job as sim_job  # noqa: E402

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

CORES = os.cpu_count() or 1


# -- jobs ------------------------------------------------------------------------------------
def with_fields(spec, **fields):
    """`spec` with dotted fields changed (`window__reconcile="latent"`), validated again."""
    from farm.spec import parse_spec

    data = spec.model_dump(mode="json")
    for dotted, value in fields.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    return parse_spec(data)


def tiny_job(frames: int, size: int, steps: int, reconcile: str, out: str, models: tuple | None = None):
    """scripts/bench_overhead.py's job (tiny AnimateDiff, windows 16/4), in `reconcile` mode."""
    from bench_overhead import job

    return with_fields(job(frames, out, size, steps, models), window__reconcile=reconcile)


def farm(spec, workers: int, threads: int, progress=None) -> dict:
    from scheduler.driver import render

    return render(spec, workers=workers, threads=threads, store=False, progress=progress)


def start_ray(**kw) -> None:
    import ray

    # a private local cluster even when a `ray start` head runs on this machine (as
    # scheduler.cluster.connect does): a bare ray.init() would try to join that one
    ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local", include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False, **kw)


def ratios(a: list[float], b: list[float]) -> tuple[float, float]:
    """(min(a) / min(b), median of the per-repeat ratios)."""
    return min(a) / min(b), statistics.median(x / y for x, y in zip(a, b))


def machine_line() -> str:
    return f"machine: {CORES} cores, {cpu_model()}, no GPU used"


# -- 1. ratio --------------------------------------------------------------------------------
def part_ratio(args) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-codenoise-ratio-")
    start_ray(num_cpus=CORES)
    configs = [("latent", 2), ("crossfade", 2), ("latent", 1), ("crossfade", 1)]
    specs = {mode: tiny_job(args.frames, args.size, args.steps, mode, os.path.join(tmp, f"{mode}.mp4"))
             for mode in ("latent", "crossfade")}
    runs: dict[str, list[dict]] = {f"{m}/{w}": [] for m, w in configs}

    def one(mode: str, workers: int) -> dict:
        load = os.getloadavg()[0]
        with CpuSampler(period=0.5) as cpu:
            t_call = time.perf_counter()
            rep = farm(specs[mode], workers, 1)
        t0 = t_call + rep["stages"]["plan"] + rep["stages"]["startup"]
        row = {"render": rep["stages"]["render"], "startup": rep["stages"]["startup"], "load": load,
               **cpu.between(t0, t0 + rep["stages"]["render"])}
        if mode == "latent":
            lat = rep["latent"]
            shards = lat["shard_stats"]
            row |= {"wait_share": lat["wait_share"], "bytes": lat["exchange_bytes_per_step"],
                    "denoise": lat["denoise_seconds"], "actors": lat["actors"],
                    # the actors' own compute per window (denoise + decode), free of any waiting
                    "per_window": statistics.mean((x["predict_s"] + x["fold_s"] + x["step_s"] + x["decode_s"])
                                                  / len(x["windows"]) for x in shards)}
        else:
            row["per_window"] = statistics.mean(w["seconds"] for w in rep["windows"])
        return row

    one("latent", 2)  # unrecorded: the Ray session's first-call costs
    for r in range(args.repeats):
        for mode, workers in configs:
            runs[f"{mode}/{workers}"].append(one(mode, workers))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]['render']:.2f}s (load {v[-1]['load']:.1f}, others "
                                              f"{v[-1]['others_cpu']:.2f} cores)" for k, v in runs.items()), flush=True)
    import ray

    ray.shutdown()
    t = {k: [x["render"] for x in v] for k, v in runs.items()}
    from farm.plan import plan_windows

    windows = len(plan_windows(specs["latent"]).windows)
    print()
    print(machine_line())
    print(f"job: tiny AnimateDiff, {args.frames} frames = {windows} windows of 16 (overlap 4), {args.size}x{args.size}, "
          f"{args.steps} DDIM steps, fp32 on CPU, 1 torch thread per actor, store off; {args.repeats} interleaved "
          f"repeats. 2 actors x 1 thread fill the {CORES} cores: the driver, ffmpeg and Ray's daemons share them.")
    print(f"{'render stage (s)':<22}" + "".join(f"{k:>14}" for k in t))
    print(f"{'  min':<22}" + "".join(f"{min(v):>14.3f}" for v in t.values()))
    print(f"{'  median':<22}" + "".join(f"{statistics.median(v):>14.3f}" for v in t.values()))
    print(f"{'actor s per window':<22}" + "".join(f"{statistics.median(x['per_window'] for x in v):>14.3f}"
                                                  for v in runs.values()))
    print(f"{'load avg before (med)':<22}" + "".join(f"{statistics.median(x['load'] for x in v):>14.1f}"
                                                   for v in runs.values()))
    print(f"{'others CPU (cores)':<22}" + "".join(f"{statistics.median(x['others_cpu'] for x in v):>14.2f}"
                                                for v in runs.values()))
    print(f"{'this job CPU (cores)':<22}" + "".join(f"{statistics.median(x['ours_cpu'] for x in v):>14.2f}"
                                                  for v in runs.values()))
    lo, med = ratios(t["latent/2"], t["crossfade/2"])
    print(f"latent / crossfade, 2 actors x 1 thread: {lo:.3f}x (median of per-repeat ratios {med:.3f}x); "
          f"target <= 1.10: {'MET' if med <= 1.10 else 'NOT MET'} (median), {'MET' if lo <= 1.10 else 'NOT MET'} (minima)")
    lo1, med1 = ratios(t["latent/1"], t["crossfade/1"])
    print(f"latent / crossfade, 1 actor x 1 thread:  {lo1:.3f}x (median of per-repeat ratios {med1:.3f}x)")
    for k in ("latent/2", "latent/1"):
        v = runs[k]
        shares = ", ".join(f"{x['wait_share']:.4f}" for x in v)
        print(f"{k}: wait_share median {statistics.median(x['wait_share'] for x in v):.4f} "
              f"(all {shares}); exchange {v[0]['bytes']} bytes/step; "
              f"denoise {statistics.median(x['denoise'] for x in v):.3f} s of render "
              f"{statistics.median(x['render'] for x in v):.3f} s (median)")
    for k, v in t.items():
        print(f"  {k:<12} all repeats (s): " + ", ".join(f"{x:.2f}" for x in v))
    print("actor s per window: the actors' own compute per window (latent: the shards' predict + fold + step + "
          "decode, per window; crossfade: the window's seconds), median over repeats")
    e2 = lambda m: (min(t[f"{m}/1"]) / (2 * min(t[f"{m}/2"])),  # noqa: E731
                    statistics.median(a / (2 * b) for a, b in zip(t[f"{m}/1"], t[f"{m}/2"])))
    el, elm = e2("latent")
    ec, ecm = e2("crossfade")
    print(f"E(2) latent    = T1 / (2 T2): {el:.3f} (minima), {elm:.3f} (median per repeat); target >= 0.85: "
          f"{'MET' if min(el, elm) >= 0.85 else ('NOT MET' if max(el, elm) < 0.85 else 'MIXED')}")
    print(f"E(2) crossfade = T1 / (2 T2): {ec:.3f} (minima), {ecm:.3f} (median per repeat)")


# -- 2. freenoise ----------------------------------------------------------------------------
def _status(pid: int | str) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a process; {} if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS", "VmHWM")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory(Periodic):
    """Samples the memory of this process and all its descendants every `period` s (see the
    module docstring). `mark()` resets every tree process's peak (clear_refs 5) and starts
    the "during the render" peaks; `sample()` may also be called directly."""

    def __init__(self, period: float = 0.2, pss_every: int = 5):
        import psutil

        super().__init__(period)
        self.me = psutil.Process()
        self.pss_every = pss_every
        self.procs: dict[int, dict] = {}  # pid -> {name, hwm, hwm_run, rss_mark}
        self.pss_peak = 0
        self.marked = False
        self.lock = threading.Lock()
        self._n = 0

    def _tree(self) -> list:
        import psutil

        try:
            return [self.me, *self.me.children(recursive=True)]
        except psutil.Error:
            return [self.me]

    def _name(self, p) -> str:
        try:
            cmd = p.cmdline()
            return (cmd[0] if cmd else p.name()).split("/")[-1][:40]
        except Exception:  # noqa: BLE001 - gone, or a zombie
            return "?"

    def sample(self) -> None:
        with self.lock:
            tree = self._tree()
            pss = 0
            for p in tree:
                st = _status(p.pid)
                if not st:
                    continue
                rec = self.procs.setdefault(p.pid, {"name": self._name(p), "hwm": 0, "hwm_run": 0, "rss_mark": None})
                rec["hwm"] = max(rec["hwm"], st.get("VmHWM", 0))
                if self.marked:
                    rec["hwm_run"] = max(rec["hwm_run"], st.get("VmHWM", 0))
                if self._n % self.pss_every == 0:
                    pss += _pss(p.pid)
            if self._n % self.pss_every == 0:
                self.pss_peak = max(self.pss_peak, pss)
            self._n += 1

    def mark(self) -> None:
        """Reset the peaks (the processes' own VmHWM) to their current RSS."""
        with self.lock:
            for p in self._tree():
                try:
                    with open(f"/proc/{p.pid}/clear_refs", "w") as fh:
                        fh.write("5")
                except OSError:
                    continue
                st = _status(p.pid)
                rec = self.procs.setdefault(p.pid, {"name": self._name(p), "hwm": 0, "hwm_run": 0, "rss_mark": None})
                rec["rss_mark"] = st.get("VmRSS")
            self.marked = True
        self.sample()

    def tick(self) -> None:
        self.sample()


def _mib(kb: float) -> float:
    return kb / 1024


def _child_freenoise(cfg: dict) -> dict:
    import torch

    from farm.encode import VideoWriter
    from farm.models.load import load_animatediff
    from farm.util import unit_to_uint8

    spec = tiny_job(cfg["frames"], cfg["size"], cfg["steps"], "latent", cfg["out"])
    with TreeMemory() as mem:
        torch.set_num_threads(cfg["threads"])
        t0 = time.perf_counter()
        pipe, _ = load_animatediff(spec.model, "cpu")  # the farm's loader: scheduler, settings, fp32 on CPU
        pipe.enable_free_noise(context_length=spec.window.length, context_stride=cfg["stride"])
        load_s = time.perf_counter() - t0
        call = {"prompt": spec.prompt, "negative_prompt": spec.negative_prompt or None, "num_frames": spec.frames,
                "height": spec.height, "width": spec.width, "guidance_scale": spec.guidance, "output_type": "np"}
        with torch.inference_mode():
            pipe(**call, num_inference_steps=1, generator=torch.Generator("cpu").manual_seed(spec.seed))  # warm-up
        mem.mark()
        t0 = time.perf_counter()
        with torch.inference_mode():
            video = pipe(**call, num_inference_steps=spec.steps,
                         generator=torch.Generator("cpu").manual_seed(spec.seed)).frames[0]
        with VideoWriter(spec.output, spec.width, spec.height, spec.fps, spec.encode.crf) as out:
            for frame in video:
                out.write(unit_to_uint8(frame))
        wall = time.perf_counter() - t0
        mem.sample()
    own = mem.procs[os.getpid()]
    return {"wall": wall, "load_s": load_s, "frames_out": len(video), "peak": _mib(own["hwm"]),
            "peak_run": _mib(own["hwm_run"]), "rss_mark": _mib(own["rss_mark"] or 0), "tree_pss": _mib(mem.pss_peak),
            "procs": len(mem.procs)}


def _child_farm(cfg: dict) -> dict:
    from scheduler.progress import NullProgress

    spec = tiny_job(cfg["frames"], cfg["size"], cfg["steps"], "latent", cfg["out"])
    start_ray(num_cpus=CORES)

    class Marks(NullProgress):
        """Resets the peaks when the render stage starts; reads the actors once more when
        every shard is done and before they are stopped."""

        def __init__(self, mem):
            self.mem = mem

        def stage(self, name: str) -> None:
            if name == "rendering":
                self.mem.mark()
            elif name == "finishing":
                self.mem.sample()

    with TreeMemory() as mem:
        rep = farm(spec, cfg["actors"], cfg["threads"], progress=Marks(mem))
        mem.sample()
    actor_pids = {a["pid"] for a in rep["actors"]}
    actors = [mem.procs[p] for p in actor_pids if p in mem.procs]
    own = mem.procs[os.getpid()]
    import ray

    ray.shutdown()
    return {"wall": rep["stages"]["render"], "startup": rep["stages"]["startup"], "frames_out": rep["output_frames"],
            "actors_found": len(actors), "actor_peak": _mib(max(a["hwm"] for a in actors)),
            "actor_peak_run": _mib(max(a["hwm_run"] for a in actors)),
            "actor_rss_mark": _mib(max(a["rss_mark"] or 0 for a in actors)),
            "actor_peak_sum": _mib(sum(a["hwm"] for a in actors)),
            "driver_peak": _mib(own["hwm"]), "driver_peak_run": _mib(own["hwm_run"]),
            "tree_pss": _mib(mem.pss_peak), "procs": len(mem.procs),
            "wait_share": rep["latent"]["wait_share"], "bytes": rep["latent"]["exchange_bytes_per_step"]}


def _child(cfg_json: str) -> None:
    cfg = json.loads(cfg_json)
    result = _child_freenoise(cfg) if cfg["kind"] == "freenoise" else _child_farm(cfg)
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "_child", json.dumps(cfg)],
                          capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {cfg} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def part_freenoise(args) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-codenoise-fn-")
    base = {"frames": args.frames, "size": args.size, "steps": args.steps}
    configs = {}
    for stride in args.fn_strides:
        for threads in args.fn_threads:
            configs[f"FreeNoise s{stride} t{threads}"] = {"kind": "freenoise", "stride": stride, "threads": threads}
    for actors in (1, 2):
        configs[f"farm latent {actors}x1"] = {"kind": "farm", "actors": actors, "threads": 1}
    rows: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(args.repeats):
        for name, cfg in configs.items():
            load = os.getloadavg()[0]
            res = _spawn(base | cfg | {"out": os.path.join(tmp, name.replace(" ", "_") + ".mp4")})
            rows[name].append(res | {"load": load})
            print(f"repeat {r + 1} {name}: wall {res['wall']:.2f} s, frames {res['frames_out']}, "
                  + (f"peak {res['peak']:.0f} MiB (render {res['peak_run']:.0f})" if cfg["kind"] == "freenoise" else
                     f"actor peak {res['actor_peak']:.0f} MiB (render {res['actor_peak_run']:.0f}), "
                     f"driver {res['driver_peak']:.0f} MiB")
                  + f", tree PSS {res['tree_pss']:.0f} MiB; load avg before {load:.1f}", flush=True)
    med = lambda name, key: statistics.median(x[key] for x in rows[name])  # noqa: E731
    print()
    print(machine_line())
    print(f"job: tiny AnimateDiff, {args.frames} frames, {args.size}x{args.size}, {args.steps} DDIM steps, guidance 7.5, "
          f"fp32 on CPU; FreeNoise context 16, strides {args.fn_strides}; the farm: windows 16/4, latent, store off. "
          f"Each configuration in a fresh process; {args.repeats} interleaved repeats; wall = min, memory = median.")
    print(f"{'configuration':<22}{'wall min (s)':>13}{'wall med (s)':>13}{'peak/proc MiB':>14}{'during render':>14}"
          f"{'RSS at start':>13}{'driver MiB':>11}{'sum actors':>11}{'tree PSS':>10}")
    for name, cfg in configs.items():
        wall = [x["wall"] for x in rows[name]]
        if cfg["kind"] == "freenoise":
            cols = (med(name, "peak"), med(name, "peak_run"), med(name, "rss_mark"), float("nan"), float("nan"))
        else:
            cols = (med(name, "actor_peak"), med(name, "actor_peak_run"), med(name, "actor_rss_mark"),
                    med(name, "driver_peak"), med(name, "actor_peak_sum"))
        print(f"{name:<22}{min(wall):>13.3f}{statistics.median(wall):>13.3f}{cols[0]:>14.0f}{cols[1]:>14.0f}"
              f"{cols[2]:>13.0f}{cols[3]:>11.0f}{cols[4]:>11.0f}{med(name, 'tree_pss'):>10.0f}")
    farm1, farm2 = [x["wall"] for x in rows["farm latent 1x1"]], [x["wall"] for x in rows["farm latent 2x1"]]
    for stride in args.fn_strides:
        for threads, farm_t in ((1, farm1), (CORES, farm2)):
            name = f"FreeNoise s{stride} t{threads}"
            if name in rows:
                lo, m = ratios(farm_t, [x["wall"] for x in rows[name]])
                farm_name = "farm latent 1x1" if threads == 1 else "farm latent 2x1"
                peak = med(farm_name, "actor_peak") / med(name, "peak")
                print(f"{farm_name} / {name}: wall {lo:.3f}x (minima), {m:.3f}x (median per repeat); "
                      f"peak per process (largest actor / FreeNoise) {peak:.3f}x")
    print("peak/proc: FreeNoise = its one process; farm = the largest actor. 'during render' = peak after the reset "
          "at the start of the timed part; 'RSS at start' = RSS at that reset. tree PSS: summed PSS of every process "
          "of the child (sampled ~1 s).")


# -- 3. sim ----------------------------------------------------------------------------------
def part_sim(args) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-codenoise-sim-")
    start_ray(num_cpus=args.actors + 4, num_gpus=args.actors)
    print(f"SIMULATION: {args.actors} logical GPUs on one machine ({CORES} cores, {cpu_model()}); each window's "
          f"prediction sleeps S/steps = {args.seconds / args.steps:g} s per step in a real PipelineActor", flush=True)
    base = sim_job(args.windows, 16, 4, args.size, args.seconds, os.path.join(tmp, "sim.mp4"))
    modes = ["latent"] + ([] if args.no_crossfade else ["crossfade"])
    out = {}
    for mode in modes:
        spec = with_fields(base, steps=args.steps, window__reconcile=mode)
        load = os.getloadavg()[0]
        with CpuSampler(period=0.5) as cpu:
            t_call = time.perf_counter()
            rep = farm(spec, args.actors, 1)
        st = rep["stages"]
        t0 = t_call + st["plan"] + st["startup"]
        row = {"load": load, "render": st["render"], "startup": st["startup"], **cpu.between(t0, t0 + st["render"])}
        if mode == "latent":
            row["latent"] = rep["latent"]
        else:
            row["analysis"] = analyse(rep, args.actors, args.seconds)
        out[mode] = row
        print(f"{mode}: startup {st['startup']:.1f} s (not counted), render {st['render']:.3f} s; "
              f"load avg before {load:.1f}", flush=True)
    import ray

    ray.shutdown()
    n, a, s, steps = args.windows, args.actors, args.seconds, args.steps
    ideal = math.ceil(n / a) * s
    print()
    print("=== SIMULATION (SimulatedRenderer sleeps; not a real model, not real GPUs) ===")
    print(f"machine: {CORES} cores, {cpu_model()}; Ray with {a} logical GPUs; {n} windows of 16/4 "
          f"({base.frames} frames {args.size}x{args.size}), S = {s:g} s per window, {steps} steps; store off")
    lat = out["latent"]
    L = lat["latent"]
    busy = [x["predict_s"] + x["fold_s"] + x["step_s"] for x in L["shard_stats"]]
    slept = [len(x["windows"]) * s for x in L["shard_stats"]]
    over = (lat["render"] - ideal) / ideal
    print(f"latent: actors asked {L['actors_asked']}, placed {L['actors_placed']}, shards {L['actors']}")
    print(f"  ideal = ceil({n}/{a}) x {s:g} s             {ideal:10.3f} s")
    print(f"  render stage wall                  {lat['render']:10.3f} s")
    print(f"  OVERHEAD (render - ideal) / ideal  {100 * over:9.2f} %   target <= 3 %: {'MET' if over <= 0.03 else 'NOT MET'}")
    print(f"  denoise loop (all steps)           {L['denoise_seconds']:10.3f} s  -> per step beyond ideal "
          f"{1000 * (L['denoise_seconds'] - ideal) / steps:7.1f} ms (the per-step barrier: exchange + Ray calls)")
    print(f"  begin + decode + stats (rest)      {lat['render'] - L['denoise_seconds']:10.3f} s")
    print(f"  wait_share (shards not computing)  {L['wait_share']:10.4f}")
    print(f"  shard busy beyond its sleep: mean {1000 * statistics.mean(b - x for b, x in zip(busy, slept)) / steps:.1f} "
          f"ms/step, max {1000 * max(b - x for b, x in zip(busy, slept)) / steps:.1f} ms/step (slicing, fold, step)")
    print(f"  exchange {L['exchange_bytes_per_step']} bytes per step (all shards)")
    print(f"  machine CPU busy {lat['machine_busy']:.2f}; this job {lat['ours_cpu']:.2f} cores, others "
          f"{lat['others_cpu']:.2f}, driver {lat['driver_cpu']:.2f}; load avg before {lat['load']:.1f}")
    if "crossfade" in out:
        c = out["crossfade"]
        an = c["analysis"]
        print(f"crossfade, same job: render {c['render']:.3f} s, overhead {100 * an['overhead']:+.2f} %; "
              f"latent / crossfade wall {lat['render'] / c['render']:.3f}x; load avg before {c['load']:.1f}; "
              f"others CPU {c['others_cpu']:.2f}")


# -- 5. transport ----------------------------------------------------------------------------
def part_transport(args) -> None:
    """The two ways predictions can travel between shards, side by side: `refs` (the farm's:
    each step's object refs go straight into the peers' next calls, all steps submitted at
    once) and `driver` (the driver fetches every step's predictions and submits the next
    step with the values). SIMULATED actors (as `sim`), at two frame sizes: at 32x32 a
    prediction piece is a few KB (Ray inlines it in the reply to the owner, the driver);
    at 512x512 it is 256 KB (Ray's shared-memory object store, fetched by the peer)."""
    import scheduler.codenoise as codenoise

    tmp = tempfile.mkdtemp(prefix="bench-codenoise-transport-")
    start_ray(num_cpus=args.actors + 4, num_gpus=args.actors)
    rows: dict[tuple[int, str], list[dict]] = {}
    specs = {size: with_fields(sim_job(args.windows, 16, 4, size, args.seconds, os.path.join(tmp, f"t{size}.mp4")),
                               steps=args.steps, window__reconcile="latent") for size in args.sizes}
    for r in range(args.repeats):
        for size in args.sizes:
            for transport in ("refs", "driver"):
                codenoise.TRANSPORT = transport
                rep = farm(specs[size], args.actors, 1)
                lat = rep["latent"]
                rows.setdefault((size, transport), []).append(
                    {"render": rep["stages"]["render"], "denoise": lat["denoise_seconds"], "wait": lat["wait_share"],
                     "bytes": lat["exchange_bytes_per_step"]})
                print(f"repeat {r + 1}: {size}x{size} {transport}: denoise {lat['denoise_seconds']:.3f} s, "
                      f"wait_share {lat['wait_share']:.4f}", flush=True)
    codenoise.TRANSPORT = "refs"
    import ray

    ray.shutdown()
    ideal = math.ceil(args.windows / args.actors) * args.seconds
    print()
    print("=== SIMULATION (SimulatedRenderer sleeps; not a real model) ===")
    print(f"machine: {CORES} cores, {cpu_model()}; {args.actors} simulated actors, {args.windows} windows of 16/4, "
          f"S = {args.seconds:g} s per window, {args.steps} steps; ideal denoise {ideal:.3f} s; "
          f"{args.repeats} interleaved repeats")
    print(f"{'size':>9} {'transport':>10} {'denoise min':>12} {'median':>8} {'per step over ideal':>20} "
          f"{'wait_share':>11} {'bytes/step':>11}")
    for (size, transport), v in rows.items():
        d = [x["denoise"] for x in v]
        print(f"{size:>9} {transport:>10} {min(d):>12.3f} {statistics.median(d):>8.3f} "
              f"{1000 * (min(d) - ideal) / args.steps:>17.1f} ms {statistics.median(x['wait'] for x in v):>11.4f} "
              f"{v[0]['bytes']:>11}")
    for size in args.sizes:
        lo, med = ratios([x["denoise"] for x in rows[(size, "driver")]], [x["denoise"] for x in rows[(size, "refs")]])
        print(f"{size}x{size}: driver / refs denoise wall {lo:.3f}x (minima), {med:.3f}x (median per repeat)")


# -- 4. seams --------------------------------------------------------------------------------
def _frames(path: str) -> np.ndarray:
    from farm.video import iter_frames

    return np.stack(list(iter_frames(path))).astype(np.float32)


def _overlap_mask(windows, frames: int) -> np.ndarray:
    covered = np.zeros(frames, dtype=int)
    for w in windows:
        covered[w.start : w.end] += 1
    return covered > 1


def _seam_pair(specs: dict, workers: int, threads: int) -> dict:
    reps = {mode: farm(spec, workers, threads) for mode, spec in specs.items()}
    from farm.plan import plan_windows

    windows = plan_windows(specs["latent"]).windows
    a, b = _frames(specs["latent"].output), _frames(specs["crossfade"].output)
    diff = np.abs(a - b).mean(axis=(1, 2, 3))
    mask = _overlap_mask(windows, len(diff))
    return {"reps": reps, "diff_overlap": float(diff[mask].mean()), "diff_alone": float(diff[~mask].mean())}


def part_seams(args) -> None:
    from bench_seams import job as seam_job

    tmp = tempfile.mkdtemp(prefix="bench-codenoise-seams-")
    start_ray(num_cpus=CORES)
    results = []
    for seed in range(args.seeds):
        specs = {m: with_fields(seam_job(args.frames, args.size, args.seam_steps, seed, "linear",
                                         os.path.join(tmp, f"{m}-{seed}.mp4")), window__reconcile=m)
                 for m in ("crossfade", "latent")}
        res = _seam_pair(specs, 1, CORES)
        results.append(res)
        c, l = res["reps"]["crossfade"], res["reps"]["latent"]
        print(f"seed {seed}: crossfade ratio max {c['seam_ratio_max']:.3f}, latent {l['seam_ratio_max']:.3f}; flicker "
              f"{c['flicker']['score']:.4f} / {l['flicker']['score']:.4f}; |latent - crossfade| overlaps "
              f"{res['diff_overlap']:.2f}, elsewhere {res['diff_alone']:.2f} levels", flush=True)
    full = None
    if args.fullsize:
        from _fullsize import build

        models = build(args.fullsize)
        specs = {m: tiny_job(args.fullsize_frames, args.fullsize_size, args.fullsize_steps, m,
                             os.path.join(tmp, f"full-{m}.mp4"), models) for m in ("crossfade", "latent")}
        t0 = time.perf_counter()
        full = _seam_pair(specs, 1, CORES)
        full["seconds"] = time.perf_counter() - t0
        print(f"full size: {full['seconds']:.0f} s for both renders", flush=True)
    import ray

    ray.shutdown()
    print()
    print(machine_line())

    def table(title: str, runs: list[dict]) -> None:
        print(title)
        seams = len(runs[0]["reps"]["latent"]["seams"])
        print(f"{'seam (frame)':<14}{'disagreement':>13}{'crossfade ratio':>16}{'latent ratio':>13}{'fused':>7}")
        for k in range(seams):
            cs = [r["reps"]["crossfade"]["seams"][k] for r in runs]
            ls = [r["reps"]["latent"]["seams"][k] for r in runs]
            print(f"{k} ({cs[0]['frame']}){'':<8}{statistics.median(s['disagreement'] for s in cs):>13.3f}"
                  f"{statistics.median(s['jump_ratio'] for s in cs):>16.3f}"
                  f"{statistics.median(s['jump_ratio'] for s in ls):>13.3f}{str(all(s.get('fused') for s in ls)):>7}")
        for mode in ("crossfade", "latent"):
            reps = [r["reps"][mode] for r in runs]
            print(f"{mode:<10} seam ratio max {statistics.median(x['seam_ratio_max'] for x in reps):.3f} "
                  f"(worst {max(x['seam_ratio_max'] for x in reps):.3f}), median "
                  f"{statistics.median(x['seam_ratio_median'] for x in reps):.3f}, flicker score "
                  f"{statistics.median(x['flicker']['score'] for x in reps):.4f}")
        print(f"|latent - crossfade| per frame (mean abs, grey levels, after H.264): in the overlaps "
              f"{statistics.median(r['diff_overlap'] for r in runs):.2f}, elsewhere "
              f"{statistics.median(r['diff_alone'] for r in runs):.2f}")

    table(f"tiny AnimateDiff (random weights), {args.frames} frames {args.size}x{args.size}, {args.seam_steps} steps, "
          f"windows 16/4, linear weights, {args.seeds} seeds (medians over seeds; disagreement = crossfade's windows "
          f"on their shared frames, mean abs grey levels)", results)
    if full:
        table(f"SD1.5-shaped random weights (scripts/_fullsize.py), {args.fullsize_frames} frames "
              f"{args.fullsize_size}x{args.fullsize_size}, {args.fullsize_steps} steps, 1 actor x {CORES} threads, "
              f"seed 0; both renders took {full['seconds']:.0f} s", [full])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        return _child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["ratio", "freenoise", "sim", "seams", "transport", "all"])
    ap.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[32, 512],
                    help="transport: frame sizes")
    ap.add_argument("--frames", type=int, default=76, help="ratio, freenoise: frames (76 = 6 windows of 16/4)")
    ap.add_argument("--size", type=int, default=64, help="frame width = height (sim: see --sim-size)")
    ap.add_argument("--steps", type=int, default=8, help="ratio, freenoise: DDIM steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fn-strides", type=lambda s: [int(x) for x in s.split(",")], default=[4, 12],
                    help="freenoise: FreeNoise context strides")
    ap.add_argument("--fn-threads", type=lambda s: [int(x) for x in s.split(",")], default=sorted({1, CORES}),
                    help="freenoise: torch threads of the FreeNoise process (1 and all cores)")
    ap.add_argument("--actors", type=int, default=64, help="sim: logical GPUs = actors")
    ap.add_argument("--windows", type=int, default=128, help="sim: windows")
    ap.add_argument("--seconds", type=float, default=4.0, help="sim: simulated seconds per window (S)")
    ap.add_argument("--sim-steps", dest="sim_steps", type=int, default=20, help="sim: steps")
    ap.add_argument("--sim-size", type=int, default=32, help="sim: frame size")
    ap.add_argument("--no-crossfade", action="store_true", help="sim: skip the crossfade run")
    ap.add_argument("--seeds", type=int, default=3, help="seams: seeds")
    ap.add_argument("--seam-frames", type=int, default=124, help="seams: frames (124 = 10 windows)")
    ap.add_argument("--seam-steps", type=int, default=4, help="seams: steps")
    ap.add_argument("--fullsize", metavar="DIR", help="seams: also SD1.5-shaped random-weight models, built in DIR")
    ap.add_argument("--fullsize-frames", type=int, default=40)
    ap.add_argument("--fullsize-size", type=int, default=64)
    ap.add_argument("--fullsize-steps", type=int, default=4)
    args = ap.parse_args()
    try:  # the code measured: the farm changes often, and the figures belong to one commit
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "?"
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}; commit {commit}; load average {os.getloadavg()[0]:.2f}; "
          f"{cpu_model()}", flush=True)
    parts = ["ratio", "freenoise", "sim", "seams"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "transport":
            t_args = argparse.Namespace(**vars(args))
            t_args.steps = args.sim_steps
            part_transport(t_args)
        elif part == "sim":
            sim_args = argparse.Namespace(**vars(args))
            sim_args.steps, sim_args.size = args.sim_steps, args.sim_size
            part_sim(sim_args)
        elif part == "seams":
            seam_args = argparse.Namespace(**vars(args))
            seam_args.frames = args.seam_frames
            part_seams(seam_args)
        else:
            {"ratio": part_ratio, "freenoise": part_freenoise}[part](args)


if __name__ == "__main__":
    main()
