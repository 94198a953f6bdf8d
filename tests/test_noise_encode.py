"""Per-frame noise and the streaming encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farm.encode import VideoWriter, probe, read_frames
from farm.errors import EncodeError
from farm.noise import frame_noise, window_noise


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
