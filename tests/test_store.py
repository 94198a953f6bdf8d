"""The window store and window keys: durable, verified, shared safely; keys that change
exactly when a window's frames would."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from farm.keys import model_identity, task_key
from farm.plan import plan_windows
from farm.tasks import WindowTask
from farm.spec import parse_spec
from farm.store import WindowStore
from scheduler.cli import main
from tests.conftest import base_spec

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick


def _frames(seed: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 24, 3), dtype=np.uint8)


def _put(store: WindowStore, key: str, frames: np.ndarray, index: int = 0):
    return store.put(key, frames, job="job.mp4", index=index, start=0, end=len(frames), attempts=1,
                     node="node-a", actor="actor-a", seconds=0.5)


def test_a_stored_window_reads_back_identical_and_is_listed(tmp_path):
    store = WindowStore(tmp_path / "store")
    frames = _frames(1)
    entry = _put(store, "k1", frames)
    assert store.has("k1") and not store.has("k2")
    np.testing.assert_array_equal(store.get("k1"), frames)
    [listed] = store.entries()
    assert listed == entry and listed.job == "job.mp4" and listed.bytes > 0
    # No temp files are left behind by a successful write.
    assert not [p for p in (tmp_path / "store").rglob(".*")]


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest-lies"])
def test_a_damaged_window_is_detected_removed_and_never_returned(tmp_path, damage):
    store = WindowStore(tmp_path / "store")
    frames = _frames(2, n=8)
    _put(store, "k1", frames)
    _put(store, "k2", _frames(3))
    data = next((tmp_path / "store" / "windows").rglob("k1.arrow"))
    raw = bytearray(data.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(bytes(raw[: len(raw) // 2]))
    else:  # the frames file is whole but belongs to other frames
        _put(WindowStore(tmp_path / "other"), "k1", _frames(9, n=8))
        data.write_bytes(next((tmp_path / "other" / "windows").rglob("k1.arrow")).read_bytes())
    assert store.get("k1") is None
    assert store.corrupt == ["k1"] and not store.has("k1")
    assert [e.key for e in store.entries()] == ["k2"]  # the healthy neighbour is untouched
    np.testing.assert_array_equal(store.get("k2"), _frames(3))


def _hammer(root: str, seed: int) -> None:
    store = WindowStore(root)
    for i in range(15):
        _put(store, f"key{i % 5}", _frames(100 + i % 5))


def test_concurrent_runs_writing_the_same_keys_leave_a_valid_store(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "store"), s)) for s in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = WindowStore(tmp_path / "store")
    assert sorted(e.key for e in store.entries()) == [f"key{i}" for i in range(5)]
    for i in range(5):
        np.testing.assert_array_equal(store.get(f"key{i}"), _frames(100 + i))
    assert store.corrupt == []


def test_gc_removes_old_windows_and_stale_leftovers_but_not_fresh_ones(tmp_path):
    store = WindowStore(tmp_path / "store")
    _put(store, "old", _frames(1))
    _put(store, "new", _frames(2))
    # Age the first window: rewrite its manifest row's creation time to three days ago.
    path = tmp_path / "store" / "manifest" / "old.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[0]["created"] = time.time() - 3 * 86400
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    # An orphan frames file (a crash between the two writes) and a stale temp file.
    orphan = tmp_path / "store" / "windows" / "zz" / "zzorphan.arrow"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 100)
    stale = tmp_path / "store" / "manifest" / ".dead.parquet.123.tmp"
    stale.write_bytes(b"y")
    fresh_temp = tmp_path / "store" / "manifest" / ".live.parquet.456.tmp"
    fresh_temp.write_bytes(b"z")
    hour_ago = time.time() - 3600
    for p in (orphan, stale):
        os.utime(p, (hour_ago, hour_ago))

    # A co-denoised job's checkpoints, last written three days ago, and a fresh one's.
    from farm.store import LatentCheckpoints

    for key, age in (("oldjob", 3 * 86400), ("newjob", 60)):
        LatentCheckpoints(store.root, key).put(4, 0, 8, np.zeros((1, 4, 8, 2, 2), np.float32))
        for f in (store.root / "latent" / key).rglob("*.npy"):
            os.utime(f, (time.time() - age, time.time() - age))

    result = CliRunner().invoke(main, ["store", "gc", "--store", str(tmp_path / "store"), "--older-than", "2d",
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would remove 1 window, the checkpoints of 1 co-denoised job and 2 leftover files" in result.output
    assert store.has("old") and orphan.exists()

    result = CliRunner().invoke(main, ["store", "gc", "--store", str(tmp_path / "store"), "--older-than", "2d"])
    assert result.exit_code == 0 and "removed 1 window, the checkpoints of 1 co-denoised job and 2 leftover files" \
        in result.output, result.output
    assert sorted(p.name for p in (store.root / "latent").iterdir()) == ["newjob"]
    assert [e.key for e in store.entries()] == ["new"]
    assert not orphan.exists() and not stale.exists() and fresh_temp.exists()

    bad = CliRunner().invoke(main, ["store", "gc", "--store", str(tmp_path / "store"), "--older-than", "soon"])
    assert bad.exit_code == 2 and "--older-than" in bad.output


def test_store_ls_and_du_show_what_is_stored(tmp_path):
    store = WindowStore(tmp_path / "store")
    _put(store, "a" * 64, _frames(1), index=3)
    ls = CliRunner().invoke(main, ["store", "ls", "--store", str(tmp_path / "store"), "--json"])
    assert ls.exit_code == 0
    [row] = json.loads(ls.output)
    assert (row["key"], row["index"], row["node"], row["attempts"]) == ("a" * 64, 3, "node-a", 1)
    du = CliRunner().invoke(main, ["store", "du", "--store", str(tmp_path / "store")])
    assert du.exit_code == 0 and "1 windows" in du.output


# -- keys -------------------------------------------------------------------------------------

def _keys(spec_dict, device="cpu"):
    spec = parse_spec(spec_dict)
    model_id = model_identity(spec, device)
    return [task_key(model_id, WindowTask.from_spec(spec, w)) for w in plan_windows(spec).windows]


def test_keys_change_exactly_when_a_windows_frames_would(tmp_path):
    base = base_spec(tmp_path)
    keys = _keys(base)
    assert len(set(keys)) == len(keys) == 4
    assert _keys(base) == keys  # stable
    # Things that act after the store, or never change a successful window, keep every key.
    assert _keys(base_spec(tmp_path, window={"length": 16, "overlap": 4, "blend": "hard"})) == keys
    assert _keys(base_spec(tmp_path, output=str(tmp_path / "other.mp4"), encode={"crf": 30})) == keys
    faulty = base_spec(tmp_path)
    faulty["model"] = {**faulty["model"], "faults": {"delay": 0.1, "fail_windows": [1]}}
    assert _keys(faulty) == keys
    # Everything that shapes the frames changes every key.
    for change in ({"prompt": "a cat"}, {"negative_prompt": ""}, {"seed": 43}, {"steps": 3},
                   {"guidance": 5.0}, {"width": 72}):
        changed = _keys(base_spec(tmp_path, **change))
        assert not set(changed) & set(keys), change
    assert not set(_keys(base, device="cuda")) & set(keys)  # auto dtype: fp16 on CUDA
    # A longer video keeps the keys of the windows it shares.
    longer = _keys(base_spec(tmp_path, frames=64))
    assert longer[:4] == keys and len(longer) == 5


def test_a_model_folder_is_keyed_by_its_content(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"\0" * 1000)
    spec = base_spec(tmp_path)
    spec["model"] = {**spec["model"], "motion_adapter": str(folder)}
    before = _keys(spec)
    assert _keys(spec) == before
    (folder / "weights.bin").write_bytes(b"\1" + b"\0" * 999)  # same size, new content
    assert not set(_keys(spec)) & set(before)
