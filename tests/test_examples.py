"""Every recipe in examples/ is a valid job, and its tiny twin (examples/tiny/) renders
end to end through `farm render` on this CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from farm.video import probe
from farm.spec import parse_spec
from scheduler.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# one Ray for the module, and a farm manager whose warm actor renders every twin in turn
pytestmark = pytest.mark.usefixtures("warm_farm")

RECIPES = ["svd_product", "lcm_watch", "pose_dance", "scheduled_30s", "wan_t2v_long", "wan_i2v_product", "film_sd15",
           "film_wan_i2v"]


@pytest.mark.parametrize("name", RECIPES)
def test_the_real_recipe_is_a_valid_job(name, tmp_path, monkeypatch):
    """The hub-id recipe validates; its local inputs (a photo, pose frames) are the user's,
    so the tiny twin's stand in for them here."""
    shutil.copytree(EXAMPLES / "tiny", tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    if "control" in data:
        data["frames"] = 28  # the twin's 28 pose frames stand in for the user's
    spec = parse_spec(data, source=name)
    assert spec.model.base != "tiny"


@pytest.fixture
def twins(tmp_path, monkeypatch):
    shutil.copytree(EXAMPLES / "tiny", tmp_path / "tiny")
    monkeypatch.chdir(tmp_path / "tiny")
    return tmp_path


def _render(name, twins):
    result = CliRunner().invoke(main, ["render", f"{name}.yaml", "--workers", "1", "--threads", "1",
                                       "--store", str(twins / "store"), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_svd_twin_chains_its_windows_without_repeating_the_shared_frame(twins):
    report = _render("svd_product", twins)
    assert probe(twins / "tiny" / "svd_product.mp4").frames == 22  # 3 × 8 frames − 2 shared
    windows = report["windows"]
    assert [(w["start"], w["end"]) for w in windows] == [(0, 8), (7, 15), (14, 22)]
    assert windows[0]["conditioned_on"] == {"image": str(twins / "tiny" / "product.png")}
    assert [w["conditioned_on"] for w in windows[1:]] == [{"window": 0, "frame": 7}, {"window": 1, "frame": 14}]
    assert report["workers"] == 1  # a chain holds one pipeline actor; the rest stay free
    # The chain ran in order: each window started after the one before had finished.
    assert all(b["started_at"] >= a["finished_at"] - 0.5 for a, b in zip(windows, windows[1:]))
    # Colour matching (svd.color_match, on by default) holds the chain to the picture's colours:
    # without it the same chain's last frame is farther from the first frame.
    data = yaml.safe_load((twins / "tiny" / "svd_product.yaml").read_text())
    data["svd"]["color_match"] = False
    (twins / "tiny" / "unmatched.yaml").write_text(yaml.safe_dump(data | {"output": "unmatched.mp4"}))
    unmatched = _render("unmatched", twins)
    assert all(a["color_drift"] < b["color_drift"] for a, b in zip(windows, unmatched["windows"]))
    assert report["color_drift_max"] < unmatched["color_drift_max"]


def test_lcm_watch_twin_renders_with_the_lcm_scheduler_and_a_motion_lora(twins):
    report = _render("lcm_watch", twins)
    assert probe(twins / "tiny" / "lcm_watch.mp4").frames == 40
    assert report["spec"]["model"]["scheduler"] == "lcm"
    assert report["spec"]["model"]["loras"][0]["weight"] == 0.8


def test_pose_dance_twin_renders_from_its_pose_frames(twins):
    report = _render("pose_dance", twins)
    assert probe(twins / "tiny" / "pose_dance.mp4").frames == 28
    assert report["windows_rendered"] == 2


def test_the_30_second_scheduled_twin_renders_and_lists_its_prompts(twins):
    report = _render("scheduled_30s", twins)
    info = probe(twins / "tiny" / "fox_30s.mp4")
    assert info.frames == 240 and info.frames / info.fps == 30.0
    blends = [p for w in report["windows"] for p in w["prompts"] if "blending_from" in p]
    changes = (64, 128, 192)
    assert {p["from_frame"] for p in blends} >= set(changes)  # each change is seen blending in
    assert all(any(k <= p["from_frame"] <= p["to_frame"] < k + 8 for k in changes) for p in blends)


def test_the_wan_twin_lays_its_latent_windows_out_in_latent_frames(twins):
    """(Co-denoised Wan renders through the farm in tests/test_wan.py and tests/test_codenoise.py.)"""
    from farm.plan import plan_windows

    spec = parse_spec(yaml.safe_load((twins / "tiny" / "wan_t2v_long.yaml").read_text()), source="wan_t2v_long")
    plan = plan_windows(spec)
    assert spec.frames == 65 and spec.window.reconcile == "latent" and len(spec.schedule) == 2
    # windows of 17 frames: 5 latent frames each, 2 shared
    assert [(w.start, w.end) for w in plan.windows] == [(0, 17), (9, 29), (21, 41), (33, 53), (45, 65)]
    assert [(w.start, w.end) for w in plan.latent_windows] == [(0, 5), (3, 8), (6, 11), (9, 14), (12, 17)]


def test_the_wan_image_to_video_twin_starts_from_its_picture(twins):
    report = _render("wan_i2v_product", twins)
    assert probe(twins / "tiny" / "wan_i2v_product.mp4").frames == 41
    assert [w["conditioned_on"]["first_frame"] for w in report["windows"]] == [True, False, False]


def test_the_film_twin_renders_its_twelve_shots_with_a_storyboard_and_its_cuts(twins):
    report = _render("film_sd15", twins)
    assert probe(twins / "tiny" / "film_sd15.mp4").frames == 180  # 12 × 16 frames − 4 dissolves of 3
    shots = report["shots"]
    assert len(shots) == 12 and [s["then"] for s in shots].count("fuse") == 2
    portrait = str(twins / "tiny" / "portrait.png")  # the keeper: 0.8 in his two shots, 0.5 elsewhere
    assert [s["anchor"]["scale"] for s in shots] == [0.5, 0.5, 0.8, 0.8] + [0.5] * 8
    assert {s["anchor"]["image"] for s in shots} == {portrait}
    assert len(report["latent"]["runs"]) == 10  # two pairs of shots are fused
    assert report["flicker"]["cuts"] == [s["frames"][1] for s in shots if s["then"] == "cut"][:-1]
    html = (twins / "tiny" / "film_sd15.mp4.report.html").read_text()
    assert html.count('<figure class="shot">') == 12 and html.count('class="cut"') == 5
    assert html.count("<td>portrait.png × 0.8</td>") == 2


def test_the_wan_film_twin_starts_each_shot_from_its_own_picture(twins):
    report = _render("film_wan_i2v", twins)
    tiny = twins / "tiny"
    assert probe(tiny / "film_wan_i2v.mp4").frames == 21 + 10 + 25 + 13 - 4
    pictures = {w["index"]: (w["conditioned_on"]["image"], w["conditioned_on"]["first_frame"])
                for w in report["windows"]}
    assert pictures == {0: (str(tiny / "product.png"), True), 1: (str(tiny / "product.png"), False),
                        2: (str(tiny / "coffee.png"), True), 3: (str(tiny / "portrait.png"), True),
                        4: (str(tiny / "portrait.png"), False), 5: (str(tiny / "product.png"), True)}
    # shot 1 (10 frames) rendered the 13 frames its VAE needs and kept 10
    assert report["shots"][1]["frames"] == [17, 27]
