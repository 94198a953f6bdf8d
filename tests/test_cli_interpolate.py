"""`farm interpolate` as a user meets it: a target at or below the input's frame rate, or
two conflicting options, is a one-line error and exit 2 before any Ray work; a noise video
gets a hint about the scene threshold; the report's path is printed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
from click.testing import CliRunner

from farm.encode import VideoWriter
from farm.rife import weights
from scheduler.cli import interpolation_summary, main

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


@pytest.fixture
def noise_mp4(tmp_path):
    """8 frames of 32×32 noise at 8 fps: every pair looks like a scene cut."""
    path = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(path, 32, 32, 8) as out:
        for _ in range(8):
            out.write(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return path


def interpolate(*args):
    return CliRunner().invoke(main, ["interpolate", *map(str, args)])


@pytest.mark.parametrize("fps", ["4", "8"])
def test_a_target_not_above_the_input_fps_is_a_one_line_error(noise_mp4, tmp_path, fps):
    result = interpolate(noise_mp4, "-o", tmp_path / "i.mp4", "--fps", fps)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --fps: must be above the input's frame rate (8 fps); got {fps}"
    assert not ray.is_initialized() and not (tmp_path / "i.mp4").exists()


def test_fps_and_factor_together_say_they_conflict(noise_mp4, tmp_path):
    result = interpolate(noise_mp4, "-o", tmp_path / "i.mp4", "--fps", "16", "--factor", "2")
    assert result.exit_code == 2
    assert "Error: --fps and --factor conflict" in result.output and "invalid job spec" not in result.output


def test_neither_fps_nor_factor_says_which_to_give(noise_mp4, tmp_path):
    result = interpolate(noise_mp4, "-o", tmp_path / "i.mp4")
    assert result.exit_code == 2 and "--fps F (e.g. 60) or --factor 2|4|8" in result.output


def test_problems_name_the_options_they_came_from(tmp_path, noise_mp4):
    not_video = tmp_path / "notes.txt"
    not_video.write_text("hello")
    result = interpolate(not_video, "-o", tmp_path / "i.avi", "--fps", "300", "--workers", "1000")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0] == ("error: -o/--output: must end in .mp4 (the farm writes H.264 in mp4); "
                        f"got '{tmp_path / 'i.avi'}'")
    assert "error: --fps: input should be less than or equal to 240; got 300.0" in lines
    assert "error: --workers: input should be less than or equal to 256; got 1000" in lines
    assert any(line.startswith("error: VIDEO: cannot be read as a video") for line in lines)
    assert len(lines) == 4 and "invalid job spec" not in result.output


def _report(cuts: int, frames_in: int = 8) -> dict:
    return {"output": "/v/i.mp4", "output_fps": 16.0, "stages": {"total": 1.0},
            "interpolate": {"frames_in": frames_in, "frames_out": 2 * frames_in, "cuts": list(range(1, cuts + 1))}}


def test_mostly_cuts_gets_one_hint_naming_the_scene_threshold():
    lines = interpolation_summary(_report(cuts=7), scene_threshold=0.2)
    hints = [line for line in lines if line.startswith("hint:")]
    assert hints == ["hint: 7 of 7 frame pairs were held as scene cuts, not interpolated; if the video has few "
                     "real cuts, lower --scene-threshold (now 0.2; 0 turns detection off)"]
    assert lines[-1] == "report: /v/i.mp4.report.json"


@pytest.mark.parametrize("cuts", [0, 3])
def test_a_few_cuts_get_no_hint(cuts):
    assert not any(line.startswith("hint:") for line in interpolation_summary(_report(cuts), 0.2))


@pytest.mark.slow
def test_interpolating_noise_prints_the_hint_and_the_report_path(noise_mp4, tmp_path):
    weights.pull()  # a fresh checkout's --quick run has not fetched them yet (idempotent)
    out = tmp_path / "i.mp4"
    result = interpolate(noise_mp4, "-o", out, "--factor", "2", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "hint: 7 of 7 frame pairs were held as scene cuts" in result.output
    assert f"report: {out}.report.json" in result.output
    assert json.loads((tmp_path / "i.mp4.report.json").read_text())["output_frames"] == 16
