"""Prompt schedules: per-frame conditioning that blends in after each change and never
reaches back before it."""

from __future__ import annotations

import pytest

from farm.errors import SpecError
from farm.keys import model_identity, task_key
from farm.plan import plan_windows
from farm.prompts import frame_conditioning, window_prompts
from farm.tasks import WindowTask
from farm.spec import parse_spec
from tests.conftest import base_spec

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick

A, B = "a red fox running through snow", "a fox in a green forest"


def _scheduled(tmp_path, prompts, **over):
    data = base_spec(tmp_path, frames=76, **over)  # windows start at 0, 12, 24, 36, 48, 60
    data.pop("prompt")
    data["prompts"] = prompts
    return data


def test_a_change_blends_in_from_its_frame_and_never_touches_earlier_frames():
    cond = frame_conditioning({0: A, 48: B}, transition=4, start=44, end=54)
    assert cond[:4] == ((A, A, 1.0),) * 4  # frames 44-47
    assert [c[2] for c in cond[4:8]] == [0.25, 0.5, 0.75, 1.0]  # frames 48-51
    assert all(c[:2] == (A, B) for c in cond[4:7]) and cond[7:] == ((B, B, 1.0),) * 3
    # A hard switch when the transition is one frame.
    assert frame_conditioning({0: A, 48: B}, 1, 47, 49) == ((A, A, 1.0), (B, B, 1.0))


def test_the_report_view_lists_each_prompt_run_of_a_window():
    runs = window_prompts(frame_conditioning({0: A, 48: B}, 4, 36, 52), 36)
    assert runs == [
        {"from_frame": 36, "to_frame": 47, "prompt": A},
        {"from_frame": 48, "to_frame": 50, "prompt": B, "blending_from": A},
        {"from_frame": 51, "to_frame": 51, "prompt": B},
    ]


def test_changing_the_prompt_at_frame_48_changes_only_the_windows_that_reach_it(tmp_path):
    def keys(data):
        spec = parse_spec(data)
        model_id = model_identity(spec, "cpu")
        return [(w, task_key(model_id, WindowTask.from_spec(spec, w))) for w in plan_windows(spec).windows]

    before = keys(_scheduled(tmp_path, {0: A}))
    after = keys(_scheduled(tmp_path, {0: A, 48: B}))
    assert before == keys(base_spec(tmp_path, frames=76, prompt=A))  # {0: A} is the same as prompt: A
    for (w, k0), (_, k1) in zip(before, after):
        assert (k0 == k1) == (w.end <= 48), w


@pytest.mark.parametrize("prompts, message", [
    ({48: B}, "prompts: the schedule must say what frame 0 shows"),
    ({0: A, 80: B}, "prompts: frames must be in 0..75; got [80]"),
    ({0: A, 10: " "}, "prompts: the text at frame(s) [10] is empty"),
])
def test_a_bad_schedule_names_the_problem(tmp_path, prompts, message):
    with pytest.raises(SpecError) as err:
        parse_spec(_scheduled(tmp_path, prompts))
    assert message in str(err.value)


def test_prompt_and_prompts_are_exclusive(tmp_path):
    data = _scheduled(tmp_path, {0: A})
    data["prompt"] = A
    with pytest.raises(SpecError, match="give exactly one of `prompt`"):
        parse_spec(data)
