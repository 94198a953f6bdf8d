"""Per-frame noise and the streaming encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farm.encode import ParallelVideoWriter, VideoWriter, open_writer
from farm.video import probe, read_frames
from farm.errors import EncodeError
from farm.noise import frame_noise, window_noise

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def test_neighbouring_windows_share_noise_on_their_overlap():
    shape = (4, 8, 8)
    a = window_noise(42, 0, 16, shape)
    b = window_noise(42, 12, 28, shape)
    assert a.shape == (1, 4, 16, 8, 8)
    assert torch.equal(a[:, :, 12:], b[:, :, :4])
    assert not torch.equal(a[:, :, 0], a[:, :, 1])  # frames differ from each other


def test_noise_depends_on_seed_and_frame_only():
    assert torch.equal(frame_noise(7, 3, (4, 2, 2)), frame_noise(7, 3, (4, 2, 2)))
    assert not torch.equal(frame_noise(7, 3, (4, 2, 2)), frame_noise(8, 3, (4, 2, 2)))
    assert not torch.equal(frame_noise(7, 3, (4, 2, 2)), frame_noise(7, 4, (4, 2, 2)))
    torch.manual_seed(123)  # the global RNG has no say
    x = frame_noise(7, 3, (4, 2, 2))
    torch.manual_seed(999)
    assert torch.equal(x, frame_noise(7, 3, (4, 2, 2)))


def _gradient_frames(n, h=32, w=48):
    ys, xs = np.mgrid[0:h, 0:w]
    return [np.stack([(xs * 5 + i * 7) % 256, (ys * 7) % 256, np.full_like(xs, i * 9 % 256)], -1).astype(np.uint8)
            for i in range(n)]


def test_writer_produces_exact_frame_count_size_and_fps(tmp_path):
    out = tmp_path / "v.mp4"
    with VideoWriter(out, 48, 32, fps=12) as w:
        for f in _gradient_frames(30):
            w.write(f)
    info = probe(out)
    assert (info.frames, info.width, info.height, info.fps) == (30, 48, 32, 12.0)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    decoded = read_frames(out)
    assert decoded.shape == (30, 32, 48, 3)
    assert np.abs(decoded.astype(int) - np.stack(_gradient_frames(30)).astype(int)).mean() < 8
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp file left behind


def test_crash_mid_stream_leaves_no_file_under_the_final_name(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 48, 32, fps=8) as w:
            for f in _gradient_frames(5):
                w.write(f)
            raise RuntimeError("driver died")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_survives_a_failed_render(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"previous good video")
    with pytest.raises(EncodeError):
        with VideoWriter(out, 48, 32, fps=8) as w:
            w.write(np.zeros((10, 10, 3), np.uint8))  # wrong size
    assert out.read_bytes() == b"previous good video"


def test_probe_rejects_a_truncated_file(tmp_path):
    out = tmp_path / "v.mp4"
    with VideoWriter(out, 48, 32, fps=8) as w:
        for f in _gradient_frames(20):
            w.write(f)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    with pytest.raises(EncodeError):
        probe(out)


# -- segments encoded in parallel (encode.parallel) -------------------------------------------

def _numbered_frames(n, h=32, w=48):
    """Flat frames whose colour says their index (red: i mod 11, green: i div 11, 20 levels
    apart), so a dropped, repeated or swapped frame shows."""
    assert n <= 121
    return [np.full((h, w, 3), (16 + 20 * (i % 11), 16 + 20 * (i // 11), 128), np.uint8) for i in range(n)]


@pytest.mark.parametrize("fps", [12.0, 7.5])
def test_parallel_segments_join_into_the_same_frames_in_order(tmp_path, fps):
    frames = _numbered_frames(100)
    out = tmp_path / "v.mp4"
    with ParallelVideoWriter(out, 48, 32, fps=fps, parallel=3, segment_frames=16) as w:
        for f in frames:
            w.write(f)
    info = probe(out)  # decodes the whole file; raises on any decoding error
    assert (info.frames, info.width, info.height, info.fps) == (100, 48, 32, fps)
    decoded = read_frames(out)
    colours = np.array([f.mean((0, 1)) for f in frames])
    nearest = [int(np.linalg.norm(colours - d.mean((0, 1)), axis=1).argmin()) for d in decoded]
    assert nearest == list(range(100))
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # segments and lists removed


def test_parallel_segments_look_like_one_encoder(tmp_path):
    frames = _gradient_frames(60)
    single, parallel = tmp_path / "single.mp4", tmp_path / "parallel.mp4"
    with VideoWriter(single, 48, 32, fps=12) as w:
        for f in frames:
            w.write(f)
    with open_writer(parallel, 48, 32, 12, parallel=2, segment_frames=20) as w:
        for f in frames:
            w.write(f)
    a, b = read_frames(single).astype(int), read_frames(parallel).astype(int)
    assert a.shape == b.shape == (60, 32, 48, 3)
    source = np.stack(frames).astype(int)
    assert np.abs(b - source).mean() < 8 and np.abs(b - a).mean() < 2


def test_a_parallel_encode_that_fails_leaves_nothing_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"previous good video")
    with pytest.raises(RuntimeError):
        with ParallelVideoWriter(out, 48, 32, fps=8, parallel=2, segment_frames=8) as w:
            for f in _gradient_frames(30):  # four segments started
                w.write(f)
            raise RuntimeError("driver died")
    with pytest.raises(EncodeError, match="frame 0 is"):
        with ParallelVideoWriter(out, 48, 32, fps=8) as w:
            w.write(np.zeros((10, 10, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    assert out.read_bytes() == b"previous good video"


def test_parallel_queues_are_bounded_by_memory(tmp_path):
    w = ParallelVideoWriter(tmp_path / "v.mp4", 1920, 1080, 24, parallel=4, segment_frames=240, queue_bytes=256 << 20)
    w.abort()
    assert w._queue_frames >= 2 and w._queue_frames * 4 * 1920 * 1080 * 3 <= 256 << 20  # ≤ 256 MiB queued
    assert list(tmp_path.iterdir()) == []
