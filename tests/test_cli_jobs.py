"""`farm submit/status/list` as a user meets them, without a cluster: the client waits for a
head whose job agent is not up yet, a job that could not find `farm` says why, the job id
never wraps, Ray's INFO lines stay out of the terminal, and a bad `-o` names the option."""

from __future__ import annotations

import io
import logging
import time
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from farm.errors import ClusterError, SpecError
from scheduler import jobs
from scheduler.cli_jobs import jobs_table, register
from tests.conftest import base_spec, write_spec

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick

#: What Ray's JobSubmissionClient raises when the dashboard has no job agent yet (Ray 2.60:
#: dashboard_sdk._raise_error around job_head's 500 answer).
NO_AGENT_ERROR = ("Request failed with status code 500: No available agent to submit job, "
                  "please try again later..")


class FakeSubmissionClient:
    """JobSubmissionClient's submit_job, answering "no agent" `busy` times, then taking the job."""

    def __init__(self, busy: int = 0, error: str = NO_AGENT_ERROR, log: bool = False):
        self.busy, self.error, self.log = busy, error, log
        self.calls: list[dict] = []

    def submit_job(self, **kwargs) -> str:
        self.calls.append(kwargs)
        if self.log:  # as Ray's job client does while it uploads the working_dir
            logging.getLogger("ray.dashboard.modules.dashboard_sdk").info("Uploading package gcs://_ray_pkg.zip.")
            logging.getLogger("ray.dashboard.modules.dashboard_sdk").warning("a warning the user should see")
        if len(self.calls) <= self.busy:
            raise RuntimeError(self.error)
        return kwargs["submission_id"]


@pytest.fixture
def submission(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token lookup: the fake needs none
    sub = jobs.prepare_submission(write_spec(tmp_path, base_spec(tmp_path)), "s3://bucket/fox.mp4",
                                  submission_id="farm-job-1")
    yield sub
    sub.cleanup()


def client_with(fake) -> jobs.JobsClient:
    return jobs.JobsClient("http://127.0.0.1:8265", submission_client=fake)


# --- 2. a head whose job agent is not up yet -------------------------------------------------

def test_submit_waits_while_no_job_agent_is_up_and_says_so_once(submission):
    fake, notes = FakeSubmissionClient(busy=3), []
    job_id = client_with(fake).submit(submission, agent_wait=10, poll=0.01, on_wait=notes.append)
    assert job_id == "farm-job-1" and len(fake.calls) == 4
    assert notes == ["the cluster's job agent is not up yet; retrying for up to 10s"]


def test_submit_gives_up_after_the_wait_with_what_to_do(submission):
    fake = FakeSubmissionClient(busy=10**6)
    start = time.monotonic()
    with pytest.raises(ClusterError) as info:
        client_with(fake).submit(submission, agent_wait=0.3, poll=0.05)
    assert time.monotonic() - start < 2
    assert 1 < len(fake.calls) <= 8
    text = str(info.value)
    assert "no job agent up" in text and "try again in a minute" in text and "Request failed" not in text


def test_other_refusals_are_not_retried(submission):
    fake = FakeSubmissionClient(busy=1, error="Request failed with status code 400: bad runtime_env.")
    with pytest.raises(ClusterError, match="bad runtime_env"):
        client_with(fake).submit(submission, agent_wait=10, poll=0.01)
    assert len(fake.calls) == 1


def test_rays_info_lines_stay_out_of_the_terminal_but_warnings_do_not(submission):
    import ray.job_submission  # noqa: F401 - sets up the `ray` logger's handler

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    keep = Keep()
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(keep)
    try:
        client_with(FakeSubmissionClient(log=True)).submit(submission)
    finally:
        ray_logger.removeHandler(keep)
    assert [r.getMessage() for r in seen] == ["a warning the user should see"]
    assert not any(h.filters for h in ray_logger.handlers)  # the filter is gone afterwards


# --- 3. a head that cannot run `farm` ------------------------------------------------------------

FARM_NOT_FOUND_INFO = {
    "status": "FAILED", "driver_exit_code": 127,
    "message": "Job entrypoint command failed with exit code 127, last available logs (truncated to 20,000 "
               "chars):\n/bin/sh: 1: farm: not found\n",
}


@pytest.mark.parametrize("info", [
    FARM_NOT_FOUND_INFO,
    {**FARM_NOT_FOUND_INFO, "driver_exit_code": None},  # older Rays: only the message says it
    {**FARM_NOT_FOUND_INFO, "message": "Job entrypoint command failed with exit code 127. No logs available."},
])
def test_status_of_a_job_whose_head_has_no_farm_says_what_to_do(info):
    text = jobs.describe("farm-job-1", info)
    first, hint = text.split("\nhint: ")
    assert first.startswith("farm-job-1: FAILED — Job entrypoint command failed with exit code 127")
    assert "could not run `farm`" in hint and "exit 127" in hint
    assert "install the project there" in hint and "activated" in hint and "PATH" in hint


@pytest.mark.parametrize("info", [
    {"status": "FAILED", "driver_exit_code": 1, "message": "Job entrypoint command failed with exit code 1"},
    {"status": "SUCCEEDED", "driver_exit_code": 0, "message": "Job finished successfully."},
    {"status": "RUNNING", "driver_exit_code": None, "message": None},
])
def test_other_statuses_get_no_hint(info):
    text = jobs.describe("farm-job-1", info)
    assert "hint:" not in text and text.startswith(f"farm-job-1: {info['status']}")


# --- 7. the job id never wraps; -o names the option -----------------------------------------------

def test_farm_list_keeps_the_job_id_on_one_line_at_80_columns():
    ids = ["farm-scheduled-30s-3f2a9c1b", "raysubmit_aBcDeFgHiJkLmNoP"]
    listed = [
        {"submission_id": ids[0], "job_id": "02000000", "status": "SUCCEEDED", "start_time": 1764456000000,
         "metadata": {"spec": "scheduled_30s.yaml", "output": "s3://my-bucket/renders/a-long-name.mp4"},
         "message": "Job finished successfully."},
        {"submission_id": ids[1], "job_id": None, "status": "FAILED", "start_time": None, "metadata": None,
         "message": FARM_NOT_FOUND_INFO["message"]},
    ]
    out = io.StringIO()
    Console(file=out, width=80).print(jobs_table(listed, "http://127.0.0.1:8265"))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for job_id in ids:
        assert any(job_id in line for line in lines), job_id
    assert not any("farm: not found" in line for line in lines)  # a message shows its first line only


def test_a_relative_dash_o_is_blamed_on_the_option(tmp_path):
    job = write_spec(tmp_path, base_spec(tmp_path))
    with pytest.raises(SpecError) as info:
        jobs.prepare_submission(job, "renders/out.mp4")
    assert info.value.problems[0].startswith("-o/--output: 'renders/out.mp4' is a path on this machine")
    group = click.Group()
    register(group)
    result = CliRunner().invoke(group, ["submit", str(job), "-o", "renders/out.mp4", "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert result.output.startswith("error: -o/--output: 'renders/out.mp4' is a path on this machine")
    assert "invalid job spec" not in result.output


def test_spec_problems_and_a_bad_dash_o_are_reported_together(tmp_path):
    job = write_spec(tmp_path, base_spec(tmp_path, steps=0))
    with pytest.raises(SpecError) as info:
        jobs.prepare_submission(job, "out.avi")
    assert [p.split(":")[0] for p in info.value.problems] == ["steps", "-o/--output"]


# --- farm queue / priority / manager through the jobs API ---------------------------------------

class FakeControlClient:
    """A jobs API that runs one control job (`farm queue` & co.) to `status`, with `log`."""

    def __init__(self, status: str, log: str):
        self.status, self.log, self.submitted = status, log, []

    def submit_job(self, **kwargs) -> str:
        self.submitted.append(kwargs)
        return kwargs["submission_id"]

    def get_job_info(self, job_id):
        return SimpleNamespace(submission_id=job_id, status=self.status, message="")

    def get_job_logs(self, job_id) -> str:
        return self.log


def test_a_farm_command_on_the_cluster_answers_with_its_own_json_or_its_own_error(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ok = FakeControlClient("SUCCEEDED", 'INFO job_manager.py:581 -- Runtime env is setting up.\n{"jobs": []}\n')
    log = client_with(ok).run_command(["farm", "queue", "--address", "auto", "--json"], poll=0)
    assert log.strip().endswith('{"jobs": []}')
    assert ok.submitted[0]["entrypoint"] == "farm queue --address auto --json"
    assert ok.submitted[0]["submission_id"].startswith("farm-control-")
    failed = FakeControlClient("FAILED", "INFO Running entrypoint for job farm-control-1\n"
                                         "error: no job 'nope' in the farm queue\n")
    with pytest.raises(ClusterError) as err:
        client_with(failed).run_command(["farm", "priority", "nope", "10"], poll=0)
    assert str(err.value) == "no job 'nope' in the farm queue"  # not Ray's log lines around it


def test_farm_queue_fits_80_columns_without_cutting_a_name():
    from rich.console import Console

    from scheduler.cli_farm import queue_tables

    job = "farm-wan-t2v-long-8f3a2b1c"
    data = {"max_actors": 2, "starting": 0,
            "jobs": [{"id": job, "priority": 50, "state": "RUNNING", "windows_done": 3, "windows_total": 20,
                      "actors": ["farm-pipeline-0-0"], "loading": 1, "age_seconds": 620.0}],
            "actors": [{"name": "farm-pipeline-0-0", "node": "c62f9fdae6c63575f46d587aa2f59937", "busy": True,
                        "model_names": ["wan Wan-AI/Wan2.1-T2V-1.3B-Diffusers"], "holder": job, "moving": False}]}
    console = Console(width=80, record=True)
    for table in queue_tables(data):
        console.print(table)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for whole in ("priority", "windows", "pipelines", "RUNNING", "loading 1", "farm-pipeline-0-0"):
        assert whole in text, whole
