"""The store in use through `farm render`: the same job again renders nothing, a damaged
window is rendered again, and a driver killed with SIGKILL resumes where it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from click.testing import CliRunner

from farm.video import read_frames
from farm.store import WindowStore
from scheduler.cli import main
from tests.conftest import base_spec, write_spec

FARM = [str(Path(sys.executable).parent / "farm")]

# one Ray for the in-process renders, and a farm manager whose warm actor renders them: what
# is rendered and what is read from the store does not depend on whose actor renders it
pytestmark = pytest.mark.usefixtures("warm_farm")


def _render(job, out, store, *extra):
    # one actor: what is rendered and what is read from the store does not depend on how many
    result = CliRunner().invoke(main, ["render", str(job), "-o", str(out), "--store", str(store), "--workers", "1",
                                       "--threads", "1", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_same_job_again_renders_nothing_and_a_damaged_window_is_rendered_again(tmp_path):
    job = write_spec(tmp_path, base_spec(tmp_path, frames=52))  # 4 windows
    store = tmp_path / "store"
    first = _render(job, tmp_path / "a.mp4", store)
    assert (first["windows_rendered"], first["windows_cached"]) == (4, 0)

    again = _render(job, tmp_path / "b.mp4", store)
    assert (again["windows_rendered"], again["windows_cached"]) == (0, 4)
    assert all(w["cached"] and w["state"] == "CACHED" for w in again["windows"])
    assert again["actors"] == []  # nothing to render: no pipeline was even loaded
    assert (tmp_path / "b.mp4").read_bytes() == (tmp_path / "a.mp4").read_bytes()

    # The seams are measured, and a pipeline can gate on the worst one (cheap: all cached).
    assert [s["frame"] for s in first["seams"]] == [12, 24, 36]
    assert 0 < first["flicker"]["score"] <= 1 and len(first["flicker"]["curve"]) == 51
    # Each seam says how far its two windows' own renders of the shared frames were apart.
    assert all(s["disagreement"] > 0 for s in first["seams"])
    assert [s["disagreement"] for s in again["seams"]] == [s["disagreement"] for s in first["seams"]]
    worst = max(first["seams"], key=lambda s: s["jump_ratio"])
    assert first["seam_ratio_max"] == worst["jump_ratio"] == again["seam_ratio_max"]
    gate = ["render", str(job), "-o", str(tmp_path / "gated.mp4"), "--store", str(store), "--quiet"]
    strict = CliRunner().invoke(main, [*gate, "--check-seams", str(worst["jump_ratio"] * 0.99)])
    assert strict.exit_code == 1
    assert f"seam at frame {worst['frame']}" in strict.output
    assert json.loads((tmp_path / "gated.mp4.report.json").read_text())["seam_check"]["passed"] is False
    assert (tmp_path / "gated.mp4").exists()  # the video is still there to look at
    lenient = CliRunner().invoke(main, [*gate, "--check-seams", str(worst["jump_ratio"] * 1.01)])
    assert lenient.exit_code == 0, lenient.output
    html = (tmp_path / "gated.mp4.report.html").read_text()
    assert "<svg" in html and "store (cached)" in html

    # Flip one byte in the middle of window 2's frames: it is caught, dropped and rendered again.
    key = first["windows"][2]["key"]
    data = next(store.rglob(f"{key}.arrow"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    data.write_bytes(bytes(raw))
    healed = _render(job, tmp_path / "c.mp4", store)
    assert healed["store"]["corrupt_removed"] == [key]
    assert [w["index"] for w in healed["windows"] if not w["cached"]] == [2]
    assert (tmp_path / "c.mp4").read_bytes() == (tmp_path / "a.mp4").read_bytes()


def test_a_driver_killed_half_way_resumes_without_rendering_a_finished_window_again(tmp_path):
    data = base_spec(tmp_path, frames=88)  # 7 windows
    data["model"] = {**data["model"], "faults": {"delay": 0.6}}  # slow enough to kill mid-job
    job = write_spec(tmp_path, data)
    store = WindowStore(tmp_path / "store")
    out = tmp_path / "resumed.mp4"
    # a driver process of its own, joined to the module's Ray (as on a cluster), with actors of
    # its own (--private): SIGKILL takes it and, with it, the actors it owns
    address = ray.get_runtime_context().gcs_address
    cmd = [*FARM, "render", str(job), "-o", str(out), "--store", str(store.root), "--workers", "1",
           "--threads", "1", "--address", address, "--private", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while len(store.entries()) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    stored = {e.key for e in store.entries()}
    assert 3 <= len(stored) < 7, "the driver was not killed half-way"
    assert not out.exists()

    report = _render(job, out, store.root)  # the same job again, in this process
    reused = {w["key"] for w in report["windows"] if w["cached"]}
    assert reused == stored  # every window finished before the kill, and only those
    assert report["windows_rendered"] == 7 - len(stored)
    assert not list(tmp_path.glob(".resumed.mp4.*"))  # the killed run's temp file is cleaned up

    # Bit-identical to an undisturbed run (fresh store).
    calm = _render(job, tmp_path / "calm.mp4", tmp_path / "fresh-store")
    assert calm["windows_rendered"] == 7
    assert out.read_bytes() == (tmp_path / "calm.mp4").read_bytes()
    assert all(np.array_equal(a, b) for a, b in zip(read_frames(out), read_frames(tmp_path / "calm.mp4")))


def test_editing_the_prompt_from_frame_48_rerenders_only_the_windows_that_reach_it(tmp_path):
    data = base_spec(tmp_path, frames=76)  # windows start at 0, 12, 24, 36, 48, 60
    data.pop("prompt")
    data["prompts"] = {0: "a red fox running through snow"}
    store = tmp_path / "store"
    first = _render(write_spec(tmp_path, data, "v1.yaml"), tmp_path / "v1.mp4", store)
    assert first["windows_rendered"] == 6

    data["prompts"] = {0: "a red fox running through snow", 48: "a fox in a green forest"}
    v2 = write_spec(tmp_path, data, "v2.yaml")
    # `farm plan` shows what the edit costs before anything renders: keys only, no Ray
    planned = CliRunner().invoke(main, ["plan", str(v2), "--store", str(store), "--json"])
    assert planned.exit_code == 0, planned.output
    planned = json.loads(planned.output)
    assert [w["stored"] for w in planned["windows"]] == ["cpu"] * 3 + [None] * 3
    assert planned["store"]["windows_stored"] == 3
    table = CliRunner().invoke(main, ["plan", str(v2), "--store", str(store)])
    assert "store: 3 of 6 windows stored, 3 to render" in table.output
    edited = _render(v2, tmp_path / "v2.mp4", store)
    assert edited["windows"][3]["prompts"] == planned["windows"][3]["prompts"]  # what the plan said
    assert [w["index"] for w in edited["windows"] if w["cached"]] == [0, 1, 2]  # end before frame 48
    assert edited["windows_rendered"] == 3
    # Window 3 (frames 36-51) spans the change: the new prompt blends in over 8 frames from 48.
    assert edited["windows"][3]["prompts"] == [
        {"from_frame": 36, "to_frame": 47, "prompt": "a red fox running through snow"},
        {"from_frame": 48, "to_frame": 51, "prompt": "a fox in a green forest",
         "blending_from": "a red fox running through snow"},
    ]
    v1, v2 = read_frames(tmp_path / "v1.mp4"), read_frames(tmp_path / "v2.mp4")
    diff = [float(np.abs(a.astype(int) - b).mean()) for a, b in zip(v1, v2)]
    assert max(diff[:36]) < 0.5  # the same windows (up to H.264 look-ahead)
    assert min(diff[52:]) > 2.0  # the new prompt


def test_an_unchanged_co_denoised_job_is_read_from_the_store_and_an_edit_says_which_windows_it_changed(tmp_path):
    """Co-denoised (window.reconcile: latent) on the simulated pipeline: the store path is the same."""
    data = base_spec(tmp_path, frames=52, window={"length": 16, "overlap": 4, "blend": "linear", "reconcile": "latent"})
    data["model"] = {**data["model"], "faults": {"simulate_seconds": 0}}
    del data["prompt"]
    data["prompts"] = {0: "a red fox running through snow"}
    job, out, store = write_spec(tmp_path, data), tmp_path / "fox.mp4", tmp_path / "store"
    first = _render(job, out, store)
    assert (first["windows_rendered"], first["windows_cached"]) == (4, 0)
    assert first["latent"]["from_store"] is False and first["latent"]["rendered_again"] is None
    video = out.read_bytes()

    # the same job again: its final latents are in the store, and only decoding is left
    args = ["render", str(job), "-o", str(out), "--store", str(store), "--workers", "1", "--threads", "1"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "read 4 co-denoised windows from the store (the job's final latents)" in again.output
    report = json.loads(out.with_name("fox.mp4.report.json").read_text())
    assert (report["windows_rendered"], report["windows_cached"]) == (0, 4)
    assert report["latent"]["from_store"] is True and report["latent"]["resumed_from_step"] == data["steps"]
    assert all(w["cached"] and w["state"] == "CACHED" for w in report["windows"])
    assert out.read_bytes() == video

    # an edit from frame 40 reaches window 3 alone, yet a co-denoised job renders them all: it says so
    data["prompts"] = {0: "a red fox running through snow", 40: "a fox in a green forest"}
    planned = CliRunner().invoke(main, ["plan", str(write_spec(tmp_path, data)), "-o", str(out), "--store", str(store)])
    assert "changed since the last render: window 3 (frames 36–51)" in " ".join(planned.output.split())
    edited = CliRunner().invoke(main, [args[0], str(job), *args[2:]])
    assert edited.exit_code == 0, edited.output
    said = " ".join(edited.output.split())
    assert ("co-denoised: every window is rendered again; changed since the last render: window 3 (frames 36–51)."
            in said) and "window.reconcile: crossfade" in said
    report = json.loads(out.with_name("fox.mp4.report.json").read_text())
    assert report["windows_rendered"] == 4 and report["latent"]["rendered_again"].startswith("co-denoised: every")
