"""The node-local model cache: a staged model is fetched once per node, not once per actor.

    <root>/models/<digest>/…files…        a complete copy (its files as the manifest lists them)
    <root>/models/<digest>.json           written last: the copy is complete; its mtime is the last use
    <root>/locks/<digest>.fetch           held exclusively while one actor fetches or checks it
    <root>/locks/<digest>.use             held shared by every actor whose pipeline reads the copy

`root` is FARM_NODE_CACHE, else `farm-node-cache` next to Ray's temp dir (local disk on
every node). The first actor of a node to need a model takes its fetch lock and copies it
from object storage (farm/models/remote.py); the others wait on the lock, then find it
complete and read the same copy. The cache is bounded by FARM_NODE_CACHE_GB: after a
fetch, the least recently used complete copies go until it fits, except any whose use
lock someone holds (a model in use is never removed).

Hub ids take the same kind of per-node lock around their download, so a node downloads
a hub model once however many actors start on it; the files stay in Hugging Face's own
cache (HF_HOME), where diffusers looks for them.

Locks are `fcntl.flock` on files of the node's local disk: they are released when their
holder exits, however it exits, so a crashed actor never leaves a model locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from farm.models.remote import Manifest, fetch
from farm.util import replace_atomically

ENV_ROOT = "FARM_NODE_CACHE"
ENV_LIMIT = "FARM_NODE_CACHE_GB"


def default_root(ray_temp_dir: str | None = None) -> Path:
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).expanduser()
    base = Path(ray_temp_dir).parent if ray_temp_dir else Path("/tmp")
    return base / "farm-node-cache"


def default_limit() -> int | None:
    raw = os.environ.get(ENV_LIMIT)
    return int(float(raw) * 1024**3) if raw else None


@dataclass
class Lease:
    """A model copy this process reads: where it is, how it got there, and the use lock
    that keeps it from eviction until `release()` (or the process ends)."""

    path: Path
    source: str  # "node cache", "object storage", "hub"
    fetch_seconds: float
    fetch_bytes: int
    _use: object = field(default=None, repr=False)

    def release(self) -> None:
        if self._use is not None:
            self._use.close()
            self._use = None

    def report(self) -> dict:
        return {"from": self.source, "fetch_seconds": round(self.fetch_seconds, 3),
                "fetch_bytes": self.fetch_bytes, "path": str(self.path)}


class NodeCache:
    def __init__(self, root: Path, limit_bytes: int | None = None):
        self.root = Path(root)
        self.limit_bytes = limit_bytes

    # --- a staged model -----------------------------------------------------------------------

    def acquire(self, manifest: Manifest) -> Lease:
        """The local copy of `manifest`'s model, fetched now if this node has none."""
        t0 = time.perf_counter()
        name = manifest.digest
        folder, marker = self.root / "models" / name, self.root / "models" / f"{name}.json"
        with self._locked(f"{name}.fetch"):
            use = self._use_lock(name)  # before the copy can be seen as unused
            fetched = 0
            if not self._complete(manifest, folder, marker):
                shutil.rmtree(folder, ignore_errors=True)  # a copy cut short
                partial = self.root / "models" / f".{name}.partial-{os.getpid()}"
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                try:
                    fetched = fetch(manifest, partial)
                    os.replace(partial, folder)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
                info = {"uri": manifest.uri, "source": manifest.source, "bytes": manifest.total_bytes,
                        "identity": manifest.identity, "fetched_at": time.time()}
                replace_atomically(marker, lambda tmp: Path(tmp).write_text(json.dumps(info)))
            os.utime(marker)  # last use
        lease = Lease(manifest.local_path(folder), "object storage" if fetched else "node cache",
                      time.perf_counter() - t0, fetched, use)
        self.evict()
        return lease

    def _complete(self, manifest: Manifest, folder: Path, marker: Path) -> bool:
        """The copy is whole: its marker is there and every file has the manifest's size.
        (Contents were checked against the sha256s when fetched; a later change to a file
        of this cache is not looked for on every start.)"""
        if not marker.is_file():
            return False
        for f in manifest.files:
            try:
                if (folder / f.path).stat().st_size != f.size:
                    return False
            except OSError:
                return False
        return True

    # --- a hub id -----------------------------------------------------------------------------

    @contextmanager
    def hub(self, repo_id: str):
        """Hold the node's lock for hub model `repo_id` while its download runs."""
        safe = repo_id.replace("/", "--")
        with self._locked(f"hub--{safe}.fetch"):
            yield

    # --- bounds and listing ---------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """Every complete copy: its identity, size, where it came from, last use, in use."""
        out = []
        for marker in sorted((self.root / "models").glob("*.json")):  # none if never used
            try:
                info = json.loads(marker.read_text())
                last = marker.stat().st_mtime
            except (OSError, ValueError):
                continue
            name = marker.stem
            out.append(info | {"name": name, "last_used": last, "in_use": self._in_use(name)})
        return out

    def evict(self) -> list[str]:
        """Remove least recently used copies not in use until the cache fits its bound."""
        if self.limit_bytes is None:
            return []
        entries = sorted(self.entries(), key=lambda e: e["last_used"])
        total = sum(e["bytes"] for e in entries)
        removed = []
        for e in entries:
            if total <= self.limit_bytes:
                break
            name = e["name"]
            with self._locked(f"{name}.fetch", block=False) as got:
                if not got or self._in_use(name):
                    continue
                (self.root / "models" / f"{name}.json").unlink(missing_ok=True)
                shutil.rmtree(self.root / "models" / name, ignore_errors=True)
            total -= e["bytes"]
            removed.append(name)
        return removed

    # --- locks ----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, name: str, block: bool = True):
        (self.root / "models").mkdir(parents=True, exist_ok=True)  # first use on this node
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        with open(self.root / "locks" / name, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _use_lock(self, name: str):
        fh = open(self.root / "locks" / f"{name}.use", "a")
        fcntl.flock(fh, fcntl.LOCK_SH)
        return fh

    def _in_use(self, name: str) -> bool:
        path = self.root / "locks" / f"{name}.use"
        if not path.exists():
            return False
        with open(path, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False
