"""How a model reference enters a window key: `tiny` by its build name, a hub id by name,
a local folder by the sha256 of its files, a LoRA file by its sha256. Shared by the window
keys (farm/keys.py) and the pipeline descriptors (farm/pipelines/)."""

from __future__ import annotations

from pathlib import Path

from farm.spec import TINY_LORAS, is_local_ref
from farm.store import folder_digest
from farm.util import sha256_file


def ref_identity(ref: str, tiny_name: str) -> str:
    if ref == "tiny":
        return f"tiny:{tiny_name}"
    if is_local_ref(ref):
        return f"folder-sha256:{folder_digest(ref)}"
    return f"hub:{ref}"


def lora_identity(lora) -> dict:
    source = f"hub:{lora.id}" if lora.id else ref_identity(lora.path, "")
    if lora.id in TINY_LORAS:
        source = f"tiny:{lora.id}"
    if lora.path and Path(lora.path).is_file():
        source = f"file-sha256:{sha256_file(lora.path)}"
    return {"source": source, "weight_name": lora.weight_name, "name": lora.name, "weight": lora.weight}
