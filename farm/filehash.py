"""The sha256 of a model file, computed once per version of the file and remembered.

A single-file checkpoint or a LoRA enters every window key by its content, and a
checkpoint is gigabytes: hashing it for every job would cost seconds each time. So the
digest is kept beside the file, in `<file>.sha256` (JSON: the digest and the file's size,
mtime, ctime and inode when it was read), and reused while the file's stat still matches.
Where the file's folder is not writable (a read-only mount, someone else's files), the
record goes to the farm cache instead (`<cache>/file-sha256/<hash of the path>.json`).

A record is trusted only if the file had not changed for `SETTLE_NS` when it was read,
as git does for its "racily clean" entries: a write that lands within the filesystem's
timestamp granularity of the read could leave the stat unchanged, so a file read while it
was fresh is read again next time. `ctime` (which no program can set back) and the inode
catch a file replaced by a copy that keeps the old size and mtime (`cp -p`, `rsync -t`).

`HASHED` counts the files actually read, by path, in this process: a test's window of
what the cache saves.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

from farm.util import cache_dir, sha256_file, write_json_atomic

#: How long a file must have been left alone before its digest is remembered as final.
SETTLE_NS = 2_000_000_000

#: Files read through in this process, by absolute path.
HASHED: Counter[str] = Counter()


def file_sha256(path: str | Path) -> str:
    """The sha256 of the file at `path`: from its record when the file is unchanged since,
    else read (and the record written)."""
    path = Path(path).resolve()
    stamp = _stamp(path)
    for record in _records(path):
        digest = _valid(record, stamp)
        if digest:
            return digest
    started = time.time_ns()
    digest = sha256_file(path)
    HASHED[str(path)] += 1
    if _stamp(path) == stamp:  # not changed while it was read
        _remember(path, {"sha256": digest, **stamp, "read_at_ns": started})
    return digest


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _valid(record: dict, stamp: dict) -> str | None:
    if any(record.get(k) != v for k, v in stamp.items()):
        return None
    if not isinstance(record.get("read_at_ns"), int) or record["read_at_ns"] - stamp["ctime_ns"] < SETTLE_NS:
        return None  # the file was fresh when read: a later write may share its timestamps
    digest = record.get("sha256")
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def sidecar(path: Path) -> Path:
    """Where the record of `path` is kept when its folder is writable."""
    return path.with_name(path.name + ".sha256")


def _cached_record(path: Path) -> Path:
    return cache_dir() / "file-sha256" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")


def _records(path: Path):
    for where in (sidecar(path), _cached_record(path)):
        try:
            record = json.loads(where.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("path", str(path)) == str(path):
            yield record


def _remember(path: Path, record: dict) -> None:
    if os.access(path.parent, os.W_OK):
        try:
            write_json_atomic(sidecar(path), record)
            return
        except OSError:
            pass
    try:
        write_json_atomic(_cached_record(path), {"path": str(path), **record})
    except OSError:
        pass  # nowhere to remember it: the next job reads the file again
