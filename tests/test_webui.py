"""The farm in a browser (scheduler/webui.py): the page in headless Chromium, driven by
Selenium, against a real farm manager on a local Ray (its two pool actors pinned by a
custom resource, as in tests/test_farm_manager.py), and its HTTP routes with plain
requests: CSRF, the token beyond loopback, the previews' bound, the CLI's fast path.

The browser tests need Debian's `chromium` and `chromium-driver` (`.ci/run` installs them
when they are missing); without them they are skipped, and say so."""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner

import scheduler.lease
from farm.spec import JobSpec
from scheduler.cli import main as farm_cli
from scheduler.driver import render
from scheduler.lease import StoppedByFarm
from scheduler.manager import PREVIEW_BYTES, ManagerConfig, find_manager, start_manager, stop_manager
from tests.conftest import base_spec

POOL = {"farm_gpu": 1}
HTML_PROMPT = "<script>window.injected = 1</script><b id='injected'>bold</b> a fox"


RUNS: list[Run] = []  # every job a test started: stopped and joined before its farm goes


@contextmanager
def farm(host: str = "127.0.0.1", **config):
    """A farm manager with its web UI on a free port; yields (handle, the UI's URL). A test
    that fails half-way leaves no job of its own running (its driver would outlive the farm)."""
    config = {"max_actors": 1, "threads": 1, "resources": POOL, "lease_timeout_s": 10.0} | config
    handle, started = start_manager(ManagerConfig(**config))
    assert started
    try:
        yield handle, ray.get(handle.start_ui.remote(host, 0), timeout=30)
    finally:
        for run in RUNS:
            if run.is_alive():
                try:
                    ray.get(handle.stop_job.remote(run.options["job_id"]), timeout=10)
                except Exception:  # noqa: BLE001 - ended meanwhile
                    pass
                run.join(60)
        RUNS.clear()
        stop_manager()
        assert find_manager() is None


def sim_spec(tmp_path: Path, name: str, windows: int, seconds: float, **overrides) -> JobSpec:
    model = {"pipeline": "animatediff", "faults": {"simulate_seconds": seconds}}
    data = base_spec(tmp_path, model=model, frames=16 + 12 * (windows - 1), seed=len(name),
                     output=str(tmp_path / f"{name}.mp4"), **overrides)
    return JobSpec.model_validate(data)


class Run(threading.Thread):
    """A farm job rendered in a thread of this driver."""

    def __init__(self, spec: JobSpec, **options):
        super().__init__(daemon=True)
        self.spec, self.options = spec, {"store": False, "farm": True} | options
        self.report = self.error = None
        RUNS.append(self)

    def run(self):
        try:
            self.report = render(self.spec, **self.options)
        except BaseException as err:  # noqa: BLE001 - StoppedByFarm is a KeyboardInterrupt
            self.error = err

    def result(self, timeout: float = 180):
        self.join(timeout)
        assert not self.is_alive(), f"{self.spec.output} did not finish"
        return self.report, self.error


def http(url: str, method: str = "GET", body: dict | None = None, headers: dict | None = None):
    """(status, parsed JSON or text) of one request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} | (headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, raw, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, raw, kind = err.code, err.read(), err.headers.get("Content-Type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else raw.decode(errors="replace")


def job_of(state: dict, job_id: str) -> dict:
    return next(j for j in state["jobs"] if j["id"] == job_id)


def state_of(handle, job_id: str) -> str | None:
    """The job's state in the farm queue, None before its driver registered it."""
    job = next((j for j in ray.get(handle.ui_state.remote())["jobs"] if j["id"] == job_id), None)
    return None if job is None else job["state"]


def wait_until(check, timeout: float = 60, every: float = 0.2, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


# -- the page in a real browser ---------------------------------------------------------------------
@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("the browser tests need Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


# The page rebuilds its tables every second: what the tests read and click is looked up and
# used in one script, so no element goes stale in between.
def page_rows(browser) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#jobs tbody tr')].map(row => row.dataset.job)")


def thumbnails(browser, job_id: str) -> int:
    return browser.execute_script(
        "return document.querySelectorAll(`.preview[data-job='${arguments[0]}'] img`).length", job_id)


def prompt_text(browser, job_id: str) -> str | None:
    return browser.execute_script(
        "const cell = document.querySelector(`#jobs tr[data-job='${arguments[0]}'] td.prompt`);"
        "return cell ? cell.textContent : null", job_id)


def click_in_row(browser, job_id: str, button: str, answer: str | None = None) -> None:
    """Click a row's button and accept its dialogs (a prompt gets `answer`)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    found = browser.execute_script(  # clicked after the script returns: the dialogs it opens block
        "const b = document.querySelector(`#jobs tr[data-job='${arguments[0]}'] button.${arguments[1]}`);"
        "if (b) setTimeout(() => b.click(), 0); return !!b", job_id, button)
    assert found, f"no {button} button for {job_id} on the page"
    if answer is not None:
        WebDriverWait(browser, 20).until(expected_conditions.alert_is_present())
        prompt = browser.switch_to.alert
        prompt.send_keys(answer)
        prompt.accept()
    WebDriverWait(browser, 20).until(expected_conditions.alert_is_present())
    browser.switch_to.alert.accept()  # the confirmation


def test_the_page_shows_the_queue_a_growing_preview_and_steers_priority_and_stop(farm_ray, tmp_path, browser,
                                                                                 monkeypatch):
    monkeypatch.setattr(scheduler.lease, "PREVIEW_EVERY_S", 0.3)
    with farm() as (handle, url):
        high = Run(sim_spec(tmp_path, "high", windows=80, seconds=0.3, encode={"path": "driver"}), priority=60,
                   job_id="high")
        high.start()
        wait_until(lambda: state_of(handle, "high") == "RUNNING", what="the high job to run")
        low = Run(sim_spec(tmp_path, "low", windows=3, seconds=0.3, prompt=HTML_PROMPT), priority=20, job_id="low")
        low.start()
        wait_until(lambda: state_of(handle, "low") == "QUEUED", what="the low job to queue")

        browser.get(url)
        # two jobs of different priorities, in the queue's order
        wait_until(lambda: page_rows(browser) == ["high", "low"], what="both jobs on the page, high first")
        # the running job's preview strip grows while it renders
        first = wait_until(lambda: thumbnails(browser, "high"), what="a first thumbnail")
        wait_until(lambda: thumbnails(browser, "high") >= first + 3, what="the strip to grow")
        # a prompt with HTML is text: no element, no script ran
        from selenium.webdriver.common.by import By

        assert browser.find_elements(By.ID, "injected") == []
        assert browser.execute_script("return window.injected === undefined")
        assert prompt_text(browser, "low") == HTML_PROMPT

        # raising the low job's priority in the page moves it first in `farm queue --json`
        click_in_row(browser, "low", "set-priority", "90")

        def low_first() -> dict | None:
            queue = json.loads(CliRunner().invoke(farm_cli, ["queue", "--json"]).output)
            order = [j["id"] for j in queue["jobs"] if j["state"] in ("QUEUED", "RUNNING")]
            return queue if order[:1] == ["low"] else None

        # the page's request is still on its way when the prompt closes: wait for it to land
        queue = wait_until(low_first, timeout=20, what="`farm queue` to show low first")
        assert job_of(queue, "low")["priority"] == 90
        wait_until(lambda: page_rows(browser)[:1] == ["low"], what="the page to show low first")

        # stopping the high job from the page ends it STOPPED; its actor goes back to the pool
        click_in_row(browser, "high", "stop")
        _, error = high.result()
        assert isinstance(error, StoppedByFarm)
        state = ray.get(handle.ui_state.remote())
        assert job_of(state, "high")["state"] == "STOPPED"
        assert all(a["holder"] != "high" for a in state["actors"])
        report, error = low.result()
        assert error is None and report["state"] == "DONE"
        wait_until(lambda: "high" not in page_rows(browser) and "low" not in page_rows(browser),
                   what="both jobs off the running table")
        finished = wait_until(lambda: browser.execute_script(
            "const item = document.querySelector(\"#finished li[data-job='low']\"); return item && item.textContent"),
            what="the low job among the finished ones")
        assert "DONE" in finished and "video" in finished


# -- the routes --------------------------------------------------------------------------------------
def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(farm_ray, tmp_path):
    with farm() as (handle, url):
        job = Run(sim_spec(tmp_path, "job", windows=30, seconds=0.2, encode={"segment_frames": 24}), priority=40,
                  job_id="job")
        job.start()
        wait_until(lambda: state_of(handle, "job") is not None, what="the job to queue")
        # on the segment path each segment task sends its last frame's thumbnail with its stream
        # (segments hold at least encode.segment_frames frames)
        assert wait_until(lambda: job_of(ray.get(handle.ui_state.remote()), "job")["previews"],
                          what="a segment's thumbnail")[0] >= 23
        for headers in ({}, {"X-CSRF-Token": "guessed"}):
            status, answer = http(url + "api/jobs/job/priority", "POST", {"priority": 99}, headers)
            assert status == 403 and "X-CSRF-Token" in answer["error"]
            status, answer = http(url + "api/jobs/job/stop", "POST", {}, headers)
            assert status == 403
        state = ray.get(handle.ui_state.remote())
        assert job_of(state, "job")["priority"] == 40 and not job_of(state, "job")["stop_requested"]
        # with the page's token it goes through, and a bad value names the rule
        _, session = http(url + "api/session")
        token = {"X-CSRF-Token": session["csrf"]}
        status, answer = http(url + "api/jobs/job/priority", "POST", {"priority": 101}, token)
        assert status == 400 and "priority must be an integer from 0 to 100" in answer["error"]
        status, answer = http(url + "api/jobs/nope/stop", "POST", {}, token)
        assert status == 404 and "no job 'nope' in the farm queue" in answer["error"]
        status, answer = http(url + "api/jobs/job/stop", "POST", {}, token)
        assert status == 200 and answer["stop_requested"]
        _, error = job.result()
        assert isinstance(error, StoppedByFarm)
        assert job_of(ray.get(handle.ui_state.remote()), "job")["state"] == "STOPPED"


def test_beyond_loopback_every_page_needs_the_ray_auth_token(farm_ray):
    from scheduler.jobs import resolve_token

    token = resolve_token()
    assert token is not None  # a local ray.init() with token auth writes ~/.ray/auth_token
    with farm(host="0.0.0.0") as (handle, url):
        assert url.startswith("http://0.0.0.0:")
        base = url.replace("0.0.0.0", "127.0.0.1")
        for path in ("", "api/state", "api/session", "api/preview/job/0.jpg"):
            status, _ = http(base + path)
            assert status == 401, path
        status, _ = http(base + "api/jobs/job/stop", "POST", {})
        assert status == 401
        bearer = {"Authorization": f"Bearer {token.value}"}
        status, state = http(base + "api/state", headers=bearer)
        assert status == 200 and "jobs" in state
        # the login form sets a cookie that opens the page
        form = urllib.request.Request(base + "login", data=f"token={token.value}".encode(), method="POST")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(form, timeout=10) as answer:
            assert answer.status == 200 and "raygen-farm" in answer.read().decode()
        with opener.open(base + "api/state", timeout=10) as answer:
            assert "jobs" in json.loads(answer.read())
        status, page = http(base + "login", "POST", None, {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 401 and "not this cluster's Ray auth token" in page


def test_a_jobs_preview_memory_stays_under_its_bound_on_a_2000_frame_job(farm_ray, tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler.lease, "PREVIEW_EVERY_S", 0.0)  # every frame: the bound must hold it
    with farm() as (handle, _):
        spec = sim_spec(tmp_path, "long", windows=167, seconds=0.0, encode={"path": "driver"})
        assert spec.frames == 2008
        run = Run(spec, job_id="long")
        run.start()
        report, error = run.result(timeout=300)
        assert error is None and report["output_frames"] == 2008
        assert job_of(ray.get(handle.ui_state.remote()), "long")["previews"] == []  # ended: its thumbnails went
        peaks = ray.get(handle.preview_peaks.remote())
        assert 0.75 * PREVIEW_BYTES < peaks["long"] <= PREVIEW_BYTES


# -- the CLI's fast path -------------------------------------------------------------------------------
def test_farm_queue_answers_through_the_ui_in_under_a_second(farm_ray, tmp_path):
    """`farm queue --address http://HOST:8265` as a user runs it: a new process, given the
    jobs API address; the UI answers on FARM_UI_PORT of that host."""
    import os
    import subprocess
    import sys

    cli = str(Path(sys.executable).with_name("farm"))
    with farm() as (handle, url):
        env = os.environ | {"FARM_UI_PORT": url.rstrip("/").rsplit(":", 1)[1]}
        walls, answers = [], []
        for _ in range(5):
            t0 = time.monotonic()
            done = subprocess.run([cli, "queue", "--json", "--address", "http://127.0.0.1:8265"], env=env,
                                  capture_output=True, text=True, timeout=60)
            walls.append(time.monotonic() - t0)
            assert done.returncode == 0, done.stderr
            data = json.loads(done.stdout)
            assert data["manager"]["ui"] == url  # the UI's answer (the jobs API has no dashboard here)
            answers.append(data["answered_in_seconds"])
        assert statistics.median(walls) < 1.0, walls
        assert statistics.median(answers) < 0.1, answers
        # nothing there: through the jobs API as before (no dashboard runs here: its error says so)
        done = subprocess.run([cli, "queue", "--json", "--address", "http://127.0.0.1:8265"],
                              env=env | {"FARM_UI_PORT": "9"}, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "127.0.0.1:8265" in done.stderr + done.stdout
