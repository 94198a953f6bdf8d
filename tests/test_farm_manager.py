"""The shared farm on a real Ray: the manager (scheduler/manager.py) queues jobs by priority,
lends them warm pipeline actors, recalls actors at window boundaries, reclaims the actors of
dead drivers and survives its own death.

The pool's actors are pinned with a custom resource, `farm_gpu`, standing in for GPUs: the
cluster has two. Most jobs use the fixed-cost simulated pipeline (`simulate_seconds`: a
window takes exactly that long, and its frames depend only on the seed), so the times are
the scheduler's; the warm-pipeline test loads the real tiny AnimateDiff."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner

from farm.errors import ClusterError
from farm.keys import pipeline_key
from farm.spec import JobSpec
from scheduler.cli import main as farm_cli
from scheduler.driver import render
from scheduler.manager import ManagerConfig, find_manager, start_manager, stop_manager
from tests.conftest import base_spec, write_spec
from tests.ray_heads import FARM, wait_for

ROOT = Path(__file__).resolve().parent.parent
POOL = {"farm_gpu": 1}


@contextmanager
def manager(**config):
    # the production lease (10 s): a driver starved of CPU for a few seconds on 2 cores is not
    # lost; the test of reclaiming sets a short one
    config = {"max_actors": 2, "threads": 1, "resources": POOL, "lease_timeout_s": 10.0} | config
    handle, started = start_manager(ManagerConfig(**config))
    assert started
    try:
        yield handle
    finally:
        stop_manager()
        assert find_manager() is None


def sim_spec(tmp_path: Path, name: str, windows: int, seed: int, seconds: float, **overrides) -> JobSpec:
    """A job of `windows` windows of 16 frames (overlap 4) on the simulated pipeline."""
    model = {"pipeline": "animatediff", "faults": {"simulate_seconds": seconds}}
    data = base_spec(tmp_path, model=model, frames=16 + 12 * (windows - 1), seed=seed,
                     output=str(tmp_path / f"{name}.mp4"), **overrides)
    return JobSpec.model_validate(data)


class Run(threading.Thread):
    """A job rendered in a thread of this driver (as a second `farm render` would be)."""

    def __init__(self, spec: JobSpec, **options):
        super().__init__(daemon=True)
        self.spec, self.options = spec, {"store": False} | options
        self.report = self.error = self.finished_at = None

    def run(self):
        try:
            self.report = render(self.spec, **self.options)
        except Exception as err:  # noqa: BLE001 - the test reads it
            self.error = err
        self.finished_at = time.time()

    def result(self, timeout: float = 180):
        self.join(timeout)
        assert not self.is_alive(), f"{self.spec.output} did not finish"
        if self.error is not None:
            raise self.error
        return self.report


def snapshot(handle) -> dict:
    return ray.get(handle.snapshot.remote(), timeout=30)


def job_in(snap: dict, job_id: str) -> dict:
    return next(j for j in snap["jobs"] if j["id"] == job_id)


def queue_json() -> dict:
    result = CliRunner().invoke(farm_cli, ["queue", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def active_order(snap: dict) -> list[str]:
    return [j["id"] for j in snap["jobs"] if j["state"] in ("QUEUED", "RUNNING")]


def registered(handle, job_id: str) -> bool:
    return any(j["id"] == job_id for j in snapshot(handle)["jobs"])


# -- preemption ---------------------------------------------------------------------------------

def test_a_high_priority_job_overtakes_a_running_low_one_at_a_window_boundary(farm_ray, tmp_path):
    S = 0.5  # seconds per window
    low = sim_spec(tmp_path, "low", windows=12, seed=1, seconds=S)
    high = sim_spec(tmp_path, "high", windows=4, seed=2, seconds=S)
    solo = {}
    with manager() as handle:
        for spec in (low, high):  # each alone on the farm first
            alone = spec.model_copy(update={"output": str(tmp_path / f"solo-{Path(spec.output).name}")})
            render(alone, store=False)
            solo[spec.output] = Path(alone.output).read_bytes()
        slow = Run(low, priority=10, job_id="low")
        slow.start()
        wait_for(lambda: job_in(snapshot(handle), "low")["windows_done"] >= 2 if registered(handle, "low") else False,
                 120, 0.1, "the low job to render two windows")
        fast = Run(high, priority=90, job_id="high")
        fast.start()
        high_report, low_report = fast.result(), slow.result()

    # the high job's first window starts within one window time (plus dispatch) of its submission
    farm = high_report["farm"]
    assert farm["queued_seconds"] <= S + 0.75, farm
    assert farm["first_window_seconds"] <= S + 0.75, farm
    assert farm["warm"] == farm["lent"] == 2 and farm["loads"] == 0  # the low job's actors, its pipeline
    # it finishes first; the low job had both actors recalled, kept its windows, finished after
    assert fast.finished_at < slow.finished_at
    assert low_report["farm"]["recalled"] == 2
    assert low_report["windows_rendered"] == 12
    assert all(w["attempts"] == 1 for w in low_report["windows"])  # no window lost or rendered twice
    # and both videos are byte for byte what each job makes alone
    for spec in (low, high):
        assert Path(spec.output).read_bytes() == solo[spec.output], spec.output


def test_a_co_denoised_job_gives_an_actor_back_at_a_checkpoint_and_takes_it_again(farm_ray, tmp_path):
    window = {"length": 16, "overlap": 4, "blend": "linear", "reconcile": "latent", "checkpoint_every": 2}
    latent = sim_spec(tmp_path, "latent", windows=6, seed=11, seconds=1.0, steps=10, window=window)
    urgent = sim_spec(tmp_path, "urgent", windows=2, seed=12, seconds=0.5)
    alone = latent.model_copy(update={"output": str(tmp_path / "solo-latent.mp4")})
    with manager() as handle:
        render(alone, store=False)  # alone on the farm's two actors first
        slow = Run(latent, priority=10, job_id="latent")
        slow.start()
        wait_for(lambda: registered(handle, "latent") and len(job_in(snapshot(handle), "latent")["actors"]) == 2
                 and not job_in(snapshot(handle), "latent")["loading"], 120, 0.1, "the latent job's two actors")
        time.sleep(0.5)  # into its denoising
        fast = Run(urgent, priority=90, job_id="urgent", workers=1)
        fast.start()
        urgent_report, latent_report = fast.result(), slow.result()

    shrink, grow = latent_report["latent"]["reshapes"]
    assert (shrink["actors_before"], shrink["actors_after"]) == (2, 1)  # at a checkpoint, for the urgent job
    assert (grow["actors_before"], grow["actors_after"]) == (1, 2)  # and back once it was done
    assert shrink["at_step"] % 2 == 0 and shrink["at_step"] < grow["at_step"] < 10
    assert latent_report["farm"]["recalled"] == 1 and urgent_report["farm"]["lent"] == 1
    assert fast.finished_at < slow.finished_at
    # its frames do not depend on how many actors it had when
    assert Path(latent.output).read_bytes() == Path(alone.output).read_bytes()


def test_a_co_denoised_job_whose_lent_actor_crashes_reloads_its_pipeline_and_gives_the_same_frames(
        farm_ray, tmp_path):
    window = {"length": 16, "overlap": 4, "blend": "linear", "reconcile": "latent", "checkpoint_every": 2}
    model = {"pipeline": "animatediff", "faults": {"simulate_seconds": 0.4, "crash_on_step": 3}}
    spec = JobSpec.model_validate(base_spec(tmp_path, model=model, frames=16 + 12 * 3, seed=13, steps=6,
                                            window=window, output=str(tmp_path / "crash.mp4")))
    again = spec.model_copy(update={"output": str(tmp_path / "again.mp4")})
    with manager():
        report = render(spec, store=False)
        undisturbed = render(again, store=False)  # its actors are past their first life: no crash
    # the restarted actor holds no pipeline: it is told the job's again when its shard begins
    assert len(report["latent"]["recoveries"]) == 1 and report["latent"]["recoveries"][0]["from_step"] == 2
    assert undisturbed["latent"]["recoveries"] == []
    assert Path(spec.output).read_bytes() == Path(again.output).read_bytes()


def test_equal_priorities_run_in_submission_order(farm_ray, tmp_path):
    first = sim_spec(tmp_path, "first", windows=4, seed=3, seconds=0.3)
    second = sim_spec(tmp_path, "second", windows=4, seed=4, seconds=0.3)
    with manager() as handle:
        a = Run(first, job_id="first")
        a.start()
        wait_for(lambda: registered(handle, "first"), 60, 0.05, "the first job to queue")
        b = Run(second, job_id="second")
        b.start()
        wait_for(lambda: registered(handle, "second"), 60, 0.05, "the second job to queue")
        assert active_order(snapshot(handle)) == ["first", "second"]
        a.result(), b.result()
        events = ray.get(handle.events_log.remote())
    ended = next(e["t"] for e in events if e["event"] == "ended" and e["job"] == "first")
    lent_second = [e["t"] for e in events if e["event"] == "lent" and e["job"] == "second"]
    assert lent_second and min(lent_second) >= ended  # it waited for the first to end: no sharing


# -- warm pipelines ------------------------------------------------------------------------------

def test_warm_pipelines_are_reused_and_the_least_recently_used_is_evicted(farm_ray, tmp_path):
    def job(name: str, scheduler: str, seed: int) -> JobSpec:
        # each cold load takes a second longer: `farm queue` is watched through a whole load even
        # when this process's watcher thread is starved (2 cores, a second pytest process)
        model = {"pipeline": "animatediff", "base": "tiny", "motion_adapter": "tiny", "scheduler": scheduler,
                 "warmup": False, "faults": {"load_delay": 1.0}}
        return JobSpec.model_validate(base_spec(tmp_path, model=model, frames=16, seed=seed,
                                                output=str(tmp_path / f"{name}.mp4")))

    ddim, euler, lcm = job("a", "ddim", 1), job("c", "euler", 3), job("e", "lcm", 5)
    seen: list[tuple[str, int]] = []  # (job, actors loading) whenever `farm queue` shows a job holding an actor
    done = threading.Event()

    def watch(handle):
        while not done.is_set():
            seen.extend((j["label"], j["loading"]) for j in snapshot(handle)["jobs"] if j["actors"])
            time.sleep(0.02)

    with manager(max_actors=1, max_models=2) as handle:
        watcher = threading.Thread(target=watch, args=(handle,), daemon=True)
        watcher.start()
        reports = [render(spec, store=False) for spec in
                   (ddim, job("b", "ddim", 2), euler, job("d", "ddim", 4), lcm)]
        done.set()
        watcher.join()
        actors = snapshot(handle)["actors"]
    # what `farm queue` says is the actor's real state: loading from the moment a cold actor
    # is lent (never `warm` first), and never loading when the actor holds the pipeline
    assert next(loading for label, loading in seen if label == "a.mp4") == 1, seen
    assert {loading for label, loading in seen if label in ("b.mp4", "d.mp4")} == {0}
    lends = [r["farm"] for r in reports]
    infos = [r["actors"][0] for r in reports]
    assert (lends[0]["loads"], infos[0]["warm"]) == (1, False) and infos[0]["load_seconds"] >= 1.0
    # the same model again: no load
    assert (lends[1]["loads"], infos[1]["warm"], infos[1]["load_seconds"]) == (0, True, 0.0)
    # another model: exactly one load; the actor keeps two, so nothing is evicted yet
    assert (lends[2]["loads"], infos[2]["evicted"]) == (1, [])
    assert infos[3]["warm"]  # ddim is still held, and is now the most recently used
    # a third model: one load, evicting the least recently used (euler, not ddim)
    assert lends[4]["loads"] == 1
    assert infos[4]["evicted"] == [pipeline_key(euler, "cpu")]
    assert actors[0]["models"] == [pipeline_key(ddim, "cpu"), pipeline_key(lcm, "cpu")]
    assert len({info["pid"] for info in infos}) == 1  # one actor served all five jobs
    # and the HTML page says so, per actor lent
    page = Path(f"{lcm.output}.report.html").read_text()
    assert "<h2>Farm</h2>" in page and "<th>actor lent</th>" in page
    assert "<td>loaded</td>" in page and pipeline_key(euler, "cpu") in page
    assert "<td>warm</td>" in Path(f"{tmp_path / 'b.mp4'}.report.html").read_text()


# -- steering --------------------------------------------------------------------------------------

def test_farm_priority_moves_a_queued_job_ahead(farm_ray, tmp_path):
    running = sim_spec(tmp_path, "running", windows=4, seed=6, seconds=1.0)
    b = sim_spec(tmp_path, "b", windows=1, seed=7, seconds=0.2)
    c = sim_spec(tmp_path, "c", windows=1, seed=8, seconds=0.2)
    with manager(max_actors=1) as handle:
        runs = {}
        for job_id, spec in (("running", running), ("b", b), ("c", c)):
            runs[job_id] = Run(spec, job_id=job_id)
            runs[job_id].start()
            wait_for(lambda: registered(handle, job_id), 60, 0.05, f"job {job_id} to queue")
            if job_id == "running":
                wait_for(lambda: job_in(snapshot(handle), "running")["windows_done"] >= 1, 120, 0.05,
                         "the first job to be running")
        before = queue_json()
        moved = CliRunner().invoke(farm_cli, ["priority", "c", "60"])
        after = queue_json()
        for run in runs.values():
            run.result()
        bad = CliRunner().invoke(farm_cli, ["priority", "nope", "60"])
        events = ray.get(handle.events_log.remote())
    assert active_order(before) == ["running", "b", "c"]
    assert moved.exit_code == 0 and moved.output.strip() == "c: priority 60 (QUEUED)"
    assert active_order(after) == ["c", "running", "b"]
    assert [j["priority"] for j in after["jobs"][:3]] == [60, 50, 50]
    # c overtook both: it took the running job's actor at its next window, and ran before b
    assert runs["c"].finished_at < runs["b"].finished_at
    assert runs["running"].report["farm"]["recalled"] == 1
    # c's report has the priority it ran at, and the one it was submitted with
    farm_c = runs["c"].report["farm"]
    assert farm_c["priority"] == 60 and [p["priority"] for p in farm_c["priorities"]] == [50, 60]
    assert farm_c["priorities"][1]["at"] > 0
    assert "50 (at 0 s) → 60 (at " in Path(f"{tmp_path / 'c.mp4'}.report.html").read_text()
    first_lent = [e["job"] for e in events if e["event"] == "lent"]
    assert first_lent.index("c") < first_lent.index("b")
    assert bad.exit_code == 1 and "no job 'nope' in the farm queue" in bad.output
    assert after["answered_in_seconds"] < 5


# -- failures --------------------------------------------------------------------------------------

def test_a_killed_driver_has_its_actors_reclaimed_within_the_lease(farm_ray, tmp_path):
    lease_s = 5.0
    model = {"pipeline": "animatediff", "faults": {"simulate_seconds": 0.5}}
    job = write_spec(tmp_path, base_spec(tmp_path, model=model, frames=16 + 12 * 39, seed=9,
                                         output=str(tmp_path / "killed.mp4")))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)} | {"RAY_AUTH_MODE": "token"}
    address = ray.get_runtime_context().gcs_address
    # 5 s: twenty heartbeats; at 3 s a driver starved of CPU beside the other test worker on
    # 2 cores was once declared lost before it was killed
    with manager(lease_timeout_s=lease_s) as handle:
        child = subprocess.Popen([FARM, "render", str(job), "--address", address,
                                  "--job-id", "doomed", "--no-store", "-q"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def rendering_on_both():  # the second actor may start well after the first window is done
                assert child.poll() is None, child.stdout.read()
                if not registered(handle, "doomed"):
                    return False
                job = job_in(snapshot(handle), "doomed")
                return job["windows_done"] >= 1 and len(job["actors"]) == 2
            wait_for(rendering_on_both, 120, 0.1, "the child's job to render on both actors")
            child.send_signal(signal.SIGKILL)  # no goodbye: only the missing heartbeat tells
            killed = time.monotonic()
            child.wait(30)
            wait_for(lambda: all(not a["busy"] for a in snapshot(handle)["actors"]), 30, 0.1,
                     "the actors to come back")
            back_after = time.monotonic() - killed
        finally:
            child.kill()
        snap = snapshot(handle)
    assert job_in(snap, "doomed")["state"] == "LOST"
    assert back_after <= lease_s + 1.0, back_after  # the lease, plus a tick and this poll
    assert [a["models"] for a in snap["actors"]] == [[snap["jobs"][0]["model"]]] * 2  # back warm


def test_a_job_stopped_while_it_waits_for_actors_fails_with_that_reason_and_a_report(farm_ray, tmp_path):
    busy = sim_spec(tmp_path, "busy", windows=6, seed=11, seconds=0.5)
    waiting = sim_spec(tmp_path, "waiting", windows=1, seed=12, seconds=0.1)
    with manager(max_actors=1) as handle:
        holder = Run(busy, job_id="busy")
        holder.start()
        wait_for(lambda: job_in(snapshot(handle), "busy")["actors"] if registered(handle, "busy") else False,
                 60, 0.05, "the first job to hold the actor")

        def stop_when_queued():
            wait_for(lambda: registered(handle, "waiting"), 60, 0.05, "the second job to queue")
            ray.get(handle.finish.remote("waiting", "STOPPED"))

        stopper = threading.Thread(target=stop_when_queued, daemon=True)
        stopper.start()
        try:  # stopped (as `farm stop` does) before the manager lent it anything
            with pytest.raises(ClusterError, match="ended job waiting .*it was stopped"):
                render(waiting, store=False, job_id="waiting")
        finally:
            stopper.join()
        holder.result()
    report = json.loads(Path(f"{waiting.output}.report.json").read_text())
    assert report["state"] == "FAILED" and "it was stopped" in report["error"]
    assert not Path(waiting.output).exists()


def test_a_killed_manager_is_restarted_and_the_job_completes(farm_ray, tmp_path):
    spec = sim_spec(tmp_path, "survivor", windows=12, seed=10, seconds=0.5)
    with manager(lease_timeout_s=10.0) as handle:
        run = Run(spec, job_id="survivor")
        run.start()
        wait_for(lambda: registered(handle, "survivor") and job_in(snapshot(handle), "survivor")["windows_done"] >= 2,
                 120, 0.1, "the job to render two windows")
        ray.kill(handle, no_restart=False)  # Ray restarts it (max_restarts=-1)
        report = run.result()
        snap = wait_for(lambda: _try(queue_json), 60, 0.5, "the restarted manager to answer")
    assert report["state"] == "DONE" and report["windows_rendered"] == 12
    assert snap["manager"]["restarts"] == 1
    job = job_in(snap, "survivor")
    assert job["state"] == "DONE" and job["windows_done"] == 12
    assert all(not a["busy"] for a in snap["actors"]) and len(snap["actors"]) == 2  # found again by name


def _try(fn):
    try:
        return fn()
    except (AssertionError, ray.exceptions.RayError):
        return None


def test_the_farm_commands_say_what_is_wrong(farm_ray):
    assert find_manager() is None
    nothing = CliRunner().invoke(farm_cli, ["queue"])
    assert nothing.exit_code == 1
    assert "no farm manager runs on this cluster: start one with `farm manager start`" in nothing.output
    out_of_range = CliRunner().invoke(farm_cli, ["priority", "some-job", "101"])
    assert out_of_range.exit_code == 2 and "PRIORITY" in out_of_range.output and "0<=x<=100" in out_of_range.output
    assert CliRunner().invoke(farm_cli, ["manager", "stop"]).output.strip() == "no farm manager runs"


def test_farm_queue_watch_shows_the_tables_again_until_ctrl_c(farm_ray, monkeypatch):
    import scheduler.cli_farm

    naps = []

    def nap(seconds):  # the watch loop's wait: Ctrl-C on the third
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt

    both = CliRunner().invoke(farm_cli, ["queue", "--watch", "--json"])
    assert both.exit_code == 2 and "--watch shows the tables" in both.output
    with manager(max_actors=1):
        monkeypatch.setattr(scheduler.cli_farm, "_wait", nap)
        watched = CliRunner().invoke(farm_cli, ["queue", "--watch", "0.5"])
    assert watched.exit_code == 0, watched.output
    assert naps == [0.5, 0.5, 0.5]  # shown, then shown again twice, then Ctrl-C
    assert "farm actors (up to 1" in watched.output and "no jobs in the farm queue yet" in watched.output
