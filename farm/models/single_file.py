"""Single-file checkpoints: one `.safetensors` (or `.ckpt` / `.pth`) file in the original
Stable Diffusion (LDM) layout, as models are downloaded, instead of a diffusers folder.

diffusers reads them with `from_single_file`; what it cannot read from the file, the
architecture of each component, the tokenizer and the scheduler, comes from a config
folder in diffusers layout (no weights needed), `model.config`:

    sd15     (the default) the Stable Diffusion 1.5 configs shipped in farm/data/sd15/,
             with a ControlNet's (controlnet/) and AnimateDiff v2's motion modules'
             (motion_adapter/); the CLIP tokenizer files are derived from OpenAI's BPE
             table (scripts/derive_clip_tokenizer.py)
    tiny     the tiny models' configs (farm.models.tiny), for tests and demos
    FOLDER   any folder in the same layout (a diffusers checkout of the base model works)

Everything is read offline (`local_files_only=True`): nothing is fetched from a hub.

`.ckpt` and `.pth` files are pickles, which can run code when unpickled. They are read only
with `torch.load(weights_only=True)`: here, and in diffusers 0.42's own reader
(`diffusers.models.model_loading_utils.load_state_dict`, which passes `weights_only=True`
on every torch from 1.13), which `from_single_file` uses for a whole pipeline. A file that
holds more than tensors is refused with the reason (farm.models.load).

No torch at import: the spec and the window keys use the names below on the driver.
"""

from __future__ import annotations

from pathlib import Path

#: What a single-file checkpoint's name ends in.
SUFFIXES = (".safetensors", ".ckpt", ".pth")
#: The configs `model.config: sd15` names (shipped with the package).
SD15_CONFIG = Path(__file__).resolve().parent.parent / "data" / "sd15"
#: The spec fields that may name a single file, and the config each reads in a config folder.
CONFIG_NEEDS = {
    "model.base": "model_index.json",
    "model.motion_adapter": "motion_adapter/config.json",
    "model.vae": "vae/config.json",
    "control.model": "controlnet/config.json",
}


def is_single_file(ref) -> bool:
    """A model reference that is a checkpoint file on this machine (after validation:
    an absolute path)."""
    return isinstance(ref, str) and Path(ref).suffix.lower() in SUFFIXES and Path(ref).is_file()


def config_folder(config: str | None) -> Path:
    """The config folder `model.config` names (None: sd15)."""
    if config is None or config == "sd15":
        return SD15_CONFIG
    if config == "tiny":
        from farm.models.tiny import TINY_CONFIG, tiny_model_path

        return tiny_model_path(TINY_CONFIG)
    return Path(config)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint file's tensors: safetensors as they are, a pickle only through
    `torch.load(weights_only=True)`; a `state_dict` wrapper (Lightning checkpoints) is
    unwrapped."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    return state


def load_pipeline(pipeline_class, path: str, config: str | None, dtype, **components):
    """`pipeline_class` (an AnimateDiff pipeline) from a whole SD1.5 checkpoint (UNet,
    VAE and CLIP text encoder in one file), with `components` (the motion adapter, a
    ControlNet, a VAE) given ready-made."""
    return pipeline_class.from_single_file(path, config=str(config_folder(config)), local_files_only=True,
                                           dtype=dtype, **components)


def load_model(model_class, path: str, config: str | None, subfolder: str, dtype):
    """One model (AutoencoderKL, ControlNetModel) from its own file, its architecture from
    `subfolder` of the config folder."""
    return model_class.from_single_file(read_checkpoint(path), config=str(config_folder(config)),
                                        subfolder=subfolder, local_files_only=True, dtype=dtype)


def load_motion_adapter(path: str, config: str | None, dtype):
    """A MotionAdapter from AnimateDiff's own motion-module file (`mm_sd_v15_v2.ckpt`,
    `v3_sd15_mm.ckpt`, …). The versions differ in two settings, both read off the file:
    the mid-block motion module (v2 has one, v1 and v3 do not) and the length of the
    position table (24 frames for v1, 32 after)."""
    from diffusers import MotionAdapter

    state = read_checkpoint(path)
    found = {"use_motion_mid_block": any(k.startswith("mid_block.") for k in state)}
    tables = [v for k, v in state.items() if k.endswith(".pos_encoder.pe")]
    if tables:
        found["motion_max_seq_length"] = int(tables[0].shape[1])
    return MotionAdapter.from_single_file(state, config=str(config_folder(config)), subfolder="motion_adapter",
                                          local_files_only=True, dtype=dtype, **found)
