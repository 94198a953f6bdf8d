"""The window store: every finished window, kept on disk under a key made of everything
that determines its frames, so no window is ever rendered twice.

    <store>/windows/ab/<key>.arrow      the frames: Arrow IPC, zstd, one row per frame
    <store>/manifest/<key>.parquet      one row: key, job, range, attempts, node, seconds,
                                        frames_sha256, bytes, created
    <store>/latent/<job key>/<step>/<lo>-<hi>.npy
                                        a co-denoised job's latents after <step> steps, frames
                                        [lo, hi), one file per shard (`LatentCheckpoints`)

The manifest row is written after the frames and is the commit point: a window is in the
store only when both files exist. Both are written to a temp file in their own folder and
moved into place with `os.replace`, so a reader (or a second run of the same job, at the
same time) sees a whole file or none; two runs that store the same key write the same
frames, and either one's row is correct. Reads check the frames' sha256 against the
manifest; a truncated or altered window is removed and reported, never returned.

No Ray, no torch: `farm store ls` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from farm.util import cache_dir, replace_atomically, sha256_file, write_bytes_atomic

#: Bump when the meaning of a key or the file layout changes; old entries are then ignored.
STORE_FORMAT = 1

#: A temp or orphan file younger than this may belong to a run in progress; gc leaves it.
IN_PROGRESS_GRACE_S = 600.0

_MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("job", pa.string()),
    ("index", pa.int32()),
    ("start", pa.int32()),
    ("end", pa.int32()),
    ("attempts", pa.int32()),
    ("node", pa.string()),
    ("actor", pa.string()),
    ("seconds", pa.float64()),
    ("frames_sha256", pa.string()),
    ("bytes", pa.int64()),
    ("created", pa.float64()),
])


def default_store() -> Path:
    return cache_dir() / "store"


def window_key(identity: dict) -> str:
    """sha256 of the canonical JSON of everything that determines a window's frames."""
    blob = json.dumps({"format": STORE_FORMAT, **identity}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def frames_digest(frames: np.ndarray) -> str:
    h = hashlib.sha256(f"{frames.dtype.str}{frames.shape}".encode())
    h.update(np.ascontiguousarray(frames).data)
    return h.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """sha256 over the relative paths and contents of every file under `folder`.

    Model folders are gigabytes, so each file's digest is remembered in the farm cache
    against its size and mtime; only changed files are read again."""
    folder = Path(folder)
    memo_path = cache_dir() / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h, changed = hashlib.sha256(), False
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        entry = memo.get(str(path.resolve()))
        if entry is None or entry[0] != stamp:
            entry = [stamp, sha256_file(path)]
            memo[str(path.resolve())] = entry
            changed = True
        h.update(f"{path.relative_to(folder).as_posix()}\0{entry[1]}\n".encode())
    if changed:
        write_bytes_atomic(memo_path, json.dumps(memo).encode(), fsync=True)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    """One stored window, as its manifest row says."""

    key: str
    job: str
    index: int
    start: int
    end: int
    attempts: int
    node: str
    actor: str
    seconds: float
    frames_sha256: str
    bytes: int
    created: float


class CorruptWindow(Exception):
    """A stored window failed its check; it has been removed."""


class WindowStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_store()
        self.corrupt: list[str] = []  # keys removed by `get` because they failed their check

    def checkpoints(self, key: str) -> LatentCheckpoints:
        """The latent checkpoints of the co-denoised job with this key."""
        return LatentCheckpoints(self.root, key)

    def last_latent_job(self, output: str) -> dict | None:
        """What `remember_latent_job` kept of the last co-denoised job that wrote `output`."""
        try:
            return json.loads(self._latent_job_path(output).read_text())
        except (OSError, ValueError):
            return None

    def remember_latent_job(self, output: str, key: str, window_keys: list[str], blend: str) -> None:
        """Keep, per output, the key and window keys of the co-denoised job writing it: the
        next job to that output can say which windows an edit changed (a co-denoised job
        is stored whole, so any change renders every window again)."""
        data = json.dumps({"output": output, "key": key, "window_keys": window_keys, "blend": blend})
        replace_atomically(self._latent_job_path(output), lambda tmp: Path(tmp).write_text(data))

    def kept_steps_job(self, output: str) -> dict | None:
        """What `remember_kept_steps` kept of the last co-denoised job that wrote `output`
        whole with every step's latents (window.keep_steps): what a local re-render starts from."""
        try:
            return json.loads(self._latent_job_path(output, ".steps").read_text())
        except (OSError, ValueError):
            return None

    def remember_kept_steps(self, output: str, key: str, window_keys: list[str], blend: str, steps: int) -> None:
        """Keep, per output, the job whose every step's latents are stored under `key`, once it is whole."""
        data = json.dumps({"output": output, "key": key, "window_keys": window_keys, "blend": blend, "steps": steps})
        replace_atomically(self._latent_job_path(output, ".steps"), lambda tmp: Path(tmp).write_text(data))

    def _latent_job_path(self, output: str, kind: str = "") -> Path:
        # beside latent/ (whose folders are jobs' checkpoints, which `gc` ages), a few bytes each
        return self.root / "latent-outputs" / f"{hashlib.sha256(output.encode()).hexdigest()[:32]}{kind}.json"

    # -- layout ----------------------------------------------------------------------------
    def _frames_path(self, key: str) -> Path:
        return self.root / "windows" / key[:2] / f"{key}.arrow"

    def _manifest_path(self, key: str) -> Path:
        return self.root / "manifest" / f"{key}.parquet"

    # -- read ------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        """Cheap: both files exist. `get` does the real check."""
        return self._manifest_path(key).is_file() and self._frames_path(key).is_file()

    def entry(self, key: str) -> Entry | None:
        try:
            row = pq.read_table(self._manifest_path(key)).to_pylist()[0]
        except (OSError, pa.ArrowException, IndexError):  # absent, or unreadable
            return None
        return Entry(**row)

    def get(self, key: str) -> np.ndarray | None:
        """The window's frames, verified against the manifest; None if absent. A window that
        fails its check (unreadable, truncated, altered) is removed and listed in `corrupt`."""
        if not self.has(key):
            return None
        try:
            entry = self.entry(key)
            if entry is None:
                raise CorruptWindow("unreadable manifest row")
            frames = _read_frames(self._frames_path(key))
            if frames_digest(frames) != entry.frames_sha256:
                raise CorruptWindow("frames do not match their sha256")
        except (CorruptWindow, OSError, pa.ArrowException, ValueError, KeyError):
            self.remove(key)
            self.corrupt.append(key)
            return None
        return frames

    def entries(self) -> list[Entry]:
        folder = self.root / "manifest"
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("*.parquet")):
            e = self.entry(path.stem)
            if e is not None:
                out.append(e)
        return out

    def usage(self) -> tuple[int, int]:
        """(windows, bytes on disk) of the whole store folder."""
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0
        return len(self.entries()), size

    # -- write -----------------------------------------------------------------------------
    def put(self, key: str, frames: np.ndarray, *, job: str, index: int, start: int, end: int,
            attempts: int, node: str, actor: str, seconds: float) -> Entry:
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        size = _write_frames(self._frames_path(key), frames)
        entry = Entry(key=key, job=job, index=index, start=start, end=end, attempts=attempts, node=node,
                      actor=actor, seconds=float(seconds), frames_sha256=frames_digest(frames), bytes=size,
                      created=time.time())
        table = pa.Table.from_pylist([asdict(entry)], schema=_MANIFEST_SCHEMA)
        path = self._manifest_path(key)
        replace_atomically(path, lambda tmp: pq.write_table(table, tmp), fsync=True)
        return entry

    def remove(self, key: str) -> None:
        self._manifest_path(key).unlink(missing_ok=True)  # uncommit first
        self._frames_path(key).unlink(missing_ok=True)

    def gc(self, older_than: float | None = None, dry_run: bool = False) -> "Removed":
        """Remove windows created more than `older_than` seconds ago (None: keep them all),
        and co-denoised jobs' checkpoints last written that long ago, plus leftovers of interrupted writes: frames without a manifest row and temp
        files, once they are older than IN_PROGRESS_GRACE_S. Says what it removed (or, with
        `dry_run`, would remove): windows, as `entries` counts them, and leftover files."""
        now = time.time()
        old = [e.key for e in self.entries() if older_than is not None and now - e.created > older_than]
        windows = [p for key in old for p in (self._manifest_path(key), self._frames_path(key))]
        leftovers = [p for p in self._leftovers(now) if p not in set(windows)]
        jobs = self._old_latent_jobs(now, older_than)
        freed = sum(_remove(p, dry_run) for p in windows) + sum(_remove(p, dry_run) for p in leftovers)
        for job in jobs:
            freed += sum(_remove(p, dry_run) for p in sorted(job.rglob("*")) if p.is_file())
            if not dry_run:
                for d in sorted((d for d in job.rglob("*") if d.is_dir()), reverse=True) + [job]:
                    d.rmdir()
        return Removed(windows=len(old), leftovers=len(leftovers), bytes=freed, latent_jobs=len(jobs))

    def _old_latent_jobs(self, now: float, older_than: float | None) -> list[Path]:
        """Co-denoised jobs' checkpoint folders whose newest file is older than `older_than`."""
        if older_than is None or not (self.root / "latent").is_dir():
            return []
        old = []
        for job in (self.root / "latent").iterdir():
            ages = [_age(p, now) for p in job.rglob("*") if p.is_file()]
            if min(ages, default=float("inf")) > older_than:
                old.append(job)
        return old

    def _leftovers(self, now: float) -> list[Path]:
        """Frames with no manifest row, and temp files, older than IN_PROGRESS_GRACE_S."""
        committed = {p.stem for p in (self.root / "manifest").glob("*.parquet")}
        frames = (self.root / "windows").rglob("*") if (self.root / "windows").is_dir() else []
        temps = (self.root / "manifest").glob(".*") if (self.root / "manifest").is_dir() else []
        found = [p for p in frames if p.is_file() and (p.name.startswith(".") or p.stem not in committed)]
        return [p for p in [*found, *temps] if _age(p, now) >= IN_PROGRESS_GRACE_S]


@dataclass(frozen=True)
class Removed:
    """What `WindowStore.gc` removed: whole windows, leftover files, and the bytes freed."""

    windows: int
    leftovers: int
    bytes: int
    latent_jobs: int = 0  # co-denoised jobs whose checkpoints were removed


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _remove(path: Path, dry_run: bool) -> int:
    """Remove `path` (unless `dry_run`); its size, or 0 if it was already gone."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if not dry_run:
        path.unlink(missing_ok=True)
    return size


def _write_frames(path: Path, frames: np.ndarray) -> int:
    rows = pa.array([f.tobytes() for f in frames], type=pa.binary())
    schema = pa.schema([("frame", pa.binary())], metadata={
        "shape": json.dumps(list(frames.shape)), "sha256": frames_digest(frames),
    })
    table = pa.Table.from_arrays([rows], schema=schema)

    def write(tmp: str) -> None:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(
            sink, schema, options=pa.ipc.IpcWriteOptions(compression="zstd")
        ) as writer:
            writer.write_table(table)

    replace_atomically(path, write, fsync=True)
    return path.stat().st_size


def _read_frames(path: Path) -> np.ndarray:
    with pa.memory_map(str(path), "r") as source:
        reader = pa.ipc.open_file(source)
        shape = tuple(json.loads(reader.schema.metadata[b"shape"]))
        table = reader.read_all()
    data = b"".join(table.column("frame").to_pylist())
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


class LatentCheckpoints:
    """The latents of a co-denoised (`window.reconcile: latent`) job, saved every few steps
    under the job's key, in parts of any frame ranges: a checkpoint after `step` steps is
    whole when its parts cover every frame. A shard's part is the same bits whatever the
    number of actors, so parts cut by one run's actors fit another run's. Each part is an
    `.npy` file (no pickles) written atomically; the driver writes them all (the actors hand
    their latents over), so they need no disk shared with the nodes.

    `keep_all` (window.keep_steps): no checkpoint is dropped once whole, so every step's
    latents stay (what a local re-render reads, farm/rerender.py)."""

    keep_all = False

    def __init__(self, root: Path, key: str):
        self.key = key
        self.folder = Path(root) / "latent" / key

    def put(self, step: int, lo: int, hi: int, latents: np.ndarray) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(latents), allow_pickle=False)

        replace_atomically(self.folder / f"{step:06d}" / f"{lo:07d}-{hi:07d}.npy", write, fsync=True)

    def steps(self) -> list[int]:
        return [int(d.name) for d in self.folder.glob("[0-9]*") if d.is_dir()]

    def parts(self, step: int) -> list[tuple[int, int, Callable[[], np.ndarray]]]:
        """(lo, hi, read) of each part of the checkpoint after `step` steps, by `lo`."""
        parts = []
        for path in sorted((self.folder / f"{step:06d}").glob("[0-9]*-[0-9]*.npy")):
            lo, hi = (int(x) for x in path.stem.split("-"))
            parts.append((lo, hi, lambda path=path: np.load(path, allow_pickle=False)))
        return parts

    def drop(self, step: int) -> None:
        folder = self.folder / f"{step:06d}"
        for f in folder.iterdir():
            f.unlink(missing_ok=True)
        folder.rmdir()

    # -- the same for both kinds -------------------------------------------------------------
    def latest(self, frames: int) -> int:
        """The largest step with a whole checkpoint (0: none, start from the noise)."""
        return next((step for step in sorted(self.steps(), reverse=True) if self.whole(step, frames)), 0)

    def whole(self, step: int, frames: int) -> bool:
        """Whether the checkpoint after `step` steps covers frames [0, frames)."""
        from farm.codenoise import missing

        return not missing([(lo, hi) for lo, hi, _ in self.parts(step)], frames)

    def load(self, step: int, lo: int, hi: int) -> np.ndarray:
        """Frames [lo, hi) of the checkpoint after `step` steps, gathered from its parts."""
        pieces, at = [], lo
        for a, b, read in self.parts(step):
            if a <= at < b:
                take = min(b, hi)
                pieces.append(read()[:, :, at - a : take - a])
                at = take
        if at < hi:
            raise FileNotFoundError(f"checkpoint {step} of {self} lacks frames [{at}, {hi})")
        return np.concatenate(pieces, axis=2)

    def keep_only(self, step: int) -> None:
        """Drop the checkpoints after `step` steps, what an attempt starts from: they are
        parts a failed attempt left (0 drops all). Earlier ones are whole, and gone unless
        they are kept (`keep_all`)."""
        for other in self.steps():
            if other > step:
                self.drop(other)

    def drop_before(self, step: int) -> None:
        """Drop the checkpoints before `step` steps, once that one is whole (unless every
        step is kept). Later ones stay: shards that run ahead of the others have already
        written parts of them."""
        for other in self.steps():
            if other < step and not self.keep_all:
                self.drop(other)


class SpanCheckpoints(LatentCheckpoints):
    """The frames [lo, hi) of a run's checkpoints, numbered from lo: what the span of a
    local re-render (farm/rerender.py) writes and resumes from. Every step is kept."""

    keep_all = True

    def __init__(self, inner: LatentCheckpoints, lo: int, hi: int):
        self.inner, self.lo, self.hi = inner, lo, hi

    def put(self, step: int, lo: int, hi: int, latents: np.ndarray) -> None:
        self.inner.put(step, lo + self.lo, hi + self.lo, latents)

    def steps(self) -> list[int]:
        return self.inner.steps()

    def parts(self, step: int) -> list:
        return [(max(a, self.lo) - self.lo, min(b, self.hi) - self.lo,
                 lambda a=a, b=b, read=read: read()[:, :, max(a, self.lo) - a : min(b, self.hi) - a])
                for a, b, read in self.inner.parts(step) if max(a, self.lo) < min(b, self.hi)]

    def drop(self, step: int) -> None:
        self.inner.drop(step)


class MemoryCheckpoints(LatentCheckpoints):
    """Checkpoints in the driver's memory, when the store is off: they survive an actor,
    not the driver."""

    def __init__(self, key: str = ""):
        self.key = key
        self._mem: dict[int, dict[tuple[int, int], np.ndarray]] = {}

    def put(self, step: int, lo: int, hi: int, latents: np.ndarray) -> None:
        self._mem.setdefault(step, {})[(lo, hi)] = latents

    def steps(self) -> list[int]:
        return list(self._mem)

    def parts(self, step: int) -> list:
        return [(lo, hi, lambda arr=arr: arr) for (lo, hi), arr in sorted(self._mem.get(step, {}).items())]

    def drop(self, step: int) -> None:
        self._mem.pop(step, None)


class NoStore:
    """The store turned off (`--no-store`, benchmarks): nothing is read, nothing is kept."""

    root = "(off)"
    corrupt: list[str] = []

    def has(self, key: str) -> bool:
        return False

    def get(self, key: str) -> None:
        return None

    def entry(self, key: str) -> None:
        return None

    def put(self, key: str, frames, **meta) -> None:
        return None

    def checkpoints(self, key: str) -> MemoryCheckpoints:
        return MemoryCheckpoints(key)

    def last_latent_job(self, output: str) -> dict | None:
        return None

    def remember_latent_job(self, output: str, key: str, window_keys: list[str], blend: str) -> None:
        pass

    def kept_steps_job(self, output: str) -> None:
        return None

    def remember_kept_steps(self, output: str, key: str, window_keys: list[str], blend: str, steps: int) -> None:
        pass
