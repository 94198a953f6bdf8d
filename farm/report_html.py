"""`OUT.mp4.report.html`: the job report as one self-contained page a person can read.

The page is plain HTML with hand-made inline SVG and JPEG thumbnails inlined as data URIs:
no script, no network, and no external file but the video itself, linked by its name
next to the page. It shows a Gantt timeline of the window attempts per actor (grouped by node),
the stage timings, the flicker curve with the window seams and their jump ratios, the
spec and the versions. Every value from the report is HTML-escaped; missing optional
keys leave their section out or say what is missing.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

import yaml

from farm.util import write_text_atomic

WIDTH = 920  # px, every figure
LABEL = 190  # px, left column of the Gantt
STAGE_ORDER = ("plan", "startup", "render", "blend", "encode", "store", "total")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;margin:24px auto;max-width:960px;padding:0 12px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 6px;border-bottom:1px solid #dde1e8;padding-bottom:3px}
.sub{color:#5b6475;margin:0 0 14px}.banner{background:#fde8e8;border:1px solid #d93b3b;color:#8c1515;padding:10px 14px;border-radius:4px;margin:10px 0}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #dde1e8;border-radius:4px;padding:6px 10px;min-width:120px}
.card b{display:block;font-size:17px}.card span{color:#5b6475;font-size:12px}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e6e9ef;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
td.n,th.n{text-align:right}pre{background:#f6f7f9;border:1px solid #e6e9ef;padding:10px;overflow:auto;font-size:12px}
.note{color:#5b6475;font-size:12px;margin:4px 0}svg{display:block;max-width:100%;height:auto}
svg text{font-family:system-ui,sans-serif;font-size:11px;fill:#1d2330}
.video{display:block;max-width:100%;width:360px;margin:6px 0;background:#000}
.strip{margin:10px 0 16px}.strip table td,.strip table th{border:0;padding:1px 2px;font-size:11px;color:#5b6475}
.strip img{display:block;width:72px;height:auto;image-rendering:pixelated}h3{font-size:14px;margin:18px 0 4px}
.storyboard{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}.shot{margin:0;text-align:center}.shot img{display:block;height:64px;image-rendering:pixelated;border:1px solid #dde1e8}.shot figcaption{font-size:12px;color:#5b6475}
"""

COLOURS = {"ok": "#4c78a8", "retried": "#f58518", "failed": "#d93b3b", "cached": "#8a8f99"}


def html_report_path(output: str | Path) -> Path:
    """`OUT.mp4.report.html`, next to `OUT.mp4.report.json`."""
    return Path(str(output) + ".report.html")


def write_html_report(report: dict, path: str | Path | None = None, filmstrips: list[dict] | None = None,
                      storyboard: list[dict] | None = None) -> Path:
    """Write the page for `report` to `path` (default: next to the video), atomically.
    `filmstrips`: the seams up close (farm.filmstrip, `SeamStrip.to_html_data()`);
    `storyboard`: a film's shots, one thumbnail each (`Storyboard.to_html_data()`)."""
    path = Path(path) if path is not None else html_report_path(report["output"])
    return write_text_atomic(path, render_html(report, filmstrips, storyboard))


def render_html(report: dict, filmstrips: list[dict] | None = None, storyboard: list[dict] | None = None) -> str:
    """The whole page as a string."""
    title = f"raygen-farm report: {report.get('output', '?')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _banner(report),
        _summary(report),
        _shots(report.get("shots"), storyboard or []),
        "<h2>Windows per actor</h2>",
        gantt_svg(report),
        _failures(report.get("windows") or []),
        "<h2>Stages</h2>",
        stages_svg(report.get("stages") or {}),
        "<h2>Flicker and seams</h2>",
        _video(report),
        flicker_svg(report),
        _seam_table(report.get("seams") or []),
        _filmstrips(filmstrips or [], report.get("seams") or []),
        _blocklist(report.get("blocklist") or []),
        _key_values("Interpolation", report.get("interpolate")),
        _encoding(report.get("encode")),
        _models(report.get("actors") or []),
        _farm(report.get("farm"), report.get("actors") or []),
        "<h2>Spec</h2>",
        _spec(report.get("spec")),
        _key_values("Versions", report.get("versions")),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


# --- the figures --------------------------------------------------------------------------


def gantt_svg(report: dict) -> str:
    """One row per actor, grouped under its node; one bar per window attempt.

    Bars run from `started_at` to `finished_at` (seconds since the render started; a
    missing start is taken as `finished_at - seconds`). Retried windows are orange, failed
    attempts red, and windows read from the store sit hatched in their own row.
    """
    windows = report.get("windows") or []
    bars = _gantt_bars(windows)
    latent = report.get("latent")
    if latent:
        rows = "".join(f"<tr><td>{_e(sh['index'])}</td><td>{_e(sh['windows'][0])}–{_e(sh['windows'][1])}</td>"
                       f"<td>{_e(sh['frames'][0])}–{_e(sh['frames'][1] - 1)}</td></tr>" for sh in latent["shards"])
        if latent.get("local"):
            local = latent["local"]
            return (f'<p class="note">A local re-render on {_e(_count(local["actors"], "actor"))}: windows '
                    f'{_e(local["windows"][0])}–{_e(local["windows"][1])} denoised again in '
                    f'{_e(_fmt(local["denoise_seconds"]))} s; the whole job then decoded on '
                    f'{_e(_count(latent["actors"], "actor"))}.</p><p class="note">{_e(latent["rendered_again"])}</p>'
                    f"<table><tr><th>shard</th><th>windows</th><th>frames</th></tr>{rows}</table>")
        if latent.get("from_store"):
            return (f'<p class="note">The job\'s final latents were read from the window store: nothing was '
                    f'denoised; decoded on {_e(_count(latent["actors"], "actor"))}.</p>'
                    f"<table><tr><th>shard</th><th>windows</th><th>frames</th></tr>{rows}</table>")
        return (f'<p class="note">Denoised together on {_e(_count(latent["actors"], "actor"))} '
                f'({_e(latent.get("actors_asked", latent["actors"]))} asked), one shard each, in '
                f'{_e(_fmt(latent.get("denoise_seconds")))} s; shards waited {_e(_fmt(latent.get("wait_share")))} '
                f'of the time (barrier and exchange); resumed from step {_e(latent.get("resumed_from_step"))}; '
                f'{_e(len(latent.get("recoveries", [])))} recoveries.</p>'
                + (f'<p class="note">{_e(latent["rendered_again"])}</p>' if latent.get("rendered_again") else "")
                + f"<table><tr><th>shard</th><th>windows</th><th>frames</th></tr>{rows}</table>")
    if not bars:
        return '<p class="note">No window attempt was recorded.</p>'

    rows = _gantt_rows(report.get("actors") or [], [b[0] for b in bars])
    hosts = {a.get("node"): a.get("host") for a in report.get("actors") or []}
    t_end = max([b[2] for b in bars] + [(report.get("stages") or {}).get("render") or 0.0])
    plot = WIDTH - LABEL - 20
    x = _scale(0.0, t_end or 1.0, LABEL, LABEL + plot)
    row_h, top = 22, 34
    y_of, lines, node_seen = {}, [], None
    y = top
    for node, actor in rows:
        if node != node_seen and node != "store":
            host = f" ({hosts[node]})" if hosts.get(node) else ""
            lines.append(_text(6, y + 14, f"node {_short(node)}{host}", weight="bold", title=str(node)))
            y += row_h
            node_seen = node
        y_of[(node, actor)] = y
        label = "store (cached)" if node == "store" else f"actor {_short(actor)}"
        lines.append(f'<rect class="row" x="{LABEL}" y="{y}" width="{plot}" height="{row_h}" fill="#f3f5f8"/>')
        lines.append(_text(18, y + 15, label, title=str(actor) if actor else None))
        y += row_h + 2
    height = y + 30
    out = [_svg_open(height, "gantt", "Window attempts per actor over time"), _hatches(), _legend()]
    out += _x_axis(x, 0.0, t_end or 1.0, top - 6, y, "s since render start", height - 8)
    out += lines
    for key, t0, t1, kind, w, why in bars:
        x0, x1 = x(t0), max(x(t1), x(t0) + 3)
        tip = (f"window {w.get('index')} · frames {w.get('start')}–{w.get('end')} · "
               f"{t0:.2f}–{t1:.2f} s · {why}")
        fill = f"url(#hatch-{kind})" if kind in ("failed", "cached") else COLOURS[kind]
        ry = y_of[key] + 4
        stroke = COLOURS[kind] if kind in ("failed", "cached") else "#fff"
        out.append(f'<rect class="bar {kind}" data-window="{_e(w.get("index"))}" x="{x0:.1f}" y="{ry}" '
                   f'width="{x1 - x0:.1f}" height="14" fill="{fill}" stroke="{stroke}">'
                   f"<title>{_e(tip)}</title></rect>")
        if x1 - x0 >= 7 * len(str(w.get("index"))) + 6 and kind != "cached":
            colour = "#fff" if kind in ("ok", "retried") else "#8c1515"
            out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{ry + 11}" text-anchor="middle" '
                       f'style="fill:{colour}">{_e(w.get("index"))}</text>')
    cached = [w.get("index") for w in windows if w.get("cached")]
    if cached:
        out.append(_text(LABEL + plot - 4, y_of[("store", None)] + 15, f"cached windows: {_ranges(cached)}",
                         anchor="end"))
    out.append("</svg>")
    return "\n".join(out)


def stages_svg(stages: dict) -> str:
    """Horizontal bars of the stage times in seconds."""
    items = [(k, stages[k]) for k in STAGE_ORDER if isinstance(stages.get(k), (int, float))]
    items += [(k, v) for k, v in stages.items() if k not in STAGE_ORDER and isinstance(v, (int, float))]
    if not items:
        return '<p class="note">No stage timings in the report.</p>'
    top, row_h = 8, 22
    height = top + row_h * len(items) + 4
    x = _scale(0.0, max(v for _, v in items) or 1.0, 90, WIDTH - 90)
    out = [_svg_open(height, "stages", "Stage timings")]
    for i, (name, secs) in enumerate(items):
        y = top + i * row_h
        fill = "#5b6475" if name == "total" else COLOURS["ok"]
        out.append(_text(84, y + 14, name, anchor="end"))
        out.append(f'<rect class="stage" data-stage="{_e(name)}" x="90" y="{y + 3}" width="{max(x(secs) - 90, 1):.1f}" '
                   f'height="15" fill="{fill}"><title>{_e(name)}: {secs:.3f} s</title></rect>')
        out.append(_text(x(secs) + 6, y + 14, f"{_fmt(float(secs))} s"))
    out.append("</svg>")
    note = ('<p class="note">Blending, encoding and the store run inside the render loop: their times '
            "are the driver's busy time and overlap <i>render</i>.</p>")
    return "\n".join(out) + note


def flicker_svg(report: dict) -> str:
    """The flicker curve (change into each frame) with a marker and jump ratio per seam."""
    flicker = report.get("flicker") or {}
    curve = flicker.get("curve") or []
    if not curve:
        return '<p class="note">No flicker curve in the report (fewer than two frames, or not measured).</p>'
    seams = report.get("seams") or []
    n = len(curve)
    height, top, bottom = 280, 30, 246
    ymax = _nice_ceiling(max(curve) * 1.1) or 1.0
    x = _scale(0.0, float(n), 50, WIDTH - 16)
    y = _scale(0.0, ymax, bottom, top)
    out = [_svg_open(height, "flicker", "Flicker curve with window seams")]
    for t in _ticks(0.0, ymax):
        out.append(f'<line x1="50" x2="{WIDTH - 16}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e6e9ef"/>')
        out.append(_text(44, y(t) + 4, _fmt(t), anchor="end"))
    out += _x_axis(x, 0.0, float(n), top, bottom, "frame", height - 6)
    out.append(_text(4, 12, "mean |Δ| from the previous frame"))
    dense = (WIDTH - 66) / max(len(seams), 1) < 12  # too many seams for a line and a band each
    for s in [] if dense else seams:
        lo, hi = (s.get("handover") or [s["frame"], s["frame"]])[:2]
        out.append(f'<rect class="handover" x="{x(lo):.1f}" y="{top}" width="{max(x(hi) - x(lo), 1):.1f}" '
                   f'height="{bottom - top}" fill="#fbe9d0" opacity="0.6"/>')
    latent = report.get("latent") or {}
    regions = [r["local"]["video_frames"] for r in [latent, *(latent.get("runs") or [])] if r.get("local")]
    for lo, hi in regions:  # a local re-render: the frames denoised again
        out.append(f'<rect class="rerendered" x="{x(lo):.1f}" y="{top}" width="{max(x(hi) - x(lo), 1):.1f}" '
                   f'height="{bottom - top}" fill="#d7e7fb" opacity="0.7"><title>re-rendered: frames {_e(lo)}–'
                   f'{_e(hi - 1)}</title></rect>')
    cuts = flicker.get("cuts") or []
    for c in cuts:  # a film's cuts: a new shot, not a seam
        out.append(f'<line class="cut" data-frame="{_e(c)}" x1="{x(c):.1f}" x2="{x(c):.1f}" y1="{top}" '
                   f'y2="{bottom}" stroke="#444" stroke-width="2"><title>cut at frame {_e(c)}</title></line>')
    points = " ".join(f"{x(i + 1):.1f},{y(v):.1f}" for i, v in enumerate(curve))
    out.append(f'<polyline class="curve" fill="none" stroke="{COLOURS["ok"]}" stroke-width="1.5" points="{points}"/>')
    labelled: list[float] = []
    for s in sorted(seams, key=lambda s: -(s.get("jump_ratio") or 0)):
        sx, ratio = x(s["frame"]), s.get("jump_ratio")
        colour = _ratio_colour(ratio)
        tip = f"seam at frame {s['frame']}: jump ratio {_ratio(ratio)}"
        label = all(abs(sx - other) >= 40 for other in labelled)
        y0 = bottom - 8 if dense else top  # dense: a tick on the axis for every seam
        out.append(f'<line class="seam" data-frame="{_e(s["frame"])}" x1="{sx:.1f}" x2="{sx:.1f}" y1="{y0}" '
                   f'y2="{bottom}" stroke="{colour}" stroke-dasharray="{"none" if dense else "4 3"}">'
                   f"<title>{_e(tip)}</title></line>")
        if label:
            labelled.append(sx)
            if dense:  # the labelled seams get their full line
                out.append(f'<line x1="{sx:.1f}" x2="{sx:.1f}" y1="{top}" y2="{bottom}" stroke="{colour}" '
                           'stroke-dasharray="4 3" opacity="0.7"/>')
            out.append(f'<text class="ratio" x="{sx:.1f}" y="{top - 6}" text-anchor="middle" '
                       f'style="fill:{colour}">×{_e(_ratio(ratio))}</text>')
    out.append("</svg>")
    score = flicker.get("score")
    marks = ("Ticks on the axis: the first frame of each window after the first; dashed: the seams "
             "labelled" if dense else "Dashed lines: the first frame of each window after the first; "
             "shaded: the frames its blend hands over")
    if cuts:
        marks += "; solid dark lines: cuts between shots (no seam; left out of the score)"
    if regions:
        marks += "; blue band: the frames a local re-render denoised again (every other frame is the last render's)"
    note = (f'<p class="note">Mean absolute change from the previous frame, 0–255 (VBench temporal '
            f"flickering; score {_e(_fmt(score, 4))}). {marks}; ×: the seam's jump ratio "
            "(largest change in the handover ÷ median change inside the windows; 1 is invisible).</p>")
    return "\n".join(out) + note


# --- the tables and text ------------------------------------------------------------------


def _banner(report: dict) -> str:
    if report.get("state") != "FAILED" and not report.get("failed"):
        return ""
    failed = report.get("failed") or {}
    where = f" at window {failed['window']}" if "window" in failed else ""
    error = f": {failed['error']}" if failed.get("error") else ""
    return f'<div class="banner"><b>The job FAILED{_e(where)}</b>{_e(error)}</div>'


def _summary(report: dict) -> str:
    windows = report.get("windows") or []
    stages = report.get("stages") or {}
    cached = sum(1 for w in windows if w.get("cached"))
    rendered = sum(1 for w in windows if not w.get("cached") and w.get("state", "DONE") == "DONE")
    retried = sum(1 for w in windows if (w.get("attempts") or 0) > 1)
    cards = [
        ("state", report.get("state", "?")),
        ("frames → output", f"{report.get('frames', '?')} → {report.get('output_frames', '?')}"),
        ("size, fps", f"{report.get('width', '?')}×{report.get('height', '?')} @ {_fmt(report.get('output_fps'))}"),
        ("blend", f"{report.get('blend', '?')}, {report.get('reconcile', 'crossfade')}"),
        ("windows rendered / cached / retried", f"{rendered} / {cached} / {retried}"),
        ("flicker score", _fmt((report.get("flicker") or {}).get("score"), 4)),
        ("seam ratio max / median", f"{_ratio(report.get('seam_ratio_max'))} / {_ratio(report.get('seam_ratio_median'))}"),
    ]
    disagree = [s["disagreement"] for s in report.get("seams") or [] if s.get("disagreement") is not None]
    if disagree:
        cards.append(("windows disagree in overlaps, max (levels)", _fmt(max(disagree))))
    elif any(s.get("fused") for s in report.get("seams") or []):
        cards.append(("windows disagree in overlaps", "none: fused"))
    cache = report.get("cache")
    if cache:
        cards.append((f"step cache ({cache['kind']}): blocks' work skipped", f"{100 * cache['skipped']:.1f} %"))
    cards.append(("total", f"{_fmt(stages.get('total'))} s"))
    body = "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in cards)
    return f'<div class="cards">{body}</div>'


def _video(report: dict) -> str:
    """The video itself, next to the report (a relative link: the page moves with it)."""
    if report.get("state") != "DONE" or not report.get("output"):
        return ""
    name = Path(str(report["output"])).name
    return (f'<video class="video" controls muted loop preload="metadata" src="{_e(name)}"></video>'
            f'<p class="note">{_e(name)}, next to this page.</p>')


def _filmstrips(strips: list[dict], seams: list[dict]) -> str:
    """Each kept seam: the blended frames across it, and under its overlap each window's own
    render of the same frames."""
    if not strips:
        return ""
    ratio = {s.get("window"): s.get("jump_ratio") for s in seams}
    fused = any(s.get("fused") for s in seams)
    parts = ["<h3>Seams up close</h3>",
             '<p class="note">The seams whose two windows disagreed most. Top row: the video as blended; '
             "below, under the frames both windows render, each window's own render before blending. "
             "Where they differ, the crossfade shows both at half opacity.</p>" if not fused else
             '<p class="note">The frames across each seam. The windows were denoised together '
             "(window.reconcile: latent): the frames they share are one set of latents, fused at every "
             "step, so there is no window's own render to show.</p>"]
    for s in strips:
        k, (first, last), (o_first, o_last) = s["window"], s["frames"], s["overlap"]
        frames = range(first, last + 1)
        head = "".join(f"<th class=n>{f}</th>" for f in frames)
        rows = [_strip_row("fused" if fused else "blended", frames, s["blended"])]
        for w in (k, k + 1) if not fused else ():
            rows.append(_strip_row(f"window {w}", frames, s["own"].get(w, {})))
        how = "fused" if fused else f"windows disagree {_fmt(s['disagreement'])} levels"
        parts.append(
            f'<div class="strip"><p><b>seam {_e(k)} → {_e(k + 1)}</b>, frames {_e(o_first)}–{_e(o_last)} shared: '
            f"{_e(how)}; jump ratio {_e(_ratio(ratio.get(k)))}</p>"
            f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table></div>")
    return "".join(parts)


def _strip_row(label: str, frames, images: dict) -> str:
    cells = []
    for f in frames:
        uri = images.get(f)
        cells.append(f'<td><img src="{_e(uri)}" alt="frame {f}" title="{_e(label)}, frame {f}"></td>' if uri
                     else "<td></td>")
    return f"<tr><th>{_e(label)}</th>{''.join(cells)}</tr>"


def _shots(shots: list[dict] | None, storyboard: list[dict]) -> str:
    """A film's storyboard (one thumbnail per shot, its middle frame) and shot table."""
    if not shots:
        return ""
    thumbs = {s["shot"]: s for s in storyboard}
    cells = "".join(
        f'<figure class="shot"><img src="{thumbs[s["index"]]["image"]}" alt="shot {_e(s["index"])}" '
        f'title="{_e(s["prompt"])}"><figcaption>{_e(s["index"])}{_e(_join_mark(s))}</figcaption></figure>'
        for s in shots if s["index"] in thumbs)
    anchored = any(s.get("anchor") for s in shots)
    head = ("<tr><th class=n>shot</th><th class=n>frames</th><th>prompt</th>" + ("<th>anchor</th>" if anchored else "")
            + "<th>then</th><th class=n>run</th><th>windows</th><th>rendered</th><th class=n>seconds</th></tr>")
    rows = "".join(
        f"<tr><td class=n>{_e(s['index'])}</td><td class=n>{_e(s['frames'][0])}–{_e(s['frames'][1] - 1)}</td>"
        f"<td>{_e(s['prompt'])}</td>" + (f"<td>{_e(_anchor(s))}</td>" if anchored else "") + f"<td>{_e(_then(s))}</td>"
        f"<td class=n>{_e(s['run'])}</td><td>{_e(_index_span(s['windows']))}</td><td>{_e(s['state'])}</td>"
        f"<td class=n>{_e(_fmt(s['seconds']))}</td></tr>" for s in shots)
    return (f'<h2>Shots</h2><div class="storyboard">{cells}</div>'
            f"<table class=shots>{head}{rows}</table>"
            '<p class="note">Shots joined by fuse are one run, denoised as one video; cut and dissolve start a new '
            "run. A run's windows are stored under keys of its own frames, so an edit renders only its runs "
            "again." + (" The anchor is the picture the IP-Adapter holds the shot to, and its scale." if anchored else "")
            + "</p>")


def _anchor(shot: dict) -> str:
    anchor = shot.get("anchor")
    return "" if not anchor else f"{Path(anchor['image']).name} × {anchor['scale']:g}"


def _then(shot: dict) -> str:
    return f"dissolve {shot['dissolve']}" if shot["dissolve"] else shot["then"]


def _join_mark(shot: dict) -> str:
    return {"cut": " |", "fuse": " ~", "dissolve": " ⁄"}.get(shot["then"], "")


def _index_span(indices: list[int]) -> str:
    return "" if not indices else str(indices[0]) if len(indices) == 1 else f"{indices[0]}–{indices[-1]}"


def _seam_table(seams: list[dict]) -> str:
    if not seams:
        return ""
    head = ("<tr><th>seam</th><th class=n>frame</th><th class=n>jump ratio</th><th class=n>jump</th>"
            "<th class=n>interior</th><th class=n title='mean absolute difference of the two windows&#39; own "
            "frames over their overlap, before blending (8-bit levels)'>windows disagree</th></tr>")
    rows = "".join(
        f"<tr><td>{_e(s.get('window', i))} → {_e(s.get('window', i) + 1)}</td>"
        f"<td class=n>{_e(s.get('frame'))}</td><td class=n>{_e(_ratio(s.get('jump_ratio')))}</td>"
        f"<td class=n>{_e(_fmt(s.get('jump')))}</td><td class=n>{_e(_fmt(s.get('interior')))}</td>"
        f"<td class=n>{_e('fused' if s.get('fused') else _fmt(s.get('disagreement')))}</td></tr>"
        for i, s in enumerate(seams))
    return f"<details><summary>{len(seams)} seams</summary><table>{head}{rows}</table></details>"


def _failures(windows: list[dict]) -> str:
    rows = "".join(
        f"<tr><td class=n>{_e(w.get('index'))}</td><td class=n>{n}</td><td>{_e(_short(f.get('actor')))}</td>"
        f"<td>{_e(_short(f.get('node')))}</td><td class=n>{_e(_fmt(f.get('started_at')))}</td>"
        f"<td>{_e(f.get('error'))}</td></tr>"
        for w in windows for n, f in enumerate(w.get("failures") or [], 1))
    if not rows:
        return ""
    head = ("<tr><th class=n>window</th><th class=n>attempt</th><th>actor</th><th>node</th>"
            "<th class=n>started (s)</th><th>error</th></tr>")
    return f'<p class="note"><b>Failed attempts</b></p><table class=failures>{head}{rows}</table>'


def _blocklist(blocked: list[dict]) -> str:
    if not blocked:
        return ""
    rows = "".join(f"<tr><td>{_e(b.get('kind'))}</td><td>{_e(b.get('id'))}</td><td class=n>{_e(b.get('failures'))}</td>"
                   f"<td>{_e(b.get('last_error'))}</td></tr>" for b in blocked)
    return ("<h2>Blocklist</h2><table><tr><th>kind</th><th>id</th><th class=n>failures</th><th>last error</th></tr>"
            f"{rows}</table>")


def _key_values(title: str, data) -> str:
    if not data:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>" for k, v in data.items())
    return f"<h2>{_e(title)}</h2><table>{rows}</table>"


def _encoding(enc) -> str:
    """Where the frames were blended and encoded; on the segment path, a row per segment."""
    if not enc:
        return ""
    head = _key_values("Encoding", {k: v for k, v in enc.items() if k != "segments"})
    segments = enc.get("segments") or []
    if not segments:
        return head
    rows = "".join(
        f"<tr><td class=n>{s['index']}</td><td class=n>{s['start']}–{s['end'] - 1}</td>"
        f"<td class=n>{s['frames_out']}</td><td>{_e(str(s['node'])[:12])}</td><td class=n>{s['seconds']:.2f}</td>"
        f"<td class=n>{s['attempts']}</td><td>{_e('; '.join(s['failures']))}</td></tr>" for s in segments)
    return (head + "<table><tr><th>segment</th><th>frames</th><th>encoded</th><th>node</th><th>seconds</th>"
            f"<th>attempts</th><th>failed attempts</th></tr>{rows}</table>")


def _models(actors: list[dict]) -> str:
    """Where each actor's models came from (staged ones: object storage or the node's
    cache; hub ids) and what fetching took, apart from loading. Nothing when every model
    was local."""
    fetched = [a for a in actors if a.get("from") not in (None, "local")]
    if not fetched:
        return ""
    rows = "".join(
        f"<tr><td>{_e(str(a.get('node'))[:12])}</td><td>{_e(str(a.get('actor'))[:12])}</td>"
        f"<td>{_e(a.get('from'))}</td><td class=n>{_fmt(a.get('fetch_seconds'))}</td>"
        f"<td class=n>{_fmt((a.get('fetch_bytes') or 0) / 1e6)}</td><td class=n>{_fmt(a.get('load_seconds'))}</td></tr>"
        for a in fetched)
    return ("<h2>Models</h2><table><tr><th>node</th><th>actor</th><th>from</th><th>fetch s</th><th>fetched MB</th>"
            f"<th>load s</th></tr>{rows}</table>")


def _farm(farm, actors: list[dict]) -> str:
    """The shared farm: the job's place in it, and each actor it was lent, warm or loaded."""
    if not farm:
        return ""
    if "private" in farm:
        return f'<h2>Farm</h2><p class="note">Private actors: {_e(farm["private"])}</p>'
    shown = {k: v for k, v in farm.items() if k != "registered_at"}  # an epoch time
    if shown.get("priorities"):  # 50 (at 0 s) → 80 (at 12.5 s)
        shown["priorities"] = " → ".join(f"{p['priority']} (at {_fmt(p['at'])} s)" for p in shown["priorities"])
    head = _key_values("Farm", shown)
    lent = [a for a in actors if "farm_actor" in a]
    if not lent:
        return head
    rows = "".join(
        f"<tr><td>{_e(a['farm_actor'])}</td><td>{_e(str(a.get('node'))[:12])}</td>"
        f"<td>{'warm' if a.get('warm') else 'loaded'}</td><td class=n>{_fmt(a.get('load_seconds'))}</td>"
        f"<td>{_e(', '.join(a.get('evicted') or []))}</td><td class=n>{_fmt(a.get('lent_at'))}</td></tr>"
        for a in lent)
    return (head + "<table><tr><th>actor lent</th><th>node</th><th>pipeline</th><th>load s</th><th>evicted</th>"
            f"<th>lent at s</th></tr>{rows}</table>")


def _spec(spec) -> str:
    if not spec:
        return '<p class="note">No spec in the report.</p>'
    try:
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, default_flow_style=False)
    except yaml.YAMLError:
        text = json.dumps(spec, indent=2, default=str)
    return f'<pre class="spec">{_e(text)}</pre>'


# --- small helpers ------------------------------------------------------------------------


def _count(n, noun: str) -> str:
    """`1 actor`, `3 actors`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _plain(value) -> str:
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return _fmt(value)


def _short(ident) -> str:
    s = str(ident) if ident is not None else "?"
    return s[:8] if len(s) > 12 else s


def _ranges(nums: list[int]) -> str:
    nums, out, i = sorted(nums), [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}–{nums[j]}")
        i = j + 1
    return ", ".join(out)


def _span(start, end, seconds):
    if end is None:
        return None, None
    if start is None:
        start = end - (seconds or 0.0)
    return float(start), float(end)


def _gantt_bars(windows: list[dict]) -> list[tuple]:
    """(row key, start, end, kind, window, tooltip) for every attempt with a time."""
    bars = []
    for w in windows:
        for n, f in enumerate(w.get("failures") or [], 1):
            t0, t1 = _span(f.get("started_at"), f.get("finished_at"), None)
            if t1 is not None:
                why = f"attempt {n} failed: {f.get('error', '')}"
                bars.append(((f.get("node"), f.get("actor")), t0, t1, "failed", w, why))
        if w.get("cached"):
            t = w.get("finished_at") or 0.0
            bars.append((("store", None), t, t, "cached", w, "read from the window store"))
            continue
        t0, t1 = _span(w.get("started_at"), w.get("finished_at"), w.get("seconds"))
        if t1 is None:
            continue
        attempts = w.get("attempts") or 1
        kind = "retried" if attempts > 1 else "ok"
        bars.append(((w.get("node"), w.get("actor")), t0, t1, kind, w, f"attempt {attempts} of {attempts}"))
    return bars


def _gantt_rows(actors: list[dict], used: list[tuple]) -> list[tuple]:
    """Rows in node order, each node's actors in the order they first appear; store last."""
    order = [(a.get("node"), a.get("actor")) for a in actors] + list(used)
    nodes: dict = {}
    for node, actor in order:
        if node != "store":
            nodes.setdefault(node, [])
            if actor not in nodes[node]:
                nodes[node].append(actor)
    rows = [(n, a) for n, acts in nodes.items() for a in acts]
    return rows + ([("store", None)] if ("store", None) in used else [])


def _scale(d0: float, d1: float, r0: float, r1: float):
    k = (r1 - r0) / ((d1 - d0) or 1.0)
    return lambda v: r0 + (v - d0) * k


def _nice_step(span: float, count: int = 6) -> float:
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    step = _nice_step(hi - lo, count)
    return [round(lo + i * step, 10) for i in range(int((hi - lo) / step + 1e-9) + 1)]


def _nice_ceiling(v: float) -> float:
    if v <= 0:
        return 0.0
    step = _nice_step(v, 5)
    return math.ceil(v / step - 1e-9) * step


def _ratio_colour(ratio) -> str:
    if ratio is None:
        return "#5b6475"
    return "#2e8540" if ratio < 1.15 else "#c46a00" if ratio < 1.5 else "#d93b3b"


def _svg_open(height: int, cls: str, label: str) -> str:
    return (f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_e(label)}">')


def _text(x: float, y: float, s, anchor: str = "start", weight: str | None = None, title: str | None = None) -> str:
    bold = ' font-weight="bold"' if weight else ""
    tip = f"<title>{_e(title)}</title>" if title else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{bold}>{tip}{_e(s)}</text>'


def _x_axis(x, lo: float, hi: float, y0: float, y1: float, label: str, label_y: float) -> list[str]:
    out = []
    for t in _ticks(lo, hi):
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y0}" y2="{y1}" stroke="#e6e9ef"/>')
        out.append(_text(x(t), y1 + 13, _fmt(t), anchor="middle"))
    out.append(_text(x(hi), label_y, label, anchor="end"))
    return out


def _hatches() -> str:
    pats = "".join(
        f'<pattern id="hatch-{k}" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="#fff"/><line x1="0" y1="0" x2="0" y2="6" stroke="{COLOURS[k]}" stroke-width="3" stroke-opacity="0.55"/>'
        "</pattern>" for k in ("failed", "cached"))
    return f"<defs>{pats}</defs>"


def _legend() -> str:
    items = [("ok", "rendered"), ("retried", "rendered after a retry"), ("failed", "failed attempt"),
             ("cached", "read from the store")]
    out, x = [], LABEL
    for kind, label in items:
        fill = f"url(#hatch-{kind})" if kind in ("failed", "cached") else COLOURS[kind]
        out.append(f'<rect class="key" x="{x}" y="4" width="14" height="10" fill="{fill}" stroke="{COLOURS[kind]}"/>')
        out.append(_text(x + 19, 13, label))
        x += 30 + 6.5 * len(label)
    return "".join(out)
