"""Where the farm keeps what it builds or fetches: tiny models, weights, the window store."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`FARM_CACHE` if set, else `$XDG_CACHE_HOME/raygen-farm` (default `~/.cache/raygen-farm`)."""
    explicit = os.environ.get("FARM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "raygen-farm"
