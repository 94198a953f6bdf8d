"""Where a job's models come from, and how an actor gets them onto its node.

The model fields of a spec (`model.base`, `model.motion_adapter`, `model.vae`,
`control.model`, `model.loras[i].path`) each hold `tiny`, a local path, a hub id, or the
URI of a model staged with `farm models stage` (farm/models/remote.py). The driver checks
the staged ones before any actor starts (`check_sources`: credentials, manifest); an actor
swaps each URI for its node's local copy before loading (`localize`), and times that
apart from the load.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from farm.identity import is_local_ref
from farm.models.remote import check_credentials, is_remote, read_manifest

if TYPE_CHECKING:
    from farm.models.nodecache import Lease, NodeCache
    from farm.spec import JobSpec

_MODEL_FIELDS = ("base", "motion_adapter", "vae")


def model_refs(spec: "JobSpec") -> Iterator[tuple[str, str]]:
    """(field, reference) for every model the job loads."""
    for name in _MODEL_FIELDS:
        ref = getattr(spec.model, name, None)
        if ref:
            yield f"model.{name}", ref
    for lora in spec.model.loras:
        if lora.path:
            yield f"model.loras[{lora.name}].path", lora.path
        elif lora.id:
            yield f"model.loras[{lora.name}].id", lora.id
    control = getattr(spec, "control", None)
    if control is not None:
        yield "control.model", control.model


def is_hub_ref(ref: str) -> bool:
    return ref != "tiny" and not is_remote(ref) and not is_local_ref(ref) and ref.count("/") == 1


#: What an actor needs to fetch a job's models, passed from the driver's environment with
#: the actor's calls (never in a runtime_env, a log or a report: the report names them only).
CREDENTIAL_VARS = ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                   "AWS_DEFAULT_REGION", "FARM_STORAGE_AMBIENT_CREDENTIALS")


def credentials_env() -> dict[str, str]:
    """The credential variables set in this process's environment."""
    return {k: os.environ[k] for k in CREDENTIAL_VARS if os.environ.get(k)}


@contextmanager
def using_env(env: dict[str, str] | None):
    """Set `env` in this process for the duration (an actor's load), then put back what was."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def staged_models(spec: "JobSpec") -> list[str]:
    """The URIs of the job's staged models (what the manager's `--prefetch` fetches)."""
    return sorted({ref for _, ref in model_refs(spec) if is_remote(ref)})


def check_sources(spec: "JobSpec") -> dict[str, str]:
    """Before any Ray work: every staged model can be read with this environment's
    credentials and has a manifest. Returns {field: uri} of the staged ones."""
    staged = {f: ref for f, ref in model_refs(spec) if is_remote(ref)}
    for f, uri in staged.items():
        check_credentials(uri, f)
        read_manifest(uri, f)
    return staged


@dataclass
class Fetched:
    """What getting a job's models onto this node cost, for the report."""

    seconds: float = 0.0
    bytes: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # field → "node cache" | "object storage" | "hub" | "local"
    copies: dict[str, str] = field(default_factory=dict)  # field → the node-local copy read (staged models)
    leases: list = field(default_factory=list, repr=False)

    def report(self) -> dict:
        """`from`: where the models came from ("object storage", "node cache", "hub",
        "hub cache", or "local" when none was staged or on the hub), `sources` per field."""
        kinds = sorted({k for k in self.sources.values() if k != "local"}) or ["local"]
        return {"fetch_seconds": round(self.seconds, 3), "fetch_bytes": self.bytes,
                "from": ", ".join(kinds), "sources": dict(self.sources), "copies": dict(self.copies)}

    def release(self) -> None:
        for lease in self.leases:
            lease.release()
        self.leases.clear()


def localize(spec: "JobSpec", node_cache: Callable[[], "NodeCache"]) -> tuple["JobSpec", Fetched]:
    """`spec` with every staged model replaced by its node-local copy, fetched now if this
    node has none; hub models are downloaded once per node (under the node's lock).
    `node_cache()` opens the node's cache, only when a model needs it."""
    t0 = time.perf_counter()
    fetched = Fetched()
    model_update, lora_paths, control_model = {}, {}, None
    for f, ref in model_refs(spec):
        if is_remote(ref):
            lease: Lease = node_cache().acquire(read_manifest(ref, f))
            fetched.leases.append(lease)
            fetched.bytes += lease.fetch_bytes
            fetched.sources[f] = lease.source
            local = fetched.copies[f] = str(lease.path)
            if f.startswith("model.loras["):
                lora_paths[f] = local
            elif f == "control.model":
                control_model = local
            else:
                model_update[f.split(".", 1)[1]] = local
        elif is_hub_ref(ref) and not f.startswith("model.loras["):
            fetched.sources[f] = _download_hub(f, ref, node_cache)
        else:
            fetched.sources[f] = "local"
    if lora_paths:
        loras = [lora.model_copy(update={"path": lora_paths[f"model.loras[{lora.name}].path"]})
                 if f"model.loras[{lora.name}].path" in lora_paths else lora for lora in spec.model.loras]
        model_update["loras"] = loras
    update = {}
    if model_update:
        update["model"] = spec.model.model_copy(update=model_update)
    if control_model:
        update["control"] = spec.control.model_copy(update={"model": control_model})
    fetched.seconds = time.perf_counter() - t0
    return (spec.model_copy(update=update) if update else spec), fetched


def _download_hub(field: str, repo_id: str, node_cache: Callable[[], "NodeCache"]) -> str:
    """Download `repo_id` into Hugging Face's cache once per node: under the node's lock
    for it, the first actor downloads the files diffusers' loader would read (a pipeline's
    as `DiffusionPipeline.download` chooses them, a component's config and safetensors
    weights), and the others find them there. Returns "hub" when this call downloaded,
    "hub cache" when they were here. Errors are left to the loader that follows, which
    names the field; with HF_HUB_OFFLINE=1 nothing is downloaded."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "hub cache"
    token = os.environ.get("HF_TOKEN") or None
    with node_cache().hub(repo_id):
        for local_only in (True, False):
            try:
                if field == "model.base":
                    from diffusers import DiffusionPipeline

                    DiffusionPipeline.download(repo_id, token=token, local_files_only=local_only)
                else:
                    from huggingface_hub import snapshot_download

                    snapshot_download(repo_id, token=token, local_files_only=local_only,
                                      allow_patterns=["config.json", "*.safetensors"])
                return "hub cache" if local_only else "hub"
            except Exception:  # huggingface_hub raises many kinds; the loader says which
                continue
    return "hub"
