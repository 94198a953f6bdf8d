"""Outputs on object storage: URI rules, and real uploads to a local S3 server (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from farm import outputs
from farm.encode import VideoWriter
from farm.video import probe, read_frames
from farm.errors import EncodeError
from farm.report import report_path
from farm.util import write_json_atomic
from tests import ray_heads
from tests.ray_heads import free_ports

FRAMES = 12

s3_server = ray_heads.s3_server  # fixture (tests/ray_heads.py)


def _write_video(path, frames=FRAMES):
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    with VideoWriter(path, 64, 64, 8, crf=0, preset="ultrafast") as out:
        for i in range(frames):
            frame = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)),
                              np.full((64, 64), i * 20, np.uint8)], axis=-1)
            out.write(frame)


def _keys(bucket: str) -> list[str]:
    fs, _ = outputs.filesystem(f"s3://{bucket}/x.mp4")
    infos = fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


@pytest.mark.quick
@pytest.mark.parametrize("value, uri", [
    ("s3://bucket/renders/a.mp4", True), ("gs://b/a.mp4", True), ("http://host/a.mp4", True),
    ("file:///tmp/a.mp4", True), ("out.mp4", False), ("/abs/out.mp4", False), ("./a://b.mp4", False),
])
def test_is_uri_tells_uris_from_paths(value, uri):
    assert outputs.is_uri(value) is uri


@pytest.mark.quick
@pytest.mark.parametrize("uri, says", [
    ("http://host/a.mp4", "unsupported storage scheme"),
    ("file:///tmp/a.mp4", "unsupported storage scheme"),
    ("s3://bucket/a.avi", "must end in .mp4"),
    ("s3:///a.mp4", "no bucket"),
    ("s3://bucket", "no object key"),
    ("s3://bucket/dir/", "no object key"),
    ("s3://bucket/a.mp4?endpoint_override=x", "no ?query"),
])
def test_bad_output_uris_are_refused_with_the_reason(uri, says):
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        outputs.check_output_uri(uri)
    for good in ("s3://bucket/renders/a.mp4", "gs://bucket/a.MP4", "gcs://bucket/x/y.mp4"):
        assert outputs.check_output_uri(good) == good


@pytest.mark.quick
def test_a_local_output_is_written_in_place(tmp_path):
    target = tmp_path / "out.mp4"
    with outputs.staged_output(str(target)) as local:
        assert local == target
        _write_video(local)
    assert probe(target).frames == FRAMES


@pytest.mark.quick
def test_video_and_report_reach_s3_whole_and_decode(tmp_path, s3_server):
    uri = f"s3://{s3_server.bucket}/renders/fox.mp4"
    outputs.check_destination(uri)
    with outputs.staged_output(uri) as local:
        assert local.name == "fox.mp4" and local.parent != tmp_path
        _write_video(local)
        write_json_atomic(report_path(local), {"output": uri, "output_frames": FRAMES})
        Path(f"{local}.report.html").write_text("<html></html>")
        assert outputs.exists(uri) is False  # nothing under the final key while the job runs
    assert not local.parent.exists()  # the local staging folder is gone

    back = tmp_path / "back.mp4"
    back.write_bytes(outputs.read_bytes(uri))
    info = probe(back)
    assert (info.frames, info.width, info.height, info.codec) == (FRAMES, 64, 64, "h264")
    frames = read_frames(back)
    assert frames.shape == (FRAMES, 64, 64, 3)
    assert abs(int(frames[-1, ..., 2].mean()) - (FRAMES - 1) * 20) <= 2  # the last frame, not a copy of the first
    assert json.loads(outputs.read_bytes(uri + ".report.json")) == {"output": uri, "output_frames": FRAMES}
    # Only the two final objects: the temporary .part keys were removed.
    assert outputs.read_bytes(uri + ".report.html") == b"<html></html>"
    assert _keys(s3_server.bucket) == [f"{s3_server.bucket}/renders/fox.mp4",
                                       f"{s3_server.bucket}/renders/fox.mp4.report.html",
                                       f"{s3_server.bucket}/renders/fox.mp4.report.json"]
    fs, path = outputs.filesystem(uri)
    with fs.open_input_stream(path) as f:
        assert f.metadata()["Content-Type"] == b"video/mp4"


@pytest.mark.quick
def test_a_failed_job_uploads_its_report_but_keeps_the_old_video(tmp_path, s3_server):
    uri = f"s3://{s3_server.bucket}/fox.mp4"
    with outputs.staged_output(uri) as local:
        _write_video(local, frames=5)
    old = outputs.read_bytes(uri)

    with pytest.raises(RuntimeError, match="window 3 failed"):
        with outputs.staged_output(uri) as local:
            _write_video(local, frames=9)
            write_json_atomic(report_path(local), {"state": "FAILED"})
            raise RuntimeError("window 3 failed")
    assert outputs.read_bytes(uri) == old
    assert json.loads(outputs.read_bytes(uri + ".report.json")) == {"state": "FAILED"}
    assert not any(".part" in k for k in _keys(s3_server.bucket))


@pytest.mark.quick
def test_the_s3_specific_endpoint_variable_wins(tmp_path, s3_server, monkeypatch):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    src = tmp_path / "v.mp4"
    _write_video(src)
    outputs.upload_file(src, f"s3://{s3_server.bucket}/v.mp4")
    assert outputs.read_bytes(f"s3://{s3_server.bucket}/v.mp4") == src.read_bytes()


@pytest.mark.quick
def test_a_missing_bucket_is_found_before_any_rendering(s3_server):
    with pytest.raises(EncodeError, match="bucket 'no-such-bucket'.*does not exist"):
        outputs.check_destination("s3://no-such-bucket/a.mp4")
    with pytest.raises(EncodeError, match="no-such-bucket"):
        with outputs.staged_output("s3://no-such-bucket/a.mp4") as local:
            _write_video(local)


def test_farm_render_writes_its_video_and_reports_to_s3(tmp_path, s3_server, warm_farm):
    from click.testing import CliRunner

    from farm.video import read_frames
    from scheduler.cli import main
    from tests.conftest import base_spec, write_spec

    uri = f"s3://{s3_server.bucket}/jobs/fox.mp4"
    job = write_spec(tmp_path, base_spec(tmp_path, frames=28))
    result = CliRunner().invoke(main, ["render", str(job), "-o", uri, "--workers", "1", "--threads", "1",
                                       "--store", str(tmp_path / "store"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["output"] == uri
    local = tmp_path / "back.mp4"
    local.write_bytes(outputs.read_bytes(uri))
    assert len(read_frames(local)) == 28
    uploaded = json.loads(outputs.read_bytes(uri + ".report.json"))
    assert uploaded["output"] == uri and uploaded["windows_rendered"] == 2
    assert b"<svg" in outputs.read_bytes(uri + ".report.html")
