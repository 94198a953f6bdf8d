"""Model references: what kind of reference a string is (`tiny`, a local folder, a single
file, a hub id), and how one enters a window key: `tiny` by its build name, a hub id by
name, a local folder by the sha256 of its files, a single-file checkpoint or a LoRA file by
its sha256 (computed once per version of the file: farm/filehash.py), and the config
folder single files are read with (`model.config`) by the sha256 of its files. Shared by
the spec (farm/spec.py), the window keys (farm/keys.py) and the pipeline descriptors."""

from __future__ import annotations

from pathlib import Path

from farm.filehash import file_sha256
from farm.models.remote import is_remote, read_manifest
from farm.models.single_file import SD15_CONFIG, is_single_file
from farm.models.tiny import TINY_CONFIG
from farm.store import folder_digest

#: LoRA ids that name tiny LoRAs built offline (farm/models/tiny_lora.py), for tests and demos.
TINY_LORAS = {"tiny-motion-lora": "motion", "tiny-sd-lora": "sd"}


def is_local_ref(ref: str) -> bool:
    """A model reference that names a folder or file rather than a hub id (`org/name`)."""
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().is_dir()


def ref_identity(ref: str, tiny_name: str) -> str:
    if ref == "tiny":
        return f"tiny:{tiny_name}"
    if is_remote(ref):  # a staged model: the identity its local copy has (farm/models/remote.py)
        return read_manifest(ref).identity
    if is_single_file(ref):
        return f"file-sha256:{file_sha256(ref)}"
    if is_local_ref(ref):
        return f"folder-sha256:{folder_digest(ref)}"
    return f"hub:{ref}"


def config_identity(config: str | None) -> str:
    """`model.config` as it enters a key: the configs decide the architecture, tokenizer and
    scheduler settings a single file is read into."""
    if config == "tiny":
        return f"tiny:{TINY_CONFIG}"
    return f"folder-sha256:{folder_digest(SD15_CONFIG if config in (None, 'sd15') else config)}"


def spec_value(spec, field: str):
    """The value of a dotted spec field (`control.model`); None where a block is absent."""
    for step in field.split("."):
        spec = getattr(spec, step, None)
    return spec


def lora_identity(lora) -> dict:
    source = f"hub:{lora.id}" if lora.id else ref_identity(lora.path, "")
    if lora.id in TINY_LORAS:
        source = f"tiny:{lora.id}"
    if lora.path and is_remote(lora.path):
        source = read_manifest(lora.path).identity
    elif lora.path and Path(lora.path).is_file():
        source = f"file-sha256:{file_sha256(lora.path)}"
    return {"source": source, "weight_name": lora.weight_name, "name": lora.name, "weight": lora.weight}
