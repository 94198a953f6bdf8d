"""The CUDA path, on a real GPU: fp16 pipelines through the farm, determinism, the fp32-VAE
fallback, CPU offload, and RIFE in fp16. Marked `gpu`: run with `pytest -m gpu` on a
machine with CUDA; skipped (and deselected by default) everywhere else.

Each GPU result is compared with the same work in fp32 on the CPU, so a broken half-
precision path (NaN, a wrong cast, a wrong device) cannot pass as "it ran".
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from farm.video import probe, read_frames
from farm.keys import model_identity, task_key
from farm.plan import plan_windows
from farm.renderers import make_renderer
from farm.tasks import WindowTask
from farm.spec import parse_spec
from tests.conftest import base_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tiny"


def _levels(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference, in 8-bit levels."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _window_task(spec, index: int = 0, **inputs) -> WindowTask:
    return dataclasses.replace(WindowTask.from_spec(spec, plan_windows(spec).windows[index]), **inputs)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_animatediff_renders_in_fp16_through_the_farm_and_resumes_from_the_store(tmp_path, local_ray):
    from scheduler.driver import render

    spec = parse_spec(base_spec(tmp_path, frames=28, steps=3))  # windows 0-15, 12-27
    store = tmp_path / "store"
    report = render(spec, store=store)

    assert [a["device"] for a in report["actors"]] == ["cuda"]
    assert report["actors"][0]["warmup_seconds"] > 0
    assert all(w["device"] == "cuda" and w["fallbacks"] == [] for w in report["windows"])
    assert probe(spec.output).frames == 28
    frames = read_frames(spec.output)
    assert frames.shape == (28, 64, 64, 3) and frames.std() > 5  # a picture, not black or flat
    # Keys are the fp16-on-CUDA identity: a CPU farm would not reuse these windows.
    cuda_id = model_identity(spec, "cuda")
    assert cuda_id["dtype"] == "fp16"
    assert report["windows"][0]["key"] == task_key(cuda_id, _window_task(spec))
    assert report["windows"][0]["key"] != task_key(model_identity(spec, "cpu"), _window_task(spec))

    first = Path(spec.output).read_bytes()
    again = render(spec, store=store)
    assert again["windows_rendered"] == 0 and again["windows_cached"] == 2 and again["actors"] == []
    assert Path(spec.output).read_bytes() == first


def test_a_window_is_bit_identical_twice_on_the_gpu_and_close_to_fp32_on_the_cpu(tmp_path):
    spec = parse_spec(base_spec(tmp_path, frames=16, steps=3))
    task = _window_task(spec)
    gpu = make_renderer(spec, "cuda")
    a, _ = gpu.render(task)
    b, _ = gpu.render(task)
    assert a.tobytes() == b.tobytes()  # a retried window publishes the same frames
    cpu, _ = make_renderer(spec, "cpu").render(task)
    other_seed, _ = gpu.render(_window_task(parse_spec(base_spec(tmp_path, frames=16, steps=3, seed=7))))
    # fp16 on the GPU computes the same video as fp32 on the CPU (rounding only), and the
    # bound means something: another seed is far further away.
    assert _levels(a, cpu) < 2.0, _levels(a, cpu)
    assert _levels(a, other_seed) > 10 * max(_levels(a, cpu), 0.5)


def test_the_nan_fallback_decodes_in_fp32_on_the_gpu(tmp_path):
    clean_spec = parse_spec(base_spec(tmp_path, frames=16, steps=3))
    faulty_spec = parse_spec(base_spec(tmp_path, frames=16, steps=3) | {
        "model": {"pipeline": "animatediff", "faults": {"nan_on_calls": [1]}}})
    task = _window_task(clean_spec)
    clean, _ = make_renderer(clean_spec, "cuda").render(task)
    rescued, steps = make_renderer(faulty_spec, "cuda").render(task)
    assert steps == ("NaN/inf: vae_fp32",)
    # The same latents, decoded by the VAE upcast to fp32 instead of in fp16.
    assert _levels(rescued, clean) < 1.0, _levels(rescued, clean)


def test_model_cpu_offload_renders_the_same_window(tmp_path):
    spec = parse_spec(base_spec(tmp_path, frames=16, steps=3))
    offload = parse_spec(base_spec(tmp_path, frames=16, steps=3) | {
        "model": {"pipeline": "animatediff", "memory": {"cpu_offload": True}}})
    task = _window_task(spec)
    plain, _ = make_renderer(spec, "cuda").render(task)
    renderer = make_renderer(offload, "cuda")
    assert renderer.memory.get("cpu_offload") is True
    offloaded, _ = renderer.render(task)
    assert _levels(offloaded, plain) < 0.5


def test_svd_chains_its_windows_in_fp16(tmp_path, local_ray, monkeypatch):
    from farm.spec import load_spec
    from scheduler.driver import render

    shutil.copytree(EXAMPLES, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path / "tiny")
    spec = load_spec("svd_product.yaml")
    report = render(spec, store=False)
    assert report["actors"][0]["device"] == "cuda"
    assert [w["conditioned_on"] for w in report["windows"]][1] == {"window": 0, "frame": 7}
    frames = read_frames(spec.output)
    assert frames.shape == (22, 64, 64, 3) and frames.std() > 5
    # The shared frame: window 1 starts from window 0's last frame, which appears once.
    assert all(w["fallbacks"] == [] for w in report["windows"])


def test_controlnet_follows_its_control_frames_in_fp16(tmp_path, monkeypatch):
    from farm.control import read_control_frames
    from farm.spec import load_spec

    shutil.copytree(EXAMPLES, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path / "tiny")
    spec = load_spec("pose_dance.yaml")
    control = read_control_frames(spec.control.video, 0, 16, spec.width, spec.height)
    task = _window_task(spec, control=control)
    gpu, _ = make_renderer(spec, "cuda").render(task)
    cpu, _ = make_renderer(spec, "cpu").render(task)
    still, _ = make_renderer(spec, "cuda").render(dataclasses.replace(task, control=np.repeat(control[:1], 16, 0)))
    fp16_error, steering = _levels(gpu, cpu), _levels(gpu, still)
    assert fp16_error < 2.0, fp16_error
    assert steering > 3 * fp16_error, (steering, fp16_error)  # the control frames steer the video


def test_rife_in_fp16_on_the_gpu_matches_fp32_on_the_cpu():
    from farm.interpolate import dropped_frame_psnr
    from farm.rife import weights
    from farm.rife.backends import TorchRife
    from tests.clips import pan_zoom

    path = weights.pull()
    clip = pan_zoom(17, size=256)
    gpu = TorchRife(str(path), device="cuda")
    assert gpu.dtype == torch.float16
    ours_gpu, blend = dropped_frame_psnr(gpu, clip, 2)
    ours_cpu, _ = dropped_frame_psnr(TorchRife(str(path), device="cpu"), clip, 2)
    assert ours_gpu >= blend + 3.0, (ours_gpu, blend)
    assert abs(ours_gpu - ours_cpu) < 0.5, (ours_gpu, ours_cpu)


def test_the_farm_picks_gpu_actors_by_default(tmp_path, local_ray):
    import ray

    from scheduler.cluster import Session, pool_shape, wants_gpus

    session = Session(False, int(ray.cluster_resources()["GPU"]), int(ray.cluster_resources()["CPU"]))
    assert wants_gpus(session, None)
    assert pool_shape(session, None, None) == (session.gpus, 1)  # one actor per GPU, one CPU thread each
