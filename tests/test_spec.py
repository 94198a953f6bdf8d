"""Spec validation: every bad input names its field and rule; nothing else happens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.errors import SpecError
from farm.spec import load_spec, parse_spec
from scheduler.cli import main
from tests.conftest import base_spec, write_spec

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def problems(data) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return "\n".join(info.value.problems)


def test_valid_spec_round_trips(tmp_path):
    spec = parse_spec(base_spec(tmp_path))
    assert spec.frames == 52 and spec.window.overlap == 4 and spec.output.endswith("out.mp4")


@pytest.mark.parametrize("field", ["model", "frames", "output"])
def test_missing_required_field(tmp_path, field):
    data = base_spec(tmp_path)
    del data[field]
    assert f"{field}: field required" in problems(data)


def test_missing_prompt_says_which_fields_can_give_it(tmp_path):
    data = base_spec(tmp_path)
    del data["prompt"]
    assert "prompt: give exactly one of `prompt` (one text) or `prompts` (a {frame: text} schedule)" in problems(data)


def test_missing_nested_field(tmp_path):
    data = base_spec(tmp_path)
    del data["model"]["pipeline"]
    assert "model.pipeline: field required" in problems(data)


@pytest.mark.parametrize(
    "field,value",
    [("frames", "many"), ("width", "wide"), ("steps", 2.5), ("guidance", "high"), ("seed", [1])],
)
def test_wrong_type(tmp_path, field, value):
    msg = problems(base_spec(tmp_path, **{field: value}))
    assert msg.startswith(f"{field}:") and repr(value) in msg


@pytest.mark.parametrize("frames", [0, -5])
def test_frames_must_be_positive(tmp_path, frames):
    assert "frames: input should be greater than 0" in problems(base_spec(tmp_path, frames=frames))


@pytest.mark.parametrize("overlap", [16, 20])
def test_overlap_must_be_below_length(tmp_path, overlap):
    msg = problems(base_spec(tmp_path, window={"length": 16, "overlap": overlap}))
    assert f"window.overlap: must be < window.length (16); got {overlap}" in msg


def test_overlap_must_not_be_negative(tmp_path):
    msg = problems(base_spec(tmp_path, window={"length": 16, "overlap": -1}))
    assert "window.overlap: input should be greater than or equal to 0" in msg


def test_length_longer_than_video_is_an_error_that_says_what_to_do(tmp_path):
    msg = problems(base_spec(tmp_path, frames=8))
    assert "window.length: must be <= frames (8); got 16" in msg
    assert "window.length: 8" in msg  # tells the user how to get one window


@pytest.mark.parametrize("field", ["width", "height"])
def test_size_must_be_multiple_of_8(tmp_path, field):
    assert f"{field}: must be a multiple of 8" in problems(base_spec(tmp_path, **{field: 60}))


@pytest.mark.parametrize("steps", [0, -1])
def test_steps_must_be_positive(tmp_path, steps):
    assert "steps: input should be greater than 0" in problems(base_spec(tmp_path, steps=steps))


def test_unknown_pipeline(tmp_path):
    data = base_spec(tmp_path)
    data["model"]["pipeline"] = "sora"
    msg = problems(data)
    assert "model.pipeline:" in msg and "'animatediff'" in msg and "'sora'" in msg


def test_unknown_blend(tmp_path):
    msg = problems(base_spec(tmp_path, window={"length": 16, "overlap": 4, "blend": "smooth"}))
    assert "window.blend:" in msg and "'linear'" in msg


def test_output_folder_must_exist(tmp_path):
    msg = problems(base_spec(tmp_path, output=str(tmp_path / "nope" / "out.mp4")))
    assert "output: folder" in msg and "does not exist" in msg


def test_output_must_be_mp4(tmp_path):
    msg = problems(base_spec(tmp_path, output=str(tmp_path / "out.avi")))
    assert "output: must end in .mp4" in msg


def test_typo_is_an_unknown_field_not_ignored(tmp_path):
    msg = problems(base_spec(tmp_path, window={"lenght": 16, "overlap": 4}))
    assert "window.lenght: unknown field" in msg


def test_missing_local_model_folder(tmp_path):
    data = base_spec(tmp_path)
    data["model"]["base"] = str(tmp_path / "no-such-model")
    assert "model.base: folder" in problems(data)


def test_every_problem_is_reported_at_once(tmp_path):
    msg = problems(base_spec(tmp_path, frames=0, steps=0, width=61))
    assert "frames:" in msg and "steps:" in msg and "width" in msg


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(path)


def test_cli_bad_spec_exits_2_names_field_and_writes_nothing(tmp_path):
    data = base_spec(tmp_path, window={"length": 16, "overlap": 16})
    job = write_spec(tmp_path, data)
    before = set(tmp_path.iterdir())
    result = CliRunner().invoke(main, ["render", str(job)])
    assert result.exit_code == 2
    assert "window.overlap: must be < window.length" in result.output
    assert set(tmp_path.iterdir()) == before  # no mp4, no report, no temp file


def test_cli_output_override_is_validated(tmp_path):
    job = write_spec(tmp_path, base_spec(tmp_path))
    result = CliRunner().invoke(main, ["plan", str(job), "-o", str(tmp_path / "x.webm")])
    assert result.exit_code == 2 and "-o/--output: must end in .mp4" in result.output


# -- relative paths: against the spec file's folder ---------------------------------------------
TINY_EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "tiny"


def test_relative_paths_in_a_spec_file_are_read_from_its_folder_and_o_from_here(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    shutil.copy(TINY_EXAMPLES / "svd_product.yaml", jobs)
    shutil.copy(TINY_EXAMPLES / "product.png", jobs)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(Path("..") / "jobs" / "svd_product.yaml")
    assert spec.svd.image == str(jobs / "product.png")  # `image: product.png`, beside the spec
    assert spec.output == str(jobs / "svd_product.mp4")  # `output: svd_product.mp4` too
    # -o is a command-line path: taken from the current directory
    assert load_spec(jobs / "svd_product.yaml", output="mine.mp4").output == str(elsewhere / "mine.mp4")

    (jobs / "product.png").unlink()
    with pytest.raises(SpecError) as err:
        load_spec(jobs / "svd_product.yaml")
    assert f"svd.image: no file at '{jobs / 'product.png'}' (the spec says 'product.png')" in err.value.problems


def test_farm_plan_reads_a_spec_from_another_folder(monkeypatch):
    monkeypatch.chdir(TINY_EXAMPLES.parent.parent)  # the repository's root
    for name in ("svd_product", "pose_dance", "wan_i2v_product"):
        result = CliRunner().invoke(main, ["plan", f"examples/tiny/{name}.yaml", "--json"])
        assert result.exit_code == 0, result.output
        plan = json.loads(result.output)
        assert plan["windows"], name


def test_a_relative_model_folder_and_lora_are_read_from_the_spec_s_folder(tmp_path, monkeypatch):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "style.safetensors").write_bytes(b"x")
    data = base_spec(tmp_path, output="out.mp4")
    data["model"] = {**data["model"], "motion_adapter": "./adapter",
                     "loras": [{"path": "style.safetensors", "name": "style"}]}
    job = write_spec(tmp_path, data)
    monkeypatch.chdir(tmp_path.parent)
    spec = load_spec(job)
    assert spec.model.motion_adapter == str(tmp_path / "adapter")
    assert spec.model.loras[0].path == str(tmp_path / "style.safetensors")
    assert spec.output == str(tmp_path / "out.mp4")


def test_the_report_shows_the_scheduler_a_job_runs_with_not_null(tmp_path):
    assert parse_spec(base_spec(tmp_path)).report_dump()["model"]["scheduler"] == "ddim"  # AnimateDiff's default
    lcm = base_spec(tmp_path)
    lcm["model"] = {**lcm["model"], "scheduler": "lcm"}
    assert parse_spec(lcm).report_dump()["model"]["scheduler"] == "lcm"
