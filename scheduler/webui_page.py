"""The farm UI's page, script and style (scheduler/webui.py serves them). The script
builds every element with `textContent`: nothing a job says (its prompt, its output) is
ever parsed as HTML."""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="csrf" content="{csrf}">
<title>raygen-farm</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head><body>
<header><h1>raygen-farm</h1><span id="status">connecting…</span></header>
<section><h2>Jobs</h2>
<table id="jobs"><thead><tr><th>job</th><th>priority</th><th>state</th><th>progress</th><th>ETA</th>
<th>actors</th><th>pipelines</th><th>age</th><th>submitted by</th><th>prompt</th><th></th></tr></thead>
<tbody></tbody></table></section>
<section><h2>Live previews</h2><div id="previews"></div></section>
<section><h2>Actors</h2>
<table id="actors"><thead><tr><th>actor</th><th>node</th><th>GPU</th><th>pipelines held</th><th>working for</th></tr></thead>
<tbody></tbody></table></section>
<section><h2>Finished</h2><ul id="finished"></ul></section>
<footer id="manager"></footer>
</body></html>
"""

LOGIN = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>raygen-farm: log in</title>
<link rel="stylesheet" href="/app.css"></head><body>
<header><h1>raygen-farm</h1></header>
<section><p>This farm UI is reachable beyond its own machine, so it asks for the cluster's
Ray auth token (the file <code>~/.ray/auth_token</code> on the head, or
<code>RAY_AUTH_TOKEN</code>).</p>
<form method="post" action="/login"><input type="password" name="token" id="token" autocomplete="off">
<button type="submit">Log in</button></form><p class="error">{error}</p></section>
</body></html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 2em 2em; color: #1d2430; background: #fafbfc; }
header { display: flex; align-items: baseline; gap: 1em; border-bottom: 1px solid #dde2e8; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceff3; vertical-align: top; }
th { font-weight: 600; color: #556; }
td.prompt { max-width: 22em; overflow-wrap: anywhere; color: #445; }
td.nowrap, th { white-space: nowrap; }
progress { width: 8em; }
.strip { display: flex; gap: 4px; overflow-x: auto; padding: 4px 0 12px; }
.strip img { height: 72px; border: 1px solid #ccd; }
.preview h3 { font-size: 14px; margin: 8px 0 0; }
.state-RUNNING { color: #1d6b2f; } .state-QUEUED { color: #8a6d00; } .state-STOPPED, .state-FAILED, .state-LOST { color: #a0282a; }
button { margin-right: 4px; } .error { color: #a0282a; } #status { color: #667; }
footer { margin-top: 2em; color: #778; font-size: 12px; }
"""

SCRIPT = r"""
"use strict";
const csrf = document.querySelector('meta[name="csrf"]').content;

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function age(seconds) {
  if (seconds >= 3600) return (seconds / 3600).toFixed(1) + " h";
  if (seconds >= 60) return Math.round(seconds / 60) + " min";
  return Math.round(seconds) + " s";
}

async function post(path, body) {
  const answer = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                                    body: JSON.stringify(body || {})});
  const data = await answer.json();
  if (!answer.ok) alert(data.error || answer.statusText);
  refresh();
}

function jobRow(job) {
  const tr = el("tr", null, {"data-job": job.id});
  tr.append(el("td", job.id), el("td", job.priority, {"class": "priority"}),
            el("td", job.state, {"class": "state state-" + job.state}));
  const cell = el("td");
  const bar = el("progress", null, {max: Math.max(1, job.progress.total), value: job.progress.done});
  cell.append(bar, el("span", " " + job.progress.done + "/" + job.progress.total + " " + job.progress.unit));
  tr.append(cell, el("td", job.eta_seconds == null ? "-" : age(job.eta_seconds), {"class": "nowrap"}),
            el("td", job.actors.length),
            el("td", !job.actors.length ? "-" : job.loading ? "loading " + job.loading : "warm"),
            el("td", age(job.age_seconds), {"class": "nowrap"}), el("td", job.submitter || "-"),
            el("td", job.prompt || "-", {"class": "prompt"}));
  const actions = el("td");
  if (job.active) {
    const set = el("button", "priority…", {"class": "set-priority"});
    set.onclick = () => {
      const given = prompt("New priority for " + job.id + " (0-100, higher first)", job.priority);
      if (given === null) return;
      const value = Number(given);
      if (confirm("Set the priority of " + job.id + " to " + value + "?"))
        post("/api/jobs/" + encodeURIComponent(job.id) + "/priority", {priority: value});
    };
    const stop = el("button", job.stop_requested ? "stopping…" : "stop", {"class": "stop"});
    stop.onclick = () => {
      if (confirm("Stop " + job.id + "? Its actors go back to the pool."))
        post("/api/jobs/" + encodeURIComponent(job.id) + "/stop");
    };
    actions.append(set, stop);
  }
  tr.append(actions);
  return tr;
}

function previews(jobs) {
  const box = document.getElementById("previews");
  box.replaceChildren();
  for (const job of jobs.filter(j => j.active)) {
    const part = el("div", null, {"class": "preview", "data-job": job.id});
    part.append(el("h3", job.id + (job.previews.length ? "" : job.preview_note ? ": " + job.preview_note : ": no frame yet")));
    const strip = el("div", null, {"class": "strip"});
    for (const n of job.previews)
      strip.append(el("img", null, {src: "/api/preview/" + encodeURIComponent(job.id) + "/" + n + ".jpg",
                                    alt: "frame " + n, title: "frame " + n}));
    part.append(strip);
    box.append(part);
  }
}

function finished(jobs) {
  const list = document.getElementById("finished");
  list.replaceChildren();
  for (const job of jobs.filter(j => !j.active)) {
    const item = el("li", null, {"data-job": job.id});
    item.append(el("span", job.id + " " + job.state + " (" + (job.label || "") + ") "));
    if (job.video) item.append(el("a", "video", {href: "/api/output/" + encodeURIComponent(job.id) + "/video"}), el("span", " "));
    if (job.report) item.append(el("a", "report", {href: "/api/output/" + encodeURIComponent(job.id) + "/report"}));
    list.append(item);
  }
}

function actors(state) {
  const body = document.querySelector("#actors tbody");
  body.replaceChildren();
  for (const a of state.actors) {
    const tr = el("tr", null, {"data-actor": a.name});
    tr.append(el("td", a.name), el("td", a.node.slice(0, 12)), el("td", state.gpus_per_actor ? state.gpus_per_actor : "-"),
              el("td", a.model_names.join(", ") || "-"),
              el("td", a.busy ? a.holder + (a.moving ? " (moving)" : "") : "idle"));
    body.append(tr);
  }
}

async function refresh() {
  try {
    const answer = await fetch("/api/state", {cache: "no-store"});
    if (!answer.ok) throw new Error(answer.status + " " + answer.statusText);
    const state = await answer.json();
    const body = document.querySelector("#jobs tbody");
    body.replaceChildren(...state.jobs.filter(j => j.active).map(jobRow));
    previews(state.jobs);
    actors(state);
    finished(state.jobs);
    document.getElementById("manager").textContent = "farm manager up " + age(state.manager.up_seconds) +
      ", " + state.manager.restarts + " restarts, " + state.manager.decisions + " decisions";
    document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("status").textContent = "cannot reach the farm manager: " + err.message;
  }
}

refresh();
setInterval(refresh, 1000);
"""
