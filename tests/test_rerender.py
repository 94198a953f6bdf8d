"""A local re-render inside a co-denoised run (farm/rerender.py): after an edit, only the
windows near it are denoised again, between the stored latents of the frames next to them.
The region is pure; the renders use tiny models on the shared farm's warm actors with a
window store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from farm.codenoise import LatentJob, fuse_weights
from farm.errors import SpecError
from farm.plan import split
from farm.rerender import local_region, outside, span_job
from farm.spec import parse_spec
from farm.video import read_frames
from scheduler.cli import main
from scheduler.driver import render
from tests.conftest import base_spec, write_spec

#: 62 frames in windows of 8 sharing 2: ten windows, window 5 is frames 30–37 and only it
#: covers 32–35 (window 4 ends at 31, window 6 starts at 36)
FRAMES, LENGTH, OVERLAP = 62, 8, 2


def _job(tmp_path, text="a grey wolf", radius=1, name="run.mp4") -> dict:
    """A ten-window co-denoised run whose prompt is `text` in frames 32–35 only."""
    data = base_spec(tmp_path, width=32, height=32, frames=FRAMES, steps=2, prompt_transition=1,
                     encode={"crf": 0, "preset": "ultrafast"}, output=str(tmp_path / name),
                     window={"length": LENGTH, "overlap": OVERLAP, "blend": "linear", "reconcile": "latent",
                             "keep_steps": True, "rerender_radius": radius})
    del data["prompt"]
    return data | {"prompts": {0: "a red fox", 32: text, 36: "a red fox"}}


# --- the region (pure) --------------------------------------------------------------------------

@pytest.mark.quick
def test_the_region_is_the_changed_windows_widened_by_the_radius_between_fixed_frames():
    windows = split(FRAMES, LENGTH, OVERLAP)
    old = [f"k{i}" for i in range(10)]
    new = old[:5] + ["edited"] + old[6:]
    region = local_region(old, new, windows, 1)
    assert list(region.windows) == [4, 5, 6] and region.changed == (5,)
    assert region.frames == (24, 44) and region.free == (26, 42)  # windows 3 and 7 cover 24–25 and 42–43
    assert region.fixed == ((24, 26), (42, 44)) and outside(region, FRAMES) == ((0, 24), (44, FRAMES))
    tight = local_region(old, new, windows, 0)
    assert list(tight.windows) == [5] and tight.free == (32, 36)
    # whole instead: radius all, nothing changed, another number of windows, a span reaching both ends
    assert local_region(old, new, windows, "all") is None
    assert local_region(old, old, windows, 1) is None
    assert local_region(old[:9], new, windows, 1) is None
    assert local_region(old, ["x"] + old[1:9] + ["y"], windows, 1) is None


@pytest.mark.quick
def test_the_span_job_keeps_the_run_s_weights_and_noise_and_holds_the_fixed_frames():
    windows = split(FRAMES, LENGTH, OVERLAP)
    weights = fuse_weights(windows, "linear")
    job = LatentJob(windows, weights, steps=3, seed=1, height=32, width=32, checkpoints=(3,))
    region = local_region([str(i) for i in range(10)], [str(i) for i in range(5)] + ["x"] + [str(i) for i in range(6, 10)],
                          windows, 1)
    stored = lambda step, lo, hi: np.full((1, 4, hi - lo, 4, 4), step * 1000 + lo, np.float32)  # noqa: E731
    span = span_job(job, region, stored)
    assert [(w.index, w.start, w.end) for w in span.windows] == [(0, 0, 8), (1, 6, 14), (2, 12, 20)]
    assert span.offset == 24 and span.checkpoints == (1, 2, 3)  # every step: a later edit re-renders locally too
    assert all(np.array_equal(a, b) for a, b in zip(span.weights, weights[4:7]))
    assert span.fixed == ((0, 2), (18, 20))
    assert [f.shape for f in span.fixed_latents] == [(3, 1, 4, 2, 4, 4)] * 2
    assert span.fixed_latents[1][2, 0, 0, 0, 0, 0] == 3 * 1000 + 42  # after step 3, run frame 42


@pytest.mark.quick
def test_keep_steps_is_refused_with_crossfade_and_for_wan_naming_the_field(tmp_path):
    with pytest.raises(SpecError) as err:
        parse_spec(_job(tmp_path) | {"window": {"length": 8, "overlap": 2, "reconcile": "crossfade",
                                                "keep_steps": True, "rerender_radius": -1}})
    assert err.value.problems[0] == "window.rerender_radius: must be a number of windows, 0–10000, or all (the whole " \
                                    "run); got -1"
    assert any(p.startswith("window.keep_steps: is for window.reconcile: latent") for p in err.value.problems)
    wan = base_spec(tmp_path, model={"pipeline": "wan", "base": "tiny"}, frames=17,
                    window={"length": 17, "overlap": 8, "keep_steps": True})
    with pytest.raises(SpecError) as err:
        parse_spec(wan)
    assert err.value.problems == ["window.keep_steps: a local re-render is not for wan: its video VAE decodes each "
                                  "latent frame from the ones before it, so every frame after an edit would change "
                                  "as it decoded again"]


# --- renders on a real Ray -----------------------------------------------------------------------

def _render(data, store):
    return render(parse_spec(data), workers=2, threads=1, store=str(store))


@pytest.mark.usefixtures("warm_farm")
def test_an_edit_re_renders_only_the_windows_near_it_and_keeps_every_other_frame(tmp_path):
    store = tmp_path / "store"
    original = _render(_job(tmp_path), store)
    first = read_frames(tmp_path / "run.mp4")
    # the prompt of frames 32–35 (window 5's own) changes: windows 4–6 render again
    edited = _render(_job(tmp_path, "a green river"), store)
    local = read_frames(tmp_path / "run.mp4")
    assert len(first) == len(local) == FRAMES
    assert edited["latent"]["local"]["windows"] == [4, 6] and edited["latent"]["local"]["free"] == [26, 42]
    assert [w["index"] for w in edited["windows"] if not w["cached"]] == [4, 5, 6]
    assert edited["latent"]["rendered_again"].startswith("a local re-render: windows 4–6 (changed: 5;")
    assert np.array_equal(first[:26], local[:26]) and np.array_equal(first[42:], local[42:])
    assert not np.array_equal(first[32:36], local[32:36])
    html = (tmp_path / "run.mp4.report.html").read_text()
    assert 'class="rerendered"' in html and "A local re-render on" in html
    # edited back, with the first render's own latents gone: re-rendered locally from the edit's,
    # the same windows between the same fixed frames give the first render's bits
    shutil.rmtree(store / "latent" / original["latent"]["key"])
    back = _render(_job(tmp_path), store)
    assert back["latent"]["local"]["windows"] == [4, 6]
    assert np.array_equal(read_frames(tmp_path / "run.mp4"), first)
    # --full renders the run whole: a fresh render's bits (store off)
    job = write_spec(tmp_path, _job(tmp_path, "a green river"))
    result = CliRunner().invoke(main, ["render", str(job), "--full", "--json", "--workers", "2", "--threads", "1",
                                       "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["latent"]["local"] is None
    full = read_frames(tmp_path / "run.mp4")
    render(parse_spec(_job(tmp_path, "a green river", name="fresh.mp4")), workers=1, threads=1, store=False)
    assert np.array_equal(full, read_frames(tmp_path / "fresh.mp4"))


@pytest.mark.usefixtures("warm_farm")
def test_farm_plan_says_which_windows_an_edit_will_re_render(tmp_path):
    store = tmp_path / "store"
    _render(_job(tmp_path, "a hawk"), store)  # keeps every step
    job = write_spec(tmp_path, _job(tmp_path, "an owl at night"))
    result = CliRunner().invoke(main, ["plan", str(job), "--json", "--store", str(store)])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["store"]["local"]["windows"] == [4, 6]
    result = CliRunner().invoke(main, ["plan", str(job), "--store", str(store)])
    assert "store: every step of the last render; a local re-render: windows 4–6" in result.output
