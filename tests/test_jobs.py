"""`farm submit/status/logs/stop/list` against a real token-auth Ray head, and the pure parts
of a submission (inputs, outputs, addresses, tokens)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import psutil
import pytest
import yaml
from click.testing import CliRunner

from farm.video import probe, read_frames
from farm.errors import ClusterError, SpecError
from scheduler import jobs
from scheduler.cli_jobs import register
from tests.conftest import base_spec, write_spec
from tests import ray_heads
from tests.ray_heads import RAY, farm_actors_alive, free_ports, resources, wait_for

# The farm CLI with the jobs commands, as a child process (the `farm` script once
# scheduler/cli.py calls register(); this form works before and after that).
FARM = [sys.executable, "-c",
        "from scheduler.cli import main; from scheduler.cli_jobs import register; register(main); main()"]
SMALL = {"frames": 20, "window": {"length": 16, "overlap": 4, "blend": "linear"}}

token_head = ray_heads.token_head  # fixture (tests/ray_heads.py)


def farm(head, *args, token=True, timeout=120, **env):
    return subprocess.run(FARM + [str(a) for a in args], env=head.client_env(token=token, **env),
                          capture_output=True, text=True, timeout=timeout)


def ray_cli(head, *args, timeout=60):
    return subprocess.run([RAY, *args], env=head.client_env(), capture_output=True, text=True, timeout=timeout)


def jobs_group() -> click.Group:
    group = click.Group()
    register(group)
    return group


# --- against a cluster -----------------------------------------------------------------

def test_two_submitted_jobs_share_the_cluster_and_are_ordinary_ray_jobs(tmp_path, token_head):
    from farm.models.tiny import TINY_MOTION_ADAPTER, tiny_model_path

    # Job 1 takes its actor from the farm manager, which its submission starts. Job 2 names
    # its motion adapter by a folder on this machine: it travels with the job, which
    # therefore renders on an actor of its own (the farm's shared actors cannot read it).
    adapter = tiny_model_path(TINY_MOTION_ADAPTER)
    models = [{}, {"model": {"pipeline": "animatediff", "base": "tiny", "motion_adapter": str(adapter)}}]
    ids, outs = [], []
    for n, model in zip((1, 2), models):  # different seeds: both really render, neither reuses the other's windows
        folder = tmp_path / f"job{n}"
        folder.mkdir()
        job = write_spec(folder, base_spec(folder, seed=100 + n, **SMALL, **model), name=f"fox-{n}.yaml")
        out = folder / "video.mp4"
        result = farm(token_head, "submit", job, "-o", out, "--workers", 1, "--threads", 1)
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.strip())
        outs.append(out)
        assert "Traceback" not in result.stderr
    assert ids[0].startswith("farm-fox-1-") and ids[1].startswith("farm-fox-2-")
    assert "shipped with the job: model.motion_adapter" in result.stderr

    for job_id in ids:
        done = farm(token_head, "status", job_id, "--wait", "--timeout", 240, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr + farm(token_head, "logs", job_id).stdout
        assert done.stdout.startswith(f"{job_id}: SUCCEEDED")
    # The two jobs ran at the same time, on one actor each.
    (a, b) = (json.loads(farm(token_head, "status", i, "--json").stdout) for i in ids)
    assert a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"]
    for out in outs:
        info = probe(out)
        assert (info.frames, info.width, info.height, info.fps) == (20, 64, 64, 8.0)
        assert len(read_frames(out)) == 20
        assert json.loads(Path(f"{out}.report.json").read_text())["output_frames"] == 20
    reports = [json.loads(Path(f"{out}.report.json").read_text()) for out in outs]
    shipped = reports[1]["spec"]["model"]["motion_adapter"]
    assert shipped.endswith("/inputs/0-tiny-motion-adapter-v1") and shipped != str(adapter)
    assert reports[0]["farm"]["job_id"] == ids[0] and reports[0]["farm"]["priority"] == 50
    assert reports[1]["farm"]["private"].startswith("model.motion_adapter shipped with the job")

    # Ray's own CLI sees ordinary Ray jobs.
    status = ray_cli(token_head, "job", "status", ids[0])
    assert status.returncode == 0 and "succeeded" in (status.stdout + status.stderr).lower()
    logs = ray_cli(token_head, "job", "logs", ids[1])
    assert logs.returncode == 0 and "co-denoised 2 windows" in logs.stdout  # window.reconcile: latent, the default
    assert "private actors: model.motion_adapter shipped with the job" in logs.stdout

    # The farm's queue, through the jobs API alone: job 1 is there, done, its actor idle and warm.
    queued = farm(token_head, "queue", "--json")
    assert queued.returncode == 0, queued.stderr
    snap = json.loads(queued.stdout)
    assert [(j["id"], j["state"], j["windows_done"]) for j in snap["jobs"]] == [(ids[0], "DONE", 2)]
    assert [(a["busy"], len(a["models"])) for a in snap["actors"]] == [(False, 1)]
    assert snap["answered_in_seconds"] < 30

    table = farm(token_head, "list", COLUMNS="250")
    assert table.returncode == 0 and all(job_id in table.stdout for job_id in ids), table.stdout + table.stderr
    listed = farm(token_head, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    by_id = {j["submission_id"]: j for j in json.loads(listed.stdout)}
    for job_id, out in zip(ids, outs):
        assert by_id[job_id]["status"] == "SUCCEEDED"
        assert by_id[job_id]["metadata"]["output"] == str(out)
        assert by_id[job_id]["entrypoint"].startswith("farm render job.yaml --address auto --farm")


def test_farm_stop_returns_the_lent_actor_warm_and_manager_stop_frees_the_cluster(tmp_path, token_head):
    total = resources(token_head)["total"]
    job = write_spec(tmp_path, base_spec(tmp_path, frames=240, steps=4, seed=7))  # minutes of work
    submitted = farm(token_head, "submit", job, "--workers", 1, "--threads", 1, "--priority", 70)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    def queue() -> dict:
        result = farm(token_head, "queue", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def ours(snap: dict) -> dict:
        return next((j for j in snap["jobs"] if j["id"] == job_id), {})

    # Stop it once it runs and the farm has lent it its actor.
    wait_for(lambda: farm(token_head, "status", job_id).stdout.startswith(f"{job_id}: RUNNING"), 120, 0.5,
             "the job to start")
    wait_for(lambda: ours(queue()).get("actors"), 120, 0.5, "the farm to lend the job its actor")
    stopped = farm(token_head, "stop", job_id)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"{job_id}: STOPPED"
    assert farm(token_head, "status", job_id).stdout.startswith(f"{job_id}: STOPPED")
    # its driver ended the job itself on SIGTERM: the actor is back in the pool, warm, at once
    snap = queue()
    assert (ours(snap)["state"], ours(snap)["priority"], ours(snap)["actors"]) == ("STOPPED", 70, [])
    assert [(a["busy"], len(a["models"])) for a in snap["actors"]] == [(False, 1)]
    assert len(farm_actors_alive(token_head)) == 1
    assert not (tmp_path / "out.mp4").exists()  # a stopped job leaves no video

    # `farm manager stop` takes the pool with it: no actor left, every CPU free.
    gone = farm(token_head, "manager", "stop")
    assert gone.returncode == 0 and gone.stdout.strip() == "farm manager stopped, with its 1 pool actors", gone.stderr
    wait_for(lambda: not farm_actors_alive(token_head), 60, 0.5, "the farm actors to go")

    def freed():
        now = resources(token_head)
        return all(now["available"].get(k, 0) == total.get(k, 0) for k in ("CPU", "GPU"))
    wait_for(freed, 60, 1, "the CPUs to return to the cluster")


def test_the_token_comes_from_any_of_rays_sources_and_its_absence_is_explained(token_head):
    home = token_head.temp_dir / "client-home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token_head.token)
    os.chmod(home / ".ray" / "auth_token", 0o600)
    for env in ({"HOME": str(home)}, {"RAY_AUTH_TOKEN": token_head.token}):  # (RAY_AUTH_TOKEN_PATH: above)
        listed = farm(token_head, "list", "--json", token=False, **env)
        assert listed.returncode == 0, listed.stderr
        assert isinstance(json.loads(listed.stdout), list) and "WARNING" not in listed.stderr

    result = farm(token_head, "list", token=False)
    assert result.returncode == 1
    assert "RAY_AUTH_TOKEN" in result.stderr and "token auth" in result.stderr and "401" in result.stderr
    assert "Traceback" not in result.stderr

    wrong = farm(token_head, "status", "farm-anything", token=False, RAY_AUTH_TOKEN="not-the-token")
    assert wrong.returncode == 1
    assert "rejected the token from RAY_AUTH_TOKEN" in wrong.stderr and "Traceback" not in wrong.stderr

    unknown = farm(token_head, "logs", "farm-no-such-job")
    assert unknown.returncode == 1 and "no job 'farm-no-such-job'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_bad_spec_exits_2_and_never_reaches_the_cluster(tmp_path, token_head):
    before = farm(token_head, "list", "--json")
    bad = write_spec(tmp_path, base_spec(tmp_path, frames=0, width=65))
    result = CliRunner().invoke(jobs_group(), ["submit", str(bad), "--address", token_head.dashboard_url])
    assert result.exit_code == 2
    assert "frames" in result.output and "width: must be a multiple of 8" in result.output
    relative = write_spec(tmp_path, base_spec(tmp_path, output="out.mp4"), name="rel.yaml")
    result = CliRunner().invoke(jobs_group(), ["submit", str(relative), "--address", token_head.dashboard_url])
    assert result.exit_code == 2 and "a path on this machine" in result.output
    after = farm(token_head, "list", "--json")
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_the_heads_jobs_api_listens_on_loopback_only(token_head):
    assert oct(token_head.token_path.stat().st_mode & 0o777) == "0o600"
    port = token_head.ports["dashboard"]
    listening = []
    for proc in token_head.processes():
        try:
            listening += [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    on_port = {addr.ip for addr in listening if addr.port == port}
    assert on_port == {"127.0.0.1"}, listening
    all_interfaces = {addr.port for addr in listening if addr.ip in ("0.0.0.0", "::")}
    assert port not in all_interfaces


# --- pure parts -------------------------------------------------------------------------

def test_local_inputs_finds_local_files_and_leaves_hub_ids(tmp_path):
    model = tmp_path / "my-sd15"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"x" * 1000)
    weights = tmp_path / "flownet.pkl"
    weights.write_bytes(b"y" * 10)
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"z" * 5)
    face, hat = tmp_path / "face.png", tmp_path / "hat.png"
    face.write_bytes(b"f" * 3)
    hat.write_bytes(b"h" * 4)
    spec = {"model": {"base": str(model), "motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2",
                      "ip_adapter": "h94/IP-Adapter",
                      "loras": [{"id": "org/lora", "name": "hub"}, {"path": "style.safetensors", "name": "mine"}]},
            "reference": {"image": "face.png"}, "shots": [{"frames": 8}, {"frames": 8, "reference": {"image": "hat.png"}}],
            "interpolate": {"weights": "flownet.pkl"}, "extras": [{"file": "a.png"}, {"file": "b.png"}]}
    found = jobs.local_inputs(spec, base=tmp_path)
    assert [(i.field, i.path, i.size) for i in found] == [
        ("model.base", model, 1000), ("model.loras.1.path", lora, 5), ("reference.image", face, 3),
        ("shots.1.reference.image", hat, 4), ("interpolate.weights", weights, 10)]
    # A later field that names files is one more entry; `*` steps into lists.
    fields = jobs.INPUT_FIELDS + (jobs.InputField("extras.*.file", "path"),)
    assert [i.field for i in jobs.local_inputs(spec, base=tmp_path, fields=fields)][-2:] == ["extras.0.file",
                                                                                             "extras.1.file"]
    assert jobs.local_inputs({"model": {"base": "tiny", "motion_adapter": "tiny"}}) == []


def test_submission_ships_the_spec_and_its_inputs_with_paths_rewritten(tmp_path):
    model = tmp_path / "adapter"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = base_spec(tmp_path, model={"pipeline": "animatediff", "base": "tiny", "motion_adapter": str(model)})
    job = write_spec(tmp_path, data)
    sub = jobs.prepare_submission(job, "s3://bucket/renders/fox.mp4", workers=2, env={"A": "1"}, priority=80)
    try:
        shipped = yaml.safe_load((sub.folder / "job.yaml").read_text())
        assert shipped["output"] == "s3://bucket/renders/fox.mp4"
        assert shipped["model"]["motion_adapter"] == "./inputs/0-adapter"
        assert (sub.folder / "inputs" / "0-adapter" / "config.json").read_text() == "{}"
        assert shipped["prompt"] == data["prompt"]
        # through the farm manager, under the Ray job's id, at its priority
        assert sub.entrypoint == (f"farm render job.yaml --address auto --farm --job-id {sub.submission_id} "
                                  "--priority 80 --workers 2")
        assert sub.metadata["priority"] == "80"
        # who submitted it, for the farm's queue and web UI: in the driver's env and the metadata
        submitter = sub.runtime_env["env_vars"].pop("FARM_SUBMITTER")
        assert sub.runtime_env == {"working_dir": str(sub.folder), "env_vars": {"A": "1"}}
        assert "@" in submitter and sub.metadata["submitted_by"] == submitter
        assert sub.metadata["output"] == "s3://bucket/renders/fox.mp4"
    finally:
        sub.cleanup()
    assert not sub.folder.exists()


def test_submit_ships_the_inputs_a_spec_names_relative_to_its_own_folder(tmp_path, monkeypatch):
    jobdir = tmp_path / "jobs"
    (jobdir / "adapter").mkdir(parents=True)
    (jobdir / "adapter" / "config.json").write_text("{}")
    data = base_spec(tmp_path, model={"pipeline": "animatediff", "base": "tiny", "motion_adapter": "./adapter"})
    job = write_spec(jobdir, data)
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    sub = jobs.prepare_submission(job, "s3://bucket/renders/fox.mp4")
    try:
        assert [(i.field, i.path) for i in sub.inputs] == [("model.motion_adapter", jobdir / "adapter")]
        shipped = yaml.safe_load((sub.folder / "job.yaml").read_text())
        assert shipped["model"]["motion_adapter"] == "./inputs/0-adapter"
        assert (sub.folder / "inputs" / "0-adapter" / "config.json").read_text() == "{}"
    finally:
        sub.cleanup()


def test_inputs_over_rays_upload_limit_are_refused_before_sending(tmp_path):
    model = tmp_path / "big-model"
    model.mkdir()
    with open(model / "unet.safetensors", "wb") as f:
        f.truncate(jobs.upload_limit() + 2**20)  # sparse: takes no disk
    job = write_spec(tmp_path, base_spec(tmp_path, model={"pipeline": "animatediff", "base": str(model)}))
    with pytest.raises(SpecError) as err:
        jobs.prepare_submission(job, "s3://bucket/a.mp4")
    text = str(err.value)
    assert f"model.base: {model} is 101.0 MiB" in text and "upload limit is 100.0 MiB" in text
    assert "object storage" in text
    result = CliRunner().invoke(jobs_group(), ["submit", str(job), "-o", "s3://bucket/a.mp4",
                                               "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "upload limit" in result.output


@pytest.mark.parametrize("output, ok", [
    ("s3://bucket/key.mp4", True), ("gs://bucket/k/v.mp4", True), ("/srv/renders/v.mp4", True),
    ("out.mp4", False), ("renders/out.mp4", False), ("/srv/v.avi", False), ("http://x/v.mp4", False), (None, False),
])
def test_the_output_must_be_one_the_cluster_can_write(output, ok):
    if ok:
        assert jobs.cluster_output(output) == output
    else:
        with pytest.raises(SpecError):
            jobs.cluster_output(output)


def test_address_comes_from_the_option_then_the_environment(monkeypatch):
    for name in ("FARM_JOBS_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert jobs.resolve_address(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address: not for the jobs API
    assert jobs.resolve_address(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert jobs.resolve_address(None) == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert jobs.resolve_address(None) == "http://api:8265"
    monkeypatch.setenv("FARM_JOBS_ADDRESS", "farmhead:8265")
    assert jobs.resolve_address(None) == "http://farmhead:8265"
    assert jobs.resolve_address("https://x:443") == "https://x:443"
    with pytest.raises(ClusterError, match="dashboard"):
        jobs.resolve_address("ray://head:10001")


def test_tokens_come_from_ray_variables_or_the_default_file(monkeypatch, tmp_path):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.resolve_token() is None
    default = tmp_path / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("from-default\n")
    os.chmod(default, 0o644)
    assert jobs.resolve_token() == jobs.Token("from-default", str(default))
    assert "chmod 600" in " ".join(jobs.security_warnings("http://127.0.0.1:8265", jobs.resolve_token()))
    named = tmp_path / "tok"
    named.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert jobs.resolve_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.resolve_token() == jobs.Token("from-env", "RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.resolve_token() is None
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ClusterError, match="RAY_AUTH_TOKEN_PATH=.*does not exist"):
        jobs.resolve_token()


def test_plain_http_to_another_host_without_a_token_warns_loudly(monkeypatch, tmp_path):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    token = jobs.Token("t", "RAY_AUTH_TOKEN")
    assert "token auth is off" in jobs.security_warnings("http://10.0.0.5:8265", None)[0]
    assert jobs.security_warnings("http://127.0.0.1:8265", None) == []
    assert jobs.security_warnings("http://localhost:8265", None) == []
    assert jobs.security_warnings("http://10.0.0.5:8265", token) == []
    # The CLI prints it on stderr before it tries the address (this machine's own
    # non-loopback address, on a closed port: refused at once).
    own = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family == socket.AF_INET and not a.address.startswith("127.")]
    if not own:
        pytest.skip("no non-loopback IPv4 address on this machine")
    start = time.monotonic()
    result = CliRunner().invoke(jobs_group(), ["list", "--address", f"http://{own[0]}:{free_ports(1)[0]}"])
    assert result.exit_code == 1 and "WARNING" in result.output and "token auth is off" in result.output
    assert "cannot reach the Ray jobs API" in result.output and time.monotonic() - start < 60
