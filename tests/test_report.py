"""The typed report: its JSON keys are an interface scripts read."""

from __future__ import annotations

import json

import pytest

from farm.report import Report, report_path

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def _report(**fields) -> Report:
    base = dict(output="/tmp/x.mp4", state="DONE", frames=16, output_frames=16, output_fps=8.0, width=64,
                height=64, blend="linear", windows=[], windows_rendered=1, windows_cached=0,
                store={"path": "(off)", "reused": [], "corrupt_removed": []}, blocklist=[], stages={"total": 1.0},
                plan={"windows": 1}, actors=[], workers=1, threads_per_actor=1, spec={}, versions={"python": "3"})
    return Report(**(base | fields))


def test_a_single_window_job_keeps_its_null_seam_summary_and_a_failed_one_has_no_metrics():
    done = _report(flicker={"score": 0.9, "curve": []}, seams=[], seam_ratio_max=None, seam_ratio_median=None)
    d = done.to_dict()
    assert d["seam_ratio_max"] is None and d["seam_ratio_median"] is None and d["seams"] == []
    assert "failed" not in d and "error" not in d and "interpolate" not in d
    failed = _report(state="FAILED", error="no pipeline actor is left").to_dict()
    assert failed["error"] == "no pipeline actor is left"
    assert not {"flicker", "seams", "seam_ratio_max", "seam_ratio_median"} & set(failed)
    assert list(d)[:3] == ["output", "state", "frames"]  # the order scripts and people read


def test_the_report_reads_like_its_json_and_is_written_next_to_the_video(tmp_path):
    r = _report(output=str(tmp_path / "v.mp4"), flicker={"score": 0.9, "curve": [1.0]}, seams=[],
                seam_ratio_max=None, seam_ratio_median=None)
    assert r["windows_rendered"] == 1 and dict(r) == r.to_dict() and "error" not in r
    r.write(tmp_path / "v.mp4")
    assert json.loads(report_path(tmp_path / "v.mp4").read_text()) == r.to_dict()
    assert (tmp_path / "v.mp4.report.html").read_text().startswith("<!DOCTYPE html>")
