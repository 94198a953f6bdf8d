"""The job report: `OUT.mp4.report.json`, written atomically next to the video."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path


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


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """Write JSON to a temp file in the same folder, then `os.replace` it onto `path`."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text to a temp file in the same folder, then `os.replace` it onto `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
