"""Spec validation as a user meets it: a typo in a size is refused at once, every problem
comes back in one report (rules that compare fields too), and each message names its field."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from farm.errors import SpecError
from farm.plan import split
from farm.spec import load_spec, parse_spec, window_count
from scheduler.cli import main
from tests.conftest import base_spec, write_spec

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def problems(data, **kwargs) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, **kwargs)
    return info.value.problems


# --- 1. every size has an upper bound -------------------------------------------------------

def test_a_typo_in_frames_is_refused_in_well_under_a_second(tmp_path):
    job = write_spec(tmp_path, base_spec(tmp_path, frames=1_000_000_000_000))
    for command in ("plan", "render"):
        start = time.monotonic()
        result = CliRunner().invoke(main, [command, str(job)])
        assert time.monotonic() - start < 1.0, command
        assert result.exit_code == 2, (command, result.output)
        assert "frames: input should be less than or equal to 1000000; got 1000000000000" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("field, value, named", [
    ("frames", 10**12, "frames"), ("width", 8 * 10**6, "width"), ("height", 65536, "height"),
    ("steps", 25_000, "steps"), ("guidance", 7500.0, "guidance"), ("prompt_transition", 10**9, "prompt_transition"),
    ("window", {"length": 10**9, "overlap": 4}, "window.length"),
    ("window", {"length": 16, "overlap": 10**9}, "window.overlap"),
    ("encode", {"segment_frames": 10**12}, "encode.segment_frames"),
    ("interpolate", {"factor": 2, "chunk": 80_000}, "interpolate.chunk"),
    ("interpolate", {"factor": 2, "workers": 20_000}, "interpolate.workers"),
    ("interpolate", {"factor": 2, "gpuid": 10**6}, "interpolate.gpuid"),
    ("interpolate", {"factor": 2, "cuts": [10**12]}, "interpolate.cuts.0"),
    ("interpolate", {"fps": 6e10}, "interpolate.fps"),
])
def test_every_size_has_an_upper_bound_named_by_its_field(tmp_path, field, value, named):
    data = base_spec(tmp_path, **{field: value})
    start = time.monotonic()
    found = problems(data)
    assert time.monotonic() - start < 1.0
    assert len(found) == 1 and found[0].startswith(f"{named}: input should be less than"), found


@pytest.mark.parametrize("model", [
    {"memory": {"decode_chunk_size": 10**9}},
    {"loras": [{"id": "tiny-sd-lora", "name": "a", "weight": 1e6}]},
    {"faults": {"fail_windows": [10**12]}},
    {"faults": {"crash_on_call": 10**12}},
    {"faults": {"delay": 1e9}},
    {"faults": {"simulate_seconds": 1e9}},
    {"faults": {"oom_on_calls": [10**12]}},
    {"faults": {"nan_on_calls": list(range(1, 5000))}},
])
def test_model_sizes_and_fault_lists_are_bounded_too(tmp_path, model):
    data = base_spec(tmp_path, model={"pipeline": "animatediff", **model})
    found = problems(data)
    assert len(found) == 1 and found[0].startswith("model.") and "should" in found[0], found


def test_a_huge_fail_windows_spec_builds_no_window_list(tmp_path):
    """The rule that checks window indices counts the windows; it never lists them."""
    data = base_spec(tmp_path, frames=1_000_000, window={"length": 2, "overlap": 1, "reconcile": "crossfade"},
                     model={"pipeline": "animatediff", "faults": {"fail_windows": [999_999]}})
    start = time.monotonic()
    found = problems(data)
    assert time.monotonic() - start < 0.5
    assert found == ["model.faults.fail_windows: must be window indices in 0..999998; got [999999]"]


@pytest.mark.parametrize("frames", range(1, 40))
def test_window_count_agrees_with_the_planner(frames):
    for length in range(1, frames + 1):
        for overlap in range(length):
            assert window_count(frames, length, overlap) == len(split(frames, length, overlap))


def test_nan_is_not_a_number_the_spec_takes(tmp_path):
    found = problems(base_spec(tmp_path, guidance=float("nan")))
    assert found == ["guidance: input should be a finite number; got nan"]


# --- 5. every problem at once, the rules that compare fields included -------------------------

def test_a_bad_width_does_not_hide_a_schedule_without_frame_0(tmp_path):
    data = base_spec(tmp_path, width=30, prompts={4: "a fox"})
    del data["prompt"]
    found = problems(data)
    assert "width: must be a multiple of 8 (the VAE downsamples by 8); got 30" in found
    assert "prompts: the schedule must say what frame 0 shows; got frames [4]" in found


def test_two_prompt_sources_and_a_long_window_are_both_reported(tmp_path):
    found = problems(base_spec(tmp_path, frames=8, prompts={0: "a fox"}))
    assert len(found) == 2
    assert any(p.startswith("window.length: must be <= frames (8); got 16") for p in found)
    assert any(p.startswith("prompt: give exactly one of `prompt`") for p in found)


def test_field_rules_and_rules_of_several_models_come_back_together(tmp_path):
    data = base_spec(tmp_path, frames=0, interpolate={"fps": 60, "factor": 2, "workers": 0},
                     window={"length": 16, "overlap": 20},
                     model={"pipeline": "animatediff", "loras": [{"name": "a"}, {"id": "tiny-sd-lora", "name": "a"}]})
    found = problems(data)
    assert found[:2] == ["frames: input should be greater than 0; got 0",
                         "interpolate.workers: input should be greater than or equal to 1; got 0"]
    assert set(found[2:]) == {
        "window.overlap: must be < window.length (16); got 20",
        "interpolate: give exactly one of interpolate.fps or interpolate.factor",
        "model.loras: adapter names must be unique; repeated: ['a']",
        "model.loras.0: give exactly one of `path` (a local file or folder) or `id`",
    }


def test_a_rule_is_skipped_when_a_field_it_compares_failed(tmp_path):
    """`frames: many` is reported once, not again by each rule that compares with frames."""
    found = problems(base_spec(tmp_path, frames="many", interpolate={"factor": 2, "cuts": [3]}))
    assert found == ["frames: input should be a valid integer, unable to parse string as an integer; got 'many'"]


def test_svd_rules_are_all_reported(tmp_path):
    data = base_spec(tmp_path, model={"pipeline": "svd", "scheduler": "ddim", "memory": {"vae_slicing": True}},
                     window={"length": 16, "overlap": 3})
    found = problems(data)
    for field in ("svd:", "window.overlap:", "prompt:", "model.scheduler:", "model.memory.vae_slicing:"):
        assert any(p.startswith(field) for p in found), (field, found)


# --- 7. messages that name the right thing ----------------------------------------------------

@pytest.mark.parametrize("key, suggestion", [
    ("prompt_transiton", "prompt_transition"), ("negativ_prompt", "negative_prompt"), ("seeds", "seed"),
])
def test_an_unknown_key_suggests_the_nearest_field(tmp_path, key, suggestion):
    found = problems({**base_spec(tmp_path), key: 1})
    assert found == [f"{key}: unknown field; did you mean {suggestion}?"]


def test_a_nested_unknown_key_suggests_from_its_own_model(tmp_path):
    data = base_spec(tmp_path, window={"lenght": 16}, encode={"crff": 20})
    data["model"]["loras"] = [{"id": "tiny-sd-lora", "name": "a", "wieght": 0.5}]
    found = problems(data)
    assert "window.lenght: unknown field; did you mean length?" in found
    assert "encode.crff: unknown field; did you mean crf?" in found
    assert "model.loras.0.wieght: unknown field; did you mean weight?" in found


def test_an_unknown_key_with_nothing_close_says_to_check_the_reference(tmp_path):
    assert problems({**base_spec(tmp_path), "zzz": 1}) == [
        "zzz: unknown field; check the spelling; see the job spec reference"]


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    job = tmp_path / "broken.yaml"
    job.write_text("model:\n  pipeline: animatediff\nframes: [1, 2\nfps: 8\n")
    with pytest.raises(SpecError) as info:
        load_spec(job)
    [problem] = info.value.problems
    assert problem.startswith(f"not valid YAML at {job}:4:")
    assert "<unicode string>" not in str(info.value) and "\n" not in problem
    result = CliRunner().invoke(main, ["plan", str(job)])
    assert result.exit_code == 2 and str(job) in result.output


def test_a_bad_dash_o_names_the_option_not_the_spec_file(tmp_path):
    job = write_spec(tmp_path, base_spec(tmp_path))
    result = CliRunner().invoke(main, ["plan", str(job), "-o", str(tmp_path / "x.webm")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: -o/--output: must end in .mp4 (the farm writes H.264 in mp4); got '{tmp_path / 'x.webm'}'"]


def test_dash_o_and_spec_problems_are_reported_together(tmp_path):
    job = write_spec(tmp_path, base_spec(tmp_path, steps=0))
    result = CliRunner().invoke(main, ["plan", str(job), "-o", str(tmp_path / "nope" / "x.mp4")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("error: -o/--output: folder") and "does not exist" in lines[0]
    assert lines[1] == f"error: invalid job spec in {job}:"
    assert lines[2] == "  - steps: input should be greater than 0; got 0"


def test_the_output_in_the_file_is_blamed_on_the_file(tmp_path):
    found = problems(base_spec(tmp_path, output=str(tmp_path / "out.avi")))
    assert found == [f"output: must end in .mp4 (the farm writes H.264 in mp4); got '{tmp_path / 'out.avi'}'"]


# -- what each pipeline's descriptor says the spec may hold ------------------------------------
def _problems(data) -> list[str]:
    from farm.errors import SpecError
    from farm.spec import parse_spec

    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value.problems


def test_a_pipeline_refuses_what_its_descriptor_refuses_and_each_block_belongs_to_one_pipeline(tmp_path):
    from tests.conftest import base_spec

    image = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    svd = base_spec(tmp_path, model={"pipeline": "svd", "scheduler": "lcm", "loras": [{"id": "tiny-sd-lora", "name": "x"}],
                                     "memory": {"vae_slicing": True}},
                    control={"video": str(tmp_path)}, window={"length": 16, "overlap": 4})
    problems = _problems(svd)
    assert any(p.startswith("model.scheduler: svd uses its own EulerDiscreteScheduler") for p in problems)
    assert any(p.startswith("model.loras: LoRAs apply to the AnimateDiff pipelines") for p in problems)
    assert any(p.startswith("model.memory.vae_slicing: the SVD VAE") for p in problems)
    assert "svd: model.pipeline svd needs its `svd:` block with at least `image:`" in problems
    assert ("control: the `control:` block is only for model.pipeline animatediff-controlnet; this job uses svd"
            in problems)
    assert any(p.startswith("window.overlap: must be 1 for svd") for p in problems)
    assert any(p.startswith("prompt: svd is conditioned on svd.image, not on text") for p in problems)

    plain = base_spec(tmp_path, svd={"image": str(image)})
    assert _problems(plain) == ["svd: the `svd:` block is only for model.pipeline svd; this job uses animatediff"]


def test_a_chained_pipeline_gets_its_own_defaults(tmp_path):
    from farm.spec import parse_spec
    from tests.conftest import base_spec

    image = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    data = base_spec(tmp_path, model={"pipeline": "svd"}, svd={"image": str(image)}, window={"length": 8})
    for key in ("prompt", "guidance"):
        data.pop(key)
    data.pop("negative_prompt")
    spec = parse_spec(data)
    assert (spec.window.overlap, spec.guidance, spec.model.scheduler_name) == (1, 3.0, None)
