"""The HTML report: the figures a person looks at are there, right, and safely escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

from farm.metrics import flicker_report, frame_diffs
from farm.plan import split
from farm.report_html import html_report_path, render_html, write_html_report
from tests.conftest import base_spec

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick

NODE_A = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c"
NODE_B = "ffeeddccbbaa99887766554433221100ffeeddccbbaa998877665544"
ACT_1, ACT_2, ACT_3 = "11aa22bb33cc44dd55ee66ff01000000", "77aa88bb99cc00dd11ee22ff01000000", "33cc44dd55ee66ff77aa88bb01000000"
PROMPT = 'a fox <script>alert("x")</script> & "snow"'


def _clip(n: int, jump_at: int) -> np.ndarray:
    """A drifting gradient with one brightness step into frame `jump_at`."""
    x = np.arange(32, dtype=np.float64)
    frames = [np.clip(np.add.outer(x, x) * 3 + 2 * i + (30 if i >= jump_at else 0), 0, 255) for i in range(n)]
    return np.repeat(np.stack(frames)[..., None], 3, axis=-1).astype(np.uint8)


@pytest.fixture
def report(tmp_path):
    """A report as the driver writes it: 2 nodes, 3 actors, one cached window, one retry."""
    windows = split(64, 16, 4)
    metrics = flicker_report(frame_diffs(_clip(64, jump_at=windows[3].start + 2)), windows,
                             disagreement={0: 1.25, 1: 7.5, 2: 0.5, 3: 2.0})
    placement = {1: (NODE_A, ACT_1), 2: (NODE_A, ACT_2), 3: (NODE_B, ACT_3), 4: (NODE_A, ACT_1)}
    records = []
    for w in windows:
        if w.index == 0:
            records.append({"index": 0, "start": w.start, "end": w.end, "state": "CACHED", "cached": True,
                            "attempts": 0, "node": None, "actor": None, "device": None, "seconds": 0.0,
                            "started_at": None, "finished_at": 0.05, "key": "k0", "failures": []})
            continue
        node, actor = placement[w.index]
        t0 = 1.0 + 2.5 * (w.index - 1)
        rec = {"index": w.index, "start": w.start, "end": w.end, "state": "DONE", "cached": False,
               "attempts": 1, "node": node, "actor": actor, "device": "cpu", "seconds": 2.0,
               "started_at": t0, "finished_at": t0 + 2.0, "key": f"k{w.index}", "failures": []}
        if w.index == 3:  # first attempt lost with node B, then rendered on actor 2
            rec |= {"attempts": 2, "node": NODE_A, "actor": ACT_2, "started_at": 7.0, "finished_at": 9.0,
                    "failures": [{"actor": ACT_3, "node": NODE_B, "error": "node died <OOM>", "lost": True,
                                  "started_at": 5.5, "finished_at": 6.5}]}
        records.append(rec)
    spec = base_spec(tmp_path, prompt=PROMPT, frames=64)
    return {
        "output": spec["output"], "state": "DONE", "frames": 64, "output_frames": 64, "output_fps": 8,
        "width": 64, "height": 64, "blend": "linear", "windows": records,
        "windows_rendered": 4, "windows_cached": 1,
        "stages": {"plan": 0.002, "startup": 3.1, "render": 9.4, "blend": 0.08, "encode": 0.3, "store": 0.05,
                   "total": 12.9},
        "blocklist": [{"kind": "node", "id": NODE_B, "failures": 1, "last_error": "node died <OOM>"}],
        "actors": [{"actor": a, "node": n, "host": h, "device": "cpu"}
                   for a, n, h in ((ACT_1, NODE_A, "gpu-1"), (ACT_2, NODE_A, "gpu-1"), (ACT_3, NODE_B, "gpu-2"))],
        "spec": spec,
        "versions": {"python": "3.11.7", "ray": "2.60.0", "torch": "2.13.0", "diffusers": "0.42.1"},
        **metrics,
    }


class Page(HTMLParser):
    """Elements with their attributes, the enclosing <svg> class, and the text inside each."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict, str | None]] = []
        self.texts: dict[str | None, list[str]] = {}
        self.open: list[tuple[str, dict]] = []
        self.svg: str | None = None
        self.labels: list[tuple[str, dict]] = []  # (text, attributes of its <text> element)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            self.svg = attrs.get("class")
        self.elements.append((tag, attrs, self.svg))
        self.open.append((tag, attrs))

    def handle_endtag(self, tag):
        while self.open and self.open.pop()[0] != tag:
            pass
        if tag == "svg":
            self.svg = None

    def handle_data(self, data):
        key = self.svg or (self.open[-1][0] if self.open else None)
        self.texts.setdefault(key, []).append(data)
        if self.open and self.open[-1][0] == "text":
            self.labels.append((data, self.open[-1][1]))
        classes = [a.get("class") for _, a in self.open if a.get("class")]
        for c in classes:
            self.texts.setdefault("." + c, []).append(data)

    def find(self, tag: str, svg: str | None = None, cls: str | None = None) -> list[dict]:
        return [a for t, a, s in self.elements
                if t == tag and (svg is None or s == svg) and (cls is None or cls in (a.get("class") or "").split())]

    def text(self, key) -> str:
        return " ".join(self.texts.get(key, []))


def test_gantt_has_one_bar_per_attempt_in_the_right_actor_row(report):
    page = Page(render_html(report))
    bars = page.find("rect", "gantt", "bar")
    attempts = sum(1 + len(w["failures"]) for w in report["windows"])
    assert len(bars) == attempts == 6
    assert sorted(int(b["data-window"]) for b in bars) == [0, 1, 2, 3, 3, 4]
    labels = page.text("gantt")
    for ident in (ACT_1, ACT_2, ACT_3, NODE_A, NODE_B):
        assert ident[:8] in labels
    assert "store (cached)" in labels and "gpu-2" in labels

    # Each bar sits in its actor's row: the row label's baseline is 11 px below the bar top.
    row_y = {data: float(attrs["y"]) for data, attrs in page.labels}
    by_kind = {b["class"].split()[1]: b for b in bars if b["data-window"] == "3"}
    assert float(by_kind["failed"]["y"]) + 11 == row_y[f"actor {ACT_3[:8]}"]
    assert float(by_kind["retried"]["y"]) + 11 == row_y[f"actor {ACT_2[:8]}"]
    assert [b["class"] for b in bars if b["data-window"] == "0"] == ["bar cached"]

    # Time runs left to right: window 4 started after window 1 on the same actor.
    x = {b["data-window"]: float(b["x"]) for b in bars if "ok" in b["class"]}
    assert x["4"] > x["1"]


def test_stages_are_all_named(report):
    page = Page(render_html(report))
    assert [a["data-stage"] for a in page.find("rect", "stages")] == list(report["stages"])
    assert "12.9 s" in page.text("stages") and "0.002 s" in page.text("stages")


def test_flicker_curve_with_seams_at_their_frames(report):
    page = Page(render_html(report))
    (curve,) = page.find("polyline", "flicker", "curve")
    points = [tuple(map(float, p.split(","))) for p in curve["points"].split()]
    assert len(points) == len(report["flicker"]["curve"])
    seams = page.find("line", "flicker", "seam")
    assert [int(s["data-frame"]) for s in seams] != []
    assert sorted(int(s["data-frame"]) for s in seams) == [s["frame"] for s in report["seams"]]
    for s in seams:  # point k is the change into frame k + 1
        assert float(s["x1"]) == points[int(s["data-frame"]) - 1][0]
    worst = max(report["seams"], key=lambda s: s["jump_ratio"])
    assert worst["jump_ratio"] > 2  # the fixture's jump
    assert f"×{worst['jump_ratio']:.2f}" in page.text("flicker")


def test_spec_and_versions_are_shown_and_escaped(report):
    html = render_html(report)
    page = Page(html)
    assert not page.find("script")
    assert "<script>" not in html
    assert PROMPT in page.text("pre")
    assert "window:" in page.text("pre") and "overlap: 4" in page.text("pre")
    for pkg in ("ray", "torch", "diffusers"):
        assert pkg in page.text("th") and report["versions"][pkg] in page.text("td")
    assert "node died <OOM>" in page.text(".failures")  # the failed attempt, escaped and read back intact
    assert NODE_B in page.text("td")  # the blocklist names the whole node


def test_every_figure_is_well_formed_svg(report):
    html = render_html(report)
    figures = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(figures) == 3
    for svg in figures:
        ET.fromstring(svg)


def test_failed_job_shows_a_red_banner(report):
    report |= {"state": "FAILED", "failed": {"window": 3, "attempts": 4, "error": "pipeline raised <ValueError>"}}
    page = Page(render_html(report))
    assert page.find("div", cls="banner")
    assert "window 3" in page.text(".banner") and "pipeline raised <ValueError>" in page.text(".banner")
    assert not Page(render_html(report | {"state": "DONE", "failed": None})).find("div", cls="banner")


def test_sparse_reports_still_render(report, tmp_path):
    cached_only = {"output": str(tmp_path / "c.mp4"), "state": "DONE",
                   "windows": [w | {"cached": True, "failures": []} for w in report["windows"]]}
    page = Page(render_html(cached_only))
    assert {b["class"] for b in page.find("rect", "gantt", "bar")} == {"bar cached"}
    assert "No flicker curve" in page.text("p")
    bare = Page(render_html({"output": "x.mp4"}))
    assert "No window attempt" in bare.text("p") and "No spec" in bare.text("p")


def test_written_atomically_next_to_the_video(report, tmp_path):
    path = html_report_path(report["output"])
    assert path.name == "out.mp4.report.html"
    path.write_text("old")
    assert write_html_report(report) == path
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4.report.html"]
    other = write_html_report(report, tmp_path / "elsewhere.html")
    assert other.read_text() == path.read_text()


def test_each_seam_says_how_much_its_two_windows_disagreed(report):
    assert [s["disagreement"] for s in report["seams"]] == [1.25, 7.5, 0.5, 2.0]
    page = Page(render_html(report))
    assert "windows disagree" in page.text("th") and "7.5" in page.text("td")
    assert "windows disagree in overlaps, max (levels)" in page.text(".card")


def test_a_co_denoised_job_shows_its_seams_fused_and_its_shards(report):
    windows = split(64, 16, 4)
    report |= flicker_report(report["flicker"]["curve"], windows, fused=True)
    report |= {"reconcile": "latent", "latent": {
        "actors": 2, "actors_asked": 3, "denoise_seconds": 4.2, "wait_share": 0.08, "resumed_from_step": 10,
        "recoveries": [{"error": "actor died", "actors_left": 2, "from_step": 10, "frames_done": 0}],
        "shards": [{"index": 0, "windows": [0, 2], "frames": [0, 40]}, {"index": 1, "windows": [3, 4], "frames": [36, 64]}]}}
    page = render_html(report)
    text = re.sub(r"<[^>]+>", " ", page)
    assert "none: fused" in text and "linear, latent" in text
    assert "Denoised together on 2 actors (3 asked)" in text and "resumed from step 10" in text
    assert "windows disagree 0" not in text
    cells = re.findall(r"<td class=n>(fused|[0-9.]+)</td></tr>", page)
    assert cells.count("fused") == len(windows) - 1
    report["latent"] |= {"actors": 1, "actors_asked": 1, "rendered_again": "co-denoised: every window is rendered again; <edit>"}
    assert "every window is rendered again; &lt;edit&gt;" in render_html(report)
    assert "Denoised together on 1 actor (1 asked)" in re.sub(r"<[^>]+>", " ", render_html(report))
    report["latent"] |= {"from_store": True}  # the same job again
    assert "final latents were read from the window store: nothing was denoised; decoded on 1 actor" in (
        re.sub(r"<[^>]+>", " ", render_html(report)).replace("&#x27;", "'"))


def test_the_models_table_says_where_each_actor_s_models_came_from_and_is_absent_when_all_were_local(report):
    assert "<h2>Models</h2>" not in render_html(report)  # local models: nothing fetched, no table
    fetched = {ACT_1: {"from": "object storage", "fetch_seconds": 41.3, "fetch_bytes": 2_132_000_000,
                       "load_seconds": 12.5},
               ACT_2: {"from": "node cache", "fetch_seconds": 0.0, "fetch_bytes": 0, "load_seconds": 11.7}}
    staged = report | {"actors": [a | fetched.get(a["actor"], {"from": "local"}) for a in report["actors"]]}
    html = render_html(staged)
    table = html[html.index("<h2>Models</h2>"):]
    table = table[: table.index("</table>")]
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in table.split("<tr>")[2:]]
    assert rows == [[NODE_A[:12], ACT_1[:12], "object storage", "41.3", "2132", "12.5"],
                    [NODE_A[:12], ACT_2[:12], "node cache", "0", "0", "11.7"]], rows  # not the local actor
