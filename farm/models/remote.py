"""Models in object storage: `farm models stage` puts them there, actors fetch them.

A staged model is a prefix (`s3://bucket/models/dreamshaper_8`, `gs://…`, or a folder on a
shared disk) holding the model's files as they were, a diffusers folder or one checkpoint
file, and `farm-manifest.json`, written last:

    {"format": "farm-model/1", "kind": "folder" | "file", "source": "<what was staged>",
     "files": [{"path": "unet/config.json", "size": 743, "sha256": "…"}, …]}

A prefix without a manifest is not a staged model (a stage cut short leaves none). The
manifest gives a staged model the identity its local copy would have (farm/identity.py):
a folder's digest over its files' paths and sha256s, a file's sha256. So a window renders
to the same key from the folder on disk and from its staged copy.

Credentials and endpoints are the standard variables, as for outputs (farm/outputs.py).
Every node that fetches needs them; `check_credentials` says which to set, in one line,
before any actor starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from farm.errors import FarmError

MANIFEST = "farm-manifest.json"
FORMAT = "farm-model/1"
SCHEMES = ("s3://", "gs://", "gcs://")
ATTEMPTS = 2  # a file that arrives corrupt or short is fetched once more, then named
_CHUNK = 8 << 20
#: Set when the node's own identity gives access (an instance role, workload identity) or
#: the bucket is public: then no key in the environment is needed.
AMBIENT = "FARM_STORAGE_AMBIENT_CREDENTIALS"


class ModelSourceError(FarmError):
    """A staged model cannot be read: no credentials, no manifest, or a file that keeps
    arriving corrupt."""


def is_remote(ref: str | None) -> bool:
    return bool(ref) and ref.lower().startswith(SCHEMES)


@dataclass(frozen=True)
class ManifestFile:
    path: str  # relative, with `/`
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    uri: str  # the prefix
    kind: str  # "folder" or "file"
    source: str
    files: tuple[ManifestFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def identity(self) -> str:
        """What a window key holds for this model: the same as for its local copy."""
        if self.kind == "file":
            return f"file-sha256:{self.files[0].sha256}"
        return f"folder-sha256:{files_digest((f.path, f.sha256) for f in self.files)}"

    @property
    def digest(self) -> str:
        """A short name for the node cache's entry."""
        return hashlib.sha256(self.identity.encode()).hexdigest()[:32]

    def local_path(self, folder: Path) -> Path:
        """The path a loader is given once the files are in `folder`: the folder, or the file."""
        return folder / self.files[0].path if self.kind == "file" else folder

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "kind": self.kind, "source": self.source,
                           "files": [vars(f) for f in self.files]}, indent=1)


def files_digest(entries) -> str:
    """sha256 over sorted (relative path, sha256) pairs: farm.store.folder_digest's formula."""
    h = hashlib.sha256()
    for path, sha in sorted(entries, key=lambda e: e[0].split("/")):  # as pathlib sorts paths
        h.update(f"{path}\0{sha}\n".encode())
    return h.hexdigest()


# --- credentials ------------------------------------------------------------------------------

_AWS_SOURCES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def check_credentials(uri: str, field: str) -> None:
    """Raise a one-line ModelSourceError naming the variable to set when this environment
    has no credentials for `uri` (object stores would otherwise answer anonymously, or
    fail deep inside an actor)."""
    if not is_remote(uri) or os.environ.get(AMBIENT) == "1":
        return
    home = Path(os.path.expanduser("~"))
    if uri.lower().startswith("s3://"):
        files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"]
        if any(os.environ.get(v) for v in _AWS_SOURCES) or any(Path(f).is_file() for f in files):
            if os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_SECRET_ACCESS_KEY"):
                raise ModelSourceError(f"{field}: {uri}: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
            return
        raise ModelSourceError(
            f"{field}: no credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            f"(or AWS_PROFILE), or {AMBIENT}=1 where the nodes' own role gives access")
    adc = home / ".config" / "gcloud" / "application_default_credentials.json"
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or adc.is_file():
        return
    raise ModelSourceError(
        f"{field}: no credentials for {uri}: set GOOGLE_APPLICATION_CREDENTIALS "
        f"(or run `gcloud auth application-default login`), or {AMBIENT}=1 on GCE/GKE")


# --- reading ----------------------------------------------------------------------------------

def _filesystem(uri: str):
    """(pyarrow FileSystem, path) for a prefix: object storage, or a shared folder."""
    if is_remote(uri):
        from farm.outputs import filesystem

        try:
            return filesystem(uri)
        except FarmError as err:
            raise ModelSourceError(str(err)) from err
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


_MANIFESTS: dict[str, tuple[float, Manifest]] = {}
_MANIFEST_TTL_S = 30.0  # a driver asks for every window's key; re-staging takes longer than this


def read_manifest(uri: str, field: str = "model") -> Manifest:
    """The manifest of the model staged at `uri`. Raises ModelSourceError that names `field`."""
    uri = uri.rstrip("/")
    hit = _MANIFESTS.get(uri)
    if hit and time.monotonic() - hit[0] < _MANIFEST_TTL_S:
        return hit[1]
    fs, path = _filesystem(uri)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ModelSourceError(f"{field}: {uri} holds no {MANIFEST}; stage the model there with "
                               f"`farm models stage <folder, file or hub id> --to {uri}`") from None
    except OSError as err:
        raise ModelSourceError(f"{field}: cannot read {uri}/{MANIFEST}: {_one_line(err)}") from err
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT or data.get("kind") not in ("folder", "file"):
            raise ValueError(f"not a {FORMAT} manifest")
        files = tuple(ManifestFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
        if not files or any(f.path.startswith("/") or ".." in f.path.split("/") for f in files):
            raise ValueError("no files, or a path outside the model")
    except (ValueError, KeyError, TypeError) as err:
        raise ModelSourceError(f"{field}: {uri}/{MANIFEST} is not a farm manifest: {err}") from err
    manifest = Manifest(uri, data["kind"], str(data.get("source", "")), files)
    _MANIFESTS[uri] = (time.monotonic(), manifest)
    return manifest


def is_staged_file(ref) -> bool:
    """A staged model that is one checkpoint file (its manifest says so; read on the driver)."""
    if not is_remote(ref):
        return False
    from farm.models.single_file import SUFFIXES

    manifest = read_manifest(ref)
    return manifest.kind == "file" and Path(manifest.files[0].path).suffix.lower() in SUFFIXES


def fetch(manifest: Manifest, folder: Path, progress: Callable[[int], None] | None = None) -> int:
    """Copy every file of `manifest` into `folder` (a fresh, private folder), each checked
    against its size and sha256; one that arrives wrong is fetched again, `ATTEMPTS` times
    in all (twice), then a ModelSourceError names it. Returns the bytes read."""
    fs, prefix = _filesystem(manifest.uri)
    read = 0
    for entry in manifest.files:
        target = folder / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, ATTEMPTS + 1):
            got, sha = _copy_checked(fs, f"{prefix}/{entry.path}", target, progress)
            read += got
            if got == entry.size and sha == entry.sha256:
                break
            target.unlink(missing_ok=True)
            if attempt == ATTEMPTS:
                raise ModelSourceError(
                    f"{manifest.uri}/{entry.path} arrived {got} bytes with sha256 {sha[:12]}… "
                    f"{ATTEMPTS} times; the manifest says {entry.size} bytes, {entry.sha256[:12]}…. "
                    "The object is corrupt or was changed after staging: stage the model again")
    return read


def _copy_checked(fs, path: str, target: Path, progress) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    try:
        with fs.open_input_stream(path) as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
                n += len(chunk)
                if progress:
                    progress(len(chunk))
    except FileNotFoundError:
        return 0, hashlib.sha256().hexdigest()  # counted as a wrong file: fetched again, then named
    except OSError as err:
        raise ModelSourceError(f"cannot fetch {path}: {_one_line(err)}") from err
    return n, h.hexdigest()


# --- staging ----------------------------------------------------------------------------------

def source_files(ref: str) -> tuple[str, Path, list[Path]]:
    """(kind, root, files) of what `farm models stage` copies: a local file, every file of
    a local folder, or the files a hub id resolves to on this machine."""
    path = Path(ref).expanduser()
    if path.is_file():
        return "file", path.parent, [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise ModelSourceError(f"{ref}: the folder holds no files")
        return "folder", path, files
    if ref.startswith(("/", "./", "../", "~")) or ref.count("/") != 1:
        raise ModelSourceError(f"{ref}: no such file or folder (and not a hub id `org/name`)")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(ref, token=os.environ.get("HF_TOKEN") or None))
    except Exception as err:  # huggingface_hub raises many kinds; all mean "not here"
        raise ModelSourceError(f"{ref}: cannot download from the hub: {_one_line(err)}") from err
    return source_files(str(folder))[0], folder, source_files(str(folder))[2]


def stage(ref: str, to: str, progress: Callable[[str, int], None] | None = None) -> Manifest:
    """Copy the model `ref` to the prefix `to` and write its manifest last."""
    kind, root, files = source_files(ref)
    to = to.rstrip("/")
    check_credentials(to, "--to")
    fs, prefix = _filesystem(to)
    if not is_remote(to):
        Path(prefix).mkdir(parents=True, exist_ok=True)
    entries = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        h, n = hashlib.sha256(), 0
        try:
            if not is_remote(to):
                Path(prefix, rel).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as src, fs.open_output_stream(f"{prefix}/{rel}") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                    n += len(chunk)
        except OSError as err:
            raise ModelSourceError(f"cannot copy {path} to {to}/{rel}: {_one_line(err)}") from err
        entries.append(ManifestFile(rel, n, h.hexdigest()))
        if progress:
            progress(rel, n)
    manifest = Manifest(to, kind, ref, tuple(entries))
    try:
        with fs.open_output_stream(f"{prefix}/{MANIFEST}") as dst:
            dst.write(manifest.to_json().encode())
    except OSError as err:
        raise ModelSourceError(f"cannot write {to}/{MANIFEST}: {_one_line(err)}") from err
    _MANIFESTS.pop(to, None)
    return manifest


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
