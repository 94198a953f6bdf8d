"""The job report: one typed record, written as `OUT.mp4.report.json` (atomically, next to
the video) and `OUT.mp4.report.html`, and printed by `farm render --json`.

`Report` holds every field of a render's report; `to_dict()` is the JSON (the keys are a
stable interface: scripts read them), and a `Report` also reads like that mapping
(`report["windows"]`), so code written against the JSON works on the object too.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from farm.report_html import html_report_path, write_html_report
from farm.util import write_json_atomic


def cache_summary(cache, windows, latent: dict | None) -> dict:
    """The report's `cache`: `cache` (the spec's CacheSpec), and the work skipped summed
    over the rendered windows' records (crossfade) or the shards' stats (latent)."""
    parts = [s.get("cache") for s in (latent or {}).get("shard_stats") or []] if latent else \
        [w.get("cache") for w in windows]
    return {"kind": cache.kind, "settings": cache.settings()} | skipped(
        sum(p["evaluated"] for p in parts if p), sum(p["possible"] for p in parts if p))


def skipped(evaluated: int, possible: int) -> dict:
    """Step caching's work, as the report gives it per window, shard and job: Linear calls
    made in the transformer blocks, those there would have been with every block computed,
    and the share skipped or reused."""
    return {"evaluated": evaluated, "possible": possible,
            "skipped": round(1 - evaluated / possible, 4) if possible else 0.0}


def report_path(output: str | Path) -> Path:
    return Path(str(output) + ".report.json")


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("ray", "torch", "diffusers", "transformers", "raygen-farm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


#: Fields left out of the JSON while they are None (a job that did not fail has no `failed`).
_OPTIONAL = ("failed", "error", "flicker", "seams", "color_drift_max", "interpolate", "seam_check", "latent", "farm",
             "cache", "shots")
#: Measured with the flicker: present (null for a single window) whenever `flicker` is.
_WITH_FLICKER = ("seam_ratio_max", "seam_ratio_median")


@dataclass
class Report(Mapping):
    """Everything a render job reports. Built by the driver (scheduler/driver.py) on every
    ending, DONE or FAILED."""

    output: str
    state: str  # farm.states.JobState value
    frames: int
    output_frames: int
    output_fps: float
    width: int
    height: int
    blend: str
    windows: list[dict]  # one record per window, in index order
    windows_rendered: int
    windows_cached: int
    store: dict  # {path, reused, corrupt_removed}
    blocklist: list[dict]
    stages: dict[str, float]  # seconds per stage
    plan: dict
    actors: list[dict]  # each pipeline actor's info()
    workers: int | None
    threads_per_actor: int | None
    spec: dict
    versions: dict = field(default_factory=versions)
    failed: dict | None = None  # {window, attempts, error}: the first window that failed
    error: str | None = None  # why the job failed, when no window did (cluster, interpolation)
    # measured on the finished video (farm.metrics.flicker_report)
    flicker: dict | None = None
    seams: list[dict] | None = None
    seam_ratio_max: float | None = None
    seam_ratio_median: float | None = None
    color_drift_max: float | None = None  # ΔE of the worst window's last frame from the first frame
    interpolate: dict | None = None
    seam_check: dict | None = None
    reconcile: str = "crossfade"  # window.reconcile
    latent: dict | None = None  # co-denoising: shards, checkpoints, resumed_from_step, recoveries, exchange
    # where the frames were reconciled and encoded (`path`: driver or segments; the segments'
    # tasks, nodes and attempts) and the driver's own CPU time per window
    encode: dict | None = None
    # the shared farm (scheduler/manager.py): the job's id and priority, how long it queued,
    # each actor it was lent (warm, or the load it cost) and how many were recalled
    farm: dict | None = None
    # step caching (model.cache): its kind and settings, and the share of the transformer
    # blocks' work skipped or reused over the windows (crossfade) or shards (latent) rendered
    cache: dict | None = None
    # a film of shots (farm/shots.py): one row per shot (farm.shots.shot_table)
    shots: list[dict] | None = None

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and (f.name in _OPTIONAL or (f.name in _WITH_FLICKER and self.flicker is None)):
                continue
            out[f.name] = value
        return out

    def write(self, local_output: str | Path, filmstrips: list[dict] | None = None,
              storyboard: list[dict] | None = None) -> None:
        """The html page (with the seams' `filmstrips` and a film's `storyboard`,
        farm.filmstrip, which the JSON does not carry), then the JSON (last: a JSON report
        means the rest is in place)."""
        data = self.to_dict()
        write_html_report(data, html_report_path(local_output), filmstrips, storyboard)
        write_json_atomic(report_path(local_output), data)

    # read-only mapping view of the JSON
    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
