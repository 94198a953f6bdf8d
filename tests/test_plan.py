"""The planner: a pure function, checked with properties over random specs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.plan import plan_windows, split
from farm.spec import parse_spec
from tests.conftest import base_spec, write_spec

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


@st.composite
def shapes(draw):
    length = draw(st.integers(1, 40))
    overlap = draw(st.integers(0, length - 1))
    frames = draw(st.integers(length, 400))
    return frames, length, overlap


@settings(max_examples=400, deadline=None)
@given(shapes())
def test_windows_cover_every_frame_with_full_length_windows(shape):
    frames, length, overlap = shape
    ws = split(frames, length, overlap)
    assert ws[0].start == 0 and ws[-1].end == frames
    assert all(w.length == length for w in ws)  # never a short or degenerate last window
    assert [w.index for w in ws] == list(range(len(ws)))
    covered = set()
    for w in ws:
        covered.update(range(w.start, w.end))
    assert covered == set(range(frames))


@settings(max_examples=400, deadline=None)
@given(shapes())
def test_overlaps_are_as_asked_and_only_the_last_grows(shape):
    frames, length, overlap = shape
    ws = split(frames, length, overlap)
    for a, b in zip(ws, ws[1:]):
        shared = a.end - b.start
        assert a.overlap_next == b.overlap_prev == shared
        assert b.start > a.start  # strictly advancing: no duplicate windows
        if b is not ws[-1]:
            assert shared == overlap
        else:
            assert overlap <= shared < length
    assert ws[0].overlap_prev == 0 and ws[-1].overlap_next == 0


@settings(max_examples=200, deadline=None)
@given(shapes())
def test_window_count_is_minimal(shape):
    frames, length, overlap = shape
    ws = split(frames, length, overlap)
    stride = length - overlap
    # One window fewer could not reach the last frame with the asked overlap.
    assert (len(ws) - 2) * stride + length < frames or len(ws) == 1


def test_exact_fit_and_shifted_last_window():
    assert [(w.start, w.end) for w in split(64, 16, 4)] == [(0, 16), (12, 28), (24, 40), (36, 52), (48, 64)]
    ws = split(60, 16, 4)
    assert [(w.start, w.end) for w in ws][-2:] == [(36, 52), (44, 60)]
    assert ws[-1].overlap_prev == 8


def test_single_window_when_length_equals_frames():
    (w,) = split(16, 16, 4)
    assert (w.start, w.end, w.overlap_prev, w.overlap_next) == (0, 16, 0, 0)


def test_invalid_shapes_raise():
    with pytest.raises(ValueError):
        split(10, 16, 4)
    with pytest.raises(ValueError):
        split(64, 16, 16)


def test_plan_totals(tmp_path):
    plan = plan_windows(parse_spec(base_spec(tmp_path, frames=64, steps=4)))
    d = plan.to_dict()
    assert len(plan.windows) == 5 and d["rendered_frames"] == 80 and d["overlap_frames"] == 16
    assert d["denoise_frame_steps"] == 320


def test_farm_plan_cli_never_imports_ray_or_torch(tmp_path):
    job = write_spec(tmp_path, base_spec(tmp_path, frames=64))
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from scheduler.cli import main\n"
        f"r = CliRunner().invoke(main, ['plan', {str(job)!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(json.dumps({'plan': json.loads(r.output), 'ray': 'ray' in sys.modules, 'torch': 'torch' in sys.modules}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["ray"] is False and out["torch"] is False
    assert len(out["plan"]["windows"]) == 5 and out["plan"]["denoise_frame_steps"] == 80 * 2
