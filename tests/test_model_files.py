"""Models as downloaded files: single-file checkpoints in the original (LDM) layout, kohya
and AnimateDiff LoRA files, `model.vae`, and the sha256 that keys them, on the tiny models
written as such files (farm/models/tiny_files.py, farm/models/tiny_lora.py). No Ray."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time

import numpy as np
import pytest

from farm.errors import FarmError, SpecError
from farm.filehash import HASHED, SETTLE_NS, sidecar
from farm.keys import model_identity, task_key
from farm.models.lora_formats import read_keys
from farm.models.tiny import TINY_BASE, TINY_VAE, tiny_model_path
from farm.models.tiny_files import tiny_file_path
from farm.models.tiny_lora import tiny_lora_file, tiny_lora_path
from farm.pipelines._base import read_picture
from farm.plan import split
from farm.poses import write_pose_frames
from farm.renderers import make_renderer
from farm.spec import parse_spec
from farm.tasks import WindowTask
from tests.conftest import base_spec

FRAMES = 8
SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: tiny models render faster so on a small shared CPU, and the
    frames compared here come from the same kernels."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(tmp_path, model=None, **over):
    """A one-window AnimateDiff job of 8 frames at 64×64, 2 steps."""
    data = base_spec(tmp_path, frames=FRAMES, width=SIZE, height=SIZE, window={"length": FRAMES, "overlap": 2})
    data["model"] = {**data["model"], **(model or {})}
    data.update(over)
    return parse_spec(data)


def _task(spec, **inputs):
    return dataclasses.replace(WindowTask.from_spec(spec, split(FRAMES, FRAMES, 0)[0]), **inputs)


def _render(spec, **inputs) -> np.ndarray:
    frames, fallbacks = make_renderer(spec).render(_task(spec, **inputs))
    assert fallbacks == () and frames.shape == (FRAMES, SIZE, SIZE, 3)
    return frames


def _key(spec) -> str:
    return task_key(model_identity(spec, "cpu"), _task(spec))


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> np.ndarray:
    """The frames of the tiny diffusers folders, no LoRA, no VAE override."""
    return _render(_spec(tmp_path_factory.mktemp("plain")))


# --- single-file checkpoints -------------------------------------------------------------


def test_a_single_file_checkpoint_renders_the_frames_of_its_diffusers_folder(tmp_path, plain):
    """The tiny SD1.5 written as one LDM-layout file (UNet, VAE, CLIP text encoder), read
    with from_single_file and the tiny configs: the same frames, bit for bit; as a .ckpt
    (a Lightning-style pickle of tensors) too; and the motion adapter as AnimateDiff's own
    motion-module file."""
    checkpoint = tiny_file_path("sd15")
    assert _render(_spec(tmp_path, {"base": str(checkpoint), "config": "tiny"})).tobytes() == plain.tobytes()

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "tiny-sd15.ckpt"
    torch.save({"state_dict": load_file(str(checkpoint))}, pickled)
    motion = tiny_file_path("motion_adapter")
    both = _spec(tmp_path, {"base": str(pickled), "motion_adapter": str(motion), "config": "tiny"})
    assert np.array_equal(_render(both), plain)


def test_a_file_read_with_configs_of_another_model_names_the_fields(tmp_path):
    """The default configs are SD1.5's: a tiny file read with them fails at load, naming
    model.base and the configs it was read with."""
    spec = _spec(tmp_path, {"base": str(tiny_file_path("sd15"))})
    with pytest.raises(FarmError) as err:
        make_renderer(spec)
    message = str(err.value)
    assert message.startswith("cannot load model.base from") and "model.config" in message and "sd15" in message


def test_a_ckpt_that_holds_more_than_tensors_is_refused_unrun(tmp_path):
    """A pickle can run code when loaded; .ckpt files are read with weights_only=True, so
    one that holds an object is refused before the object is built, for a whole
    checkpoint (read by diffusers) and for a component (read by the farm)."""
    import torch
    from safetensors.torch import load_file

    ran = tmp_path / "the payload ran"

    class Payload:
        def __reduce__(self):
            return open, (str(ran), "w")

    tensors = load_file(str(tiny_file_path("sd15")))
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": tensors, "extra": Payload()}, evil)
    for field in ("base", "vae"):
        with pytest.raises(FarmError) as err:
            make_renderer(_spec(tmp_path, {field: str(evil), "config": "tiny"}))
        assert f"cannot load model.{field} from '{evil}'" in str(err.value)
        assert "weights_only=True" in str(err.value) and ".safetensors" in str(err.value)
    assert not ran.exists()


def test_the_controlnet_as_a_single_file_renders_as_its_folder(tmp_path):
    poses = write_pose_frames(tmp_path / "poses", FRAMES, SIZE, SIZE)
    from farm.control import read_control_frames

    control = read_control_frames(poses, 0, FRAMES, SIZE, SIZE)

    def spec(model):
        return _spec(tmp_path, {"pipeline": "animatediff-controlnet", **({"config": "tiny"} if model != "tiny" else {})},
                     control={"video": str(poses), "scale": 1.0, "model": model})

    folder = _render(spec("tiny"), control=control)
    assert np.array_equal(_render(spec(str(tiny_file_path("controlnet"))), control=control), folder)


def test_a_single_file_enters_the_key_by_content_hashed_once_per_version(tmp_path):
    """The key holds the file's sha256, read once per version of the file: the digest is
    kept beside it (`.sha256`) and reused while its stat is unchanged. A file changed a
    moment ago is read again until it settles (a write inside the filesystem's timestamp
    granularity could leave the stat as it was)."""
    checkpoint = tmp_path / "model.safetensors"
    shutil.copyfile(tiny_file_path("sd15"), checkpoint)
    spec = _spec(tmp_path, {"base": str(checkpoint), "config": "tiny"})
    counted = str(checkpoint.resolve())

    def settle():
        time.sleep(SETTLE_NS / 1e9 + 0.2)

    settle()
    first = _key(spec)
    assert _key(spec) == first and HASHED[counted] == 1
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in sidecar(checkpoint).read_text()

    # One byte changes (the size does not): a new key. A record made while the change was
    # fresh is not trusted: read once more when it has settled, and then not again.
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 1
    checkpoint.write_bytes(bytes(data))
    changed = _key(spec)
    assert changed != first and HASHED[counted] == 2
    settle()
    reads = HASHED[counted]
    assert _key(spec) == changed and _key(spec) == changed and HASHED[counted] == reads + 1

    # Touched, content unchanged: read once more, the same key. The byte back: the first key.
    os.utime(checkpoint)
    settle()
    assert _key(spec) == changed and _key(spec) == changed and HASHED[counted] == reads + 2
    data[-1] ^= 1
    checkpoint.write_bytes(bytes(data))
    assert _key(spec) == first and HASHED[counted] == reads + 3


# --- LoRA files --------------------------------------------------------------------------


def _lora(path, weight, name="style"):
    return {"loras": [{"path": str(path), "weight": weight, "name": name}]}


def test_a_kohya_lora_loads_every_layer_at_weight_zero_is_no_lora(tmp_path, plain):
    from farm.models.lora_formats import touched_layers

    kohya = tiny_lora_file("kohya")
    renderer = make_renderer(_spec(tmp_path, _lora(kohya, 1.0)))
    layers = {key.split(".")[0] for key in read_keys(kohya)}
    assert touched_layers(renderer.inner.pipe, "style") == len(layers)  # UNet and text encoder, none lost
    with_lora, _ = renderer.render(_task(renderer.inner.spec))
    assert _differ(with_lora, plain) > 2  # measured 6.5 levels
    assert np.array_equal(_render(_spec(tmp_path, _lora(kohya, 0.0))), plain)


def test_an_animatediff_motion_lora_file_renders_as_its_diffusers_twin(tmp_path, plain):
    """AnimateDiff's own motion-LoRA layout (a .ckpt, as v2_lora_ZoomIn.ckpt) is converted
    to diffusers' names: the frames of the same weights in diffusers' format."""
    original = _render(_spec(tmp_path, _lora(tiny_lora_file("motion-animatediff"), 0.8, "zoom")))
    assert np.array_equal(original, _render(_spec(tmp_path, _lora(tiny_lora_path("motion"), 0.8, "zoom"))))
    assert _differ(original, plain) > 2  # measured 5.2 levels


def test_a_lora_that_reaches_no_layer_is_refused_with_its_name(tmp_path):
    """diffusers loads a LoRA for another model family with only a warning: the farm
    refuses it, naming the LoRA and its file."""
    import torch
    from safetensors.torch import save_file

    flux = tmp_path / "flux-style.safetensors"  # diffusers' layout, for a DiT's transformer
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 32),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(32, 4)}, str(flux))
    kohya = tmp_path / "sdxl-style.safetensors"  # kohya's layout, for blocks this UNet does not have
    name = "lora_unet_down_blocks_5_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": torch.ones(4, 32), f"{name}.lora_up.weight": torch.ones(32, 4),
               f"{name}.alpha": torch.tensor(4.0)}, str(kohya))
    for path, lora in ((flux, "flux-style"), (kohya, "sdxl-style")):
        with pytest.raises(FarmError) as err:
            make_renderer(_spec(tmp_path, _lora(path, 1.0, lora)))
        assert f"model.loras[{lora}]" in str(err.value) and str(path) in str(err.value)


# --- model.vae ----------------------------------------------------------------------------


def test_model_vae_changes_the_frames_and_the_key_as_a_folder_or_a_file(tmp_path, plain):
    own = _spec(tmp_path)
    folder = _spec(tmp_path, {"vae": str(tiny_model_path(TINY_VAE))})
    single = _spec(tmp_path, {"vae": str(tiny_file_path("vae")), "config": "tiny"})
    other = _render(folder)
    assert _differ(other, plain) > 2  # measured 44 levels
    assert np.array_equal(_render(single), other)
    assert len({_key(own), _key(folder), _key(single)}) == 3
    # A whole pipeline's folder lends its vae/: the tiny base's own VAE, so its frames.
    assert np.array_equal(_render(_spec(tmp_path, {"vae": str(tiny_model_path(TINY_BASE))})), plain)


# --- model.ip_adapter ---------------------------------------------------------------------


def test_an_ip_adapter_folder_in_either_layout_or_as_bin_renders_as_tiny_and_a_bad_one_is_named(tmp_path):
    """`model.ip_adapter` as h94/IP-Adapter's layout (models/…), as a flat folder (the
    weights file at its top), or with its weights as a .bin (torch.load, weights only):
    the frames of `tiny`. A folder without the weights names the field and the layout."""
    import torch
    from safetensors.torch import load_file

    from farm.models.tiny import IP_ADAPTER_WEIGHTS, TINY_IP_ADAPTER

    tiny = tiny_model_path(TINY_IP_ADAPTER)
    flat = tmp_path / "flat"
    shutil.copytree(tiny / "models", flat)
    nested = tmp_path / "h94"
    shutil.copytree(tiny, nested)
    tensors = load_file(str(tiny / "models" / IP_ADAPTER_WEIGHTS))
    torch.save({part: {k.removeprefix(f"{part}."): v for k, v in tensors.items() if k.startswith(f"{part}.")}
                for part in ("image_proj", "ip_adapter")}, nested / "models" / "ip-adapter_sd15.bin")
    face = {"image": os.path.join(os.path.dirname(__file__), "..", "examples", "tiny", "portrait.png")}
    picture = read_picture(face["image"])

    def frames(**model):
        spec = _spec(tmp_path, {"ip_adapter": "tiny"} | model, reference=face | {"scale": 0.8})
        return _render(spec, reference=picture, reference_scale=0.8)

    anchored = frames()
    assert np.array_equal(frames(ip_adapter=str(flat)), anchored)
    assert np.array_equal(frames(ip_adapter=str(nested), ip_adapter_weights="ip-adapter_sd15.bin"), anchored)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FarmError) as err:
        make_renderer(_spec(tmp_path, {"ip_adapter": str(empty)}))
    assert str(err.value).startswith(f"cannot load model.ip_adapter from '{empty}'")
    assert "h94/IP-Adapter's layout (models/ip-adapter_sd15.safetensors and models/image_encoder/" in str(err.value)


# --- the spec -----------------------------------------------------------------------------


def _problems(data) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return "\n".join(info.value.problems)


@pytest.mark.quick
def test_single_files_and_their_configs_are_checked_field_by_field(tmp_path, svd_picture):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")  # the spec checks that it is there; the actor reads it
    notes = tmp_path / "model.txt"
    notes.write_text("not a model")

    def ad(**model):
        data = base_spec(tmp_path)
        data["model"] = {**data["model"], **model}
        return data

    svd = {"model": {"pipeline": "svd", "base": str(checkpoint), "vae": str(checkpoint)},
           "svd": {"image": str(svd_picture)}, "frames": 8, "window": {"length": 8}, "output": str(tmp_path / "o.mp4")}
    message = _problems(svd)
    assert "model.base: svd loads it from a folder in diffusers layout or a hub id" in message
    assert "animatediff, animatediff-controlnet" in message
    assert "model.vae: svd decodes with its own temporal VAE" in message
    assert "model.base: no file at" in _problems(ad(base=str(tmp_path / "missing.safetensors")))
    assert "model.base: " in (m := _problems(ad(base=str(notes)))) and "is a file but not a checkpoint" in m
    assert "model.config: names the configs single-file checkpoints are read with" in _problems(ad(config="tiny"))
    assert "model.config: must be sd15, tiny or a folder" in _problems(ad(base=str(checkpoint), config="nope"))
    message = _problems(ad(vae=str(checkpoint), config=str(tmp_path)))
    assert f"model.config: '{tmp_path}' has no vae/config.json, which model.vae (a single file) needs" in message
    relative = parse_spec(ad(base="model.safetensors", config="tiny"), base=tmp_path)
    assert relative.model.base == str(checkpoint)


@pytest.fixture
def svd_picture(tmp_path):
    from PIL import Image

    path = tmp_path / "start.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
    return path


# --- the SD1.5 configs ----------------------------------------------------------------------


def test_the_shipped_configs_are_stable_diffusion_1_5_s(tmp_path):
    """farm/data/sd15 builds the SD1.5 architecture (parameter counts as published for
    runwayml/stable-diffusion-v1-5), its CLIP tokenizer encodes as CLIP does, and the LDM
    names the farm writes for that architecture are the ones diffusers reads back: the
    tiny files are the real layout, at full size. Built on the meta device: no memory."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sf
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from farm.models import ldm_layout
    from farm.models.single_file import SD15_CONFIG

    config = str(SD15_CONFIG)
    tokenizer = CLIPTokenizer.from_pretrained(config, subfolder="tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config, subfolder="text_encoder"))
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(config, subfolder="controlnet"))
        adapter = MotionAdapter.from_config(MotionAdapter.load_config(config, subfolder="motion_adapter"))
    count = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert count == [859_520_964, 83_653_863, 123_060_480]

    def same(ours: dict, read_back: dict) -> bool:
        return ours.keys() == read_back.keys() and all(ours[k].shape == read_back[k].shape for k in ours)

    checkpoint = ldm_layout.unet_to_ldm(unet.state_dict(), 2) | ldm_layout.vae_to_ldm(vae.state_dict())
    checkpoint |= ldm_layout.text_encoder_to_ldm(text.state_dict())
    assert sf.infer_diffusers_model_type(checkpoint) == "v1"
    assert same(unet.state_dict(), sf.convert_ldm_unet_checkpoint(checkpoint, unet.config))
    assert same(vae.state_dict(), sf.convert_ldm_vae_checkpoint(checkpoint, vae.config))
    text_back = sf.convert_ldm_clip_checkpoint(checkpoint)
    assert same({"text_model." + k: v for k, v in text.state_dict().items()}, text_back)
    control = ldm_layout.controlnet_to_ldm(controlnet.state_dict(), 2)
    assert sf.infer_diffusers_model_type(control) == "controlnet"
    assert same(controlnet.state_dict(), sf.convert_controlnet_checkpoint(control, controlnet.config))
    motion = ldm_layout.motion_adapter_to_original(adapter.state_dict(), adapter.config.motion_max_seq_length)
    assert sf.infer_diffusers_model_type(motion) == "animatediff_v2"
    assert same({k: v for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")},
                sf.convert_animatediff_checkpoint_to_diffusers(motion))
