"""GPU memory knobs and the fallback ladders, on CPU, with the fault-injecting renderer
(a real class chosen by `model.faults`, wrapping the real tiny pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from farm.fallbacks import RenderGaveUp
from farm.plan import plan_windows
from farm.renderers import make_renderer
from farm.tasks import WindowTask
from farm.spec import parse_spec
from scheduler.cli import main
from tests.conftest import base_spec, write_spec


def _spec(tmp_path, faults=None, memory=None):
    data = base_spec(tmp_path, frames=16, width=32, height=32)
    data["model"] = {**data["model"], **({"faults": faults} if faults else {}), **({"memory": memory} if memory else {})}
    return parse_spec(data)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    spec = _spec(tmp_path_factory.mktemp("clean"))
    task = WindowTask.from_spec(spec, plan_windows(spec).windows[0])
    frames, steps = make_renderer(spec).render(task)
    assert steps == ()
    return task, frames


def test_nan_frames_are_rendered_again_with_the_vae_in_fp32(tmp_path, clean):
    task, expected = clean
    frames, steps = make_renderer(_spec(tmp_path, faults={"nan_on_calls": [1]})).render(task)
    assert steps == ("NaN/inf: vae_fp32",)
    assert np.array_equal(frames, expected)  # the fallback gives the real window


def test_nan_twice_gives_up_with_the_reason(tmp_path, clean):
    task, _ = clean
    with pytest.raises(RenderGaveUp, match="window 0 decoded to NaN/inf even with the VAE in fp32"):
        make_renderer(_spec(tmp_path, faults={"nan_on_calls": [1, 2]})).render(task)


def test_out_of_memory_halves_the_decode_chunk_then_offloads_then_gives_up(tmp_path, clean):
    task, expected = clean
    frames, steps = make_renderer(_spec(tmp_path, faults={"oom_on_calls": [1]})).render(task)
    assert steps == ("oom: decode_chunk_size=8",) and np.array_equal(frames, expected)

    spec = _spec(tmp_path, faults={"oom_on_calls": [1, 2]}, memory={"decode_chunk_size": 4})
    frames, steps = make_renderer(spec).render(task)
    assert steps == ("oom: decode_chunk_size=2", "oom: cpu_offload") and np.array_equal(frames, expected)

    with pytest.raises(RenderGaveUp, match="CUDA out of memory even with decode_chunk_size=8 and CPU offload"):
        make_renderer(_spec(tmp_path, faults={"oom_on_calls": [1, 2, 3]})).render(task)


def test_memory_knobs_are_applied_once_at_load(tmp_path):
    renderer = make_renderer(_spec(tmp_path, memory={"forward_chunking": True, "vae_slicing": True,
                                                    "cpu_offload": True, "decode_chunk_size": 4}))
    assert renderer.memory == {"forward_chunking": True, "vae_slicing": True,
                               "cpu_offload": "skipped: the actor runs on CPU", "decode_chunk_size": 4}
    assert renderer.inner.pipe.vae.use_slicing


def test_a_ladder_that_gives_up_fails_the_window_without_retries_and_the_report_says_why(tmp_path, shared_ray):
    data = base_spec(tmp_path, frames=28)  # 2 windows
    data["model"] = {**data["model"], "faults": {"nan_on_calls": [1, 2]}}  # the actor's first window, twice
    store = tmp_path / "store"
    args = ["render", "-o", str(tmp_path / "out.mp4"), "--store", str(store), "--workers", "1", "--threads", "1"]
    failed = CliRunner().invoke(main, [args[0], str(write_spec(tmp_path, data)), *args[1:]])
    assert failed.exit_code == 1 and "even with the VAE in fp32" in failed.output
    report = json.loads((tmp_path / "out.mp4.report.json").read_text())
    assert report["failed"]["window"] == 0 and report["failed"]["attempts"] == 1  # never retried unchanged
    assert report["windows"][1]["state"] == "DONE"

    data["model"]["faults"] = {"nan_on_calls": [1]}  # now the fp32 VAE saves it
    fixed = CliRunner().invoke(main, [args[0], str(write_spec(tmp_path, data)), *args[1:], "--json"])
    assert fixed.exit_code == 0, fixed.output
    report = json.loads(fixed.output)
    assert report["windows"][0]["fallbacks"] == ["NaN/inf: vae_fp32"] and report["windows"][1]["cached"]
