"""The SVD and ControlNet renderers, LoRAs, schedulers, control frames and poses, on tiny
real models (built offline, random weights), without Ray: 8 frames, 2–4 steps, 32–64 px."""

from __future__ import annotations

import dataclasses

import click
import imageio_ffmpeg
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from farm.control import count_control_frames, read_control_frames
from farm.errors import FarmError, SpecError
from farm.models.tiny_lora import tiny_lora_path
from farm.plan import split
from farm.poses import ANNOTATOR_FILES, draw_stick_figure, extract_poses, write_pose_frames
from farm.renderers import make_renderer
from farm.tasks import Overrides, WindowTask
from farm.spec import parse_spec
from tests.conftest import base_spec

FRAMES = 8
SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are all thread synchronisation: on a small shared CPU one torch thread
    renders these windows many times faster than two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _window():
    return split(FRAMES, FRAMES, 0)[0]


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _ad_spec(tmp_path, model=None, **over):
    """A one-window AnimateDiff job of 8 frames."""
    spec = base_spec(tmp_path, frames=FRAMES, width=SIZE, height=SIZE, window={"length": FRAMES, "overlap": 2})
    spec["model"] = {**spec["model"], **(model or {})}
    spec.update(over)
    return parse_spec(spec)


def _render(spec, **inputs) -> np.ndarray:
    task = dataclasses.replace(WindowTask.from_spec(spec, _window()), **inputs)
    frames, fallbacks = make_renderer(spec).render(task)
    assert fallbacks == ()
    assert frames.shape == (FRAMES, spec.height, spec.width, 3) and frames.dtype == np.uint8
    return frames


# --- SVD ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svd_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("svd") / "start.png"
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    picture = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(picture).save(path)
    return path, picture


def _svd_spec(tmp_path, image, **svd):
    return parse_spec({
        "model": {"pipeline": "svd", "base": "tiny"},
        "svd": {"image": str(image), **svd},
        "frames": FRAMES, "width": SIZE, "height": SIZE, "steps": 3, "guidance": 2.5, "seed": 7,
        "window": {"length": FRAMES},
        "output": str(tmp_path / "out.mp4"),
    })


def test_svd_renders_the_same_frames_twice_and_the_motion_bucket_matters(tmp_path, svd_image):
    path, picture = svd_image
    spec = _svd_spec(tmp_path, path, motion_bucket_id=127)
    renderer = make_renderer(spec)
    task = dataclasses.replace(WindowTask.from_spec(spec, _window()), image=picture)
    first, fallbacks = renderer.render(task)
    again, _ = renderer.render(task)
    assert fallbacks == () and first.shape == (FRAMES, SIZE, SIZE, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert first.std() > 1  # a picture, not a flat frame

    other = _render(_svd_spec(tmp_path, path, motion_bucket_id=20), image=picture)
    assert _differ(first, other) > 0.5  # measured 2.2 levels

    # The NaN fallback decodes by hand with the VAE in fp32: on a CPU in fp32, the same frames.
    inner = renderer.inner
    plain = inner.render(task)
    by_hand = inner.render(task, Overrides(vae_fp32=True))
    assert plain.dtype == np.float32 and plain.min() >= 0 and plain.max() <= 1
    assert np.abs(plain - by_hand).max() < 1e-6
    # SVD's VAE decoder is temporal: a smaller decode chunk sees fewer neighbours, so the
    # OOM fallback changes the frames a little (and only a little).
    chunked = inner.render(task, Overrides(decode_chunk_size=4))
    assert 0 < np.abs(plain - chunked).mean() < 0.1  # measured 0.025


def test_svd_needs_its_conditioning_image(tmp_path, svd_image):
    spec = _svd_spec(tmp_path, svd_image[0])
    with pytest.raises(ValueError, match="conditioning image"):
        make_renderer(spec).inner.render(WindowTask.from_spec(spec, _window()))


# --- ControlNet ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def walkers(tmp_path_factory):
    """Two control folders of 8 frames: a figure walking, and one frozen mid-stride."""
    root = tmp_path_factory.mktemp("control")
    walking = write_pose_frames(root / "walking", FRAMES, SIZE, SIZE)
    frozen = root / "frozen"
    frozen.mkdir()
    for i in range(FRAMES):
        Image.fromarray(draw_stick_figure(SIZE, SIZE, 0.25, x=0.7)).save(frozen / f"{i:05d}.png")
    return walking, frozen


def _control_spec(tmp_path, video, scale=1.0, **over):
    return _ad_spec(tmp_path, {"pipeline": "animatediff-controlnet"},
                    control={"video": str(video), "scale": scale, "model": "tiny"}, **over)


def test_controlnet_follows_the_control_frames(tmp_path, walkers):
    walking, frozen = walkers
    spec = _control_spec(tmp_path, walking)
    renderer = make_renderer(spec)
    task = WindowTask.from_spec(spec, _window())

    def render(folder, renderer=renderer):
        control = read_control_frames(folder, 0, FRAMES, SIZE, SIZE)
        return renderer.render(dataclasses.replace(task, control=control))[0]

    a, b = render(walking), render(frozen)
    assert np.array_equal(a, render(walking))
    assert _differ(a, b) > 0.3  # measured 1.0 levels
    # At scale 0 the ControlNet adds nothing, whatever the frames show.
    off = make_renderer(_control_spec(tmp_path, walking, scale=0.0))
    assert np.array_equal(render(walking, off), render(frozen, off))


def test_controlnet_with_a_prompt_schedule(tmp_path, walkers):
    spec = _control_spec(tmp_path, walkers[0], prompt=None, prompts={0: "a fox", 4: "a cat"}, prompt_transition=2)
    control = read_control_frames(walkers[0], 0, FRAMES, SIZE, SIZE)
    scheduled = _render(spec, control=control)
    single = _render(_control_spec(tmp_path, walkers[0]), control=control)
    assert _differ(scheduled, single) > 2  # measured 9.4 levels


def test_a_short_control_video_is_a_spec_error(tmp_path, walkers):
    with pytest.raises(SpecError, match="control.video: has 8 frames but the job renders 16"):
        parse_spec({**base_spec(tmp_path, frames=16), "model": {"pipeline": "animatediff-controlnet"},
                    "control": {"video": str(walkers[0])}})


# --- LoRAs and schedulers --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["motion", "sd"])
def test_a_lora_changes_the_frames_and_weight_zero_does_not(tmp_path, kind):
    def lora(weight):
        return {"loras": [{"path": str(tiny_lora_path(kind)), "weight": weight, "name": "zoom"}]}

    plain = _render(_ad_spec(tmp_path))
    assert _differ(_render(_ad_spec(tmp_path, lora(0.8))), plain) > 2  # measured 9.5 (motion), 5.6 (sd)
    # Weight 0 scales the LoRA's output by exactly 0: bit-identical frames.
    assert np.array_equal(_render(_ad_spec(tmp_path, lora(0.0))), plain)


def test_euler_and_lcm_render_and_differ_from_ddim(tmp_path):
    ddim = _render(_ad_spec(tmp_path, {"scheduler": "ddim"}))
    euler = _render(_ad_spec(tmp_path, {"scheduler": "euler"}))
    lcm = _render(_ad_spec(tmp_path, {"scheduler": "lcm"}, steps=4, guidance=1.0))
    for frames in (euler, lcm):
        assert frames.std() > 1
        assert _differ(frames, ddim) > 2  # measured 4.9 (euler), 16.9 (lcm)


# --- control frames IO ---------------------------------------------------------------------


def _write_mp4(path, frames: np.ndarray) -> None:
    writer = imageio_ffmpeg.write_frames(str(path), frames.shape[2:0:-1], fps=8, quality=9, macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def test_control_frames_from_a_folder_and_an_mp4(tmp_path, walkers):
    walking = walkers[0]
    assert count_control_frames(walking) == FRAMES
    every = read_control_frames(walking, 0, FRAMES, SIZE, SIZE)
    assert every.shape == (FRAMES, SIZE, SIZE, 3) and every.dtype == np.uint8
    assert np.array_equal(every[3], np.asarray(Image.open(walking / "00003.png").convert("RGB")))
    small = read_control_frames(walking, 2, 5, 32, 24)
    assert small.shape == (3, 24, 32, 3)

    video = tmp_path / "poses.mp4"
    _write_mp4(video, every)
    assert count_control_frames(video) == FRAMES
    decoded = read_control_frames(video, 0, FRAMES, SIZE, SIZE)
    assert decoded.shape == every.shape and _differ(decoded, every) < 12  # lossy H.264
    assert np.array_equal(read_control_frames(video, 2, 5, SIZE, SIZE), decoded[2:5])
    assert read_control_frames(video, 5, 8, 32, 24).shape == (3, 24, 32, 3)
    with pytest.raises(ValueError, match="ended after 8 frames"):
        read_control_frames(video, 6, 10, SIZE, SIZE)


def test_unusable_control_videos_say_why(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is empty"):
        count_control_frames(empty)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no frames here")
    with pytest.raises(ValueError, match="holds no images.*readme.txt"):
        count_control_frames(notes)
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(ValueError, match="cannot read .*bad.mp4.* as a video"):
        count_control_frames(bad)
    with pytest.raises(SpecError, match="control.video: folder .*empty.* is empty"):
        parse_spec({**base_spec(tmp_path), "model": {"pipeline": "animatediff-controlnet"},
                    "control": {"video": str(empty)}})


# --- poses -----------------------------------------------------------------------------------


def test_stick_figures_move(tmp_path):
    a, b = draw_stick_figure(SIZE, SIZE, 0.0), draw_stick_figure(SIZE, SIZE, 0.25)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert a.any() and not np.array_equal(a, b)
    assert (a.sum(-1) == 0).mean() > 0.5  # on black, as OpenPose draws


def test_poses_without_annotator_weights_say_what_is_missing(tmp_path, walkers):
    video = tmp_path / "in.mp4"
    _write_mp4(video, read_control_frames(walkers[0], 0, FRAMES, SIZE, SIZE))
    weights = tmp_path / "annotators"
    weights.mkdir()
    (weights / "body_pose_model.pth").write_bytes(b"")
    with pytest.raises(FarmError) as err:
        extract_poses(video, tmp_path / "poses", weights)
    message = str(err.value)
    assert "hand_pose_model.pth" in message and "facenet.pth" in message and "body_pose_model.pth" not in message
    assert str(weights) in message and "lllyasviel/Annotators" in message
    assert not (tmp_path / "poses").exists()

    from scheduler.cli_poses import register

    @click.group()
    def main():
        pass

    register(main)
    result = CliRunner().invoke(main, ["poses", str(video), str(tmp_path / "poses"),
                                       "--annotator-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert all(name in result.stderr for name in ANNOTATOR_FILES)
    assert str(tmp_path / "nowhere") in result.stderr
