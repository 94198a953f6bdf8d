"""Where the jobs API is and which token it takes: small and light (no pydantic, no numpy),
so the CLI's fast paths (the farm UI's client) start quickly. scheduler/jobs.py re-exports
these."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from farm.errors import ClusterError

#: Where the jobs API is when neither --address nor the environment says.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def resolve_address(address: str | None = None) -> str:
    """The jobs API URL: `address`, else FARM_JOBS_ADDRESS, else RAY_API_SERVER_ADDRESS,
    else RAY_ADDRESS when it is an http(s) URL, else DEFAULT_ADDRESS. `host:port` gets http://."""
    if not address:
        address = os.environ.get("FARM_JOBS_ADDRESS") or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        ray_address = os.environ.get("RAY_ADDRESS", "")
        address = ray_address if ray_address.startswith(("http://", "https://")) else DEFAULT_ADDRESS
    address = address.strip().rstrip("/")
    if "://" not in address:
        if address == "auto":
            raise ClusterError("--address auto names a Ray driver connection; farm jobs need the "
                               f"dashboard's HTTP address, e.g. {DEFAULT_ADDRESS}")
        address = f"http://{address}"
    scheme = address.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ClusterError(
            f"{address!r} is not a jobs API address: farm submit/status/logs/stop/list talk to the "
            f"dashboard over HTTP, e.g. {DEFAULT_ADDRESS} (after `ray dashboard cluster.yaml`)"
        )
    return address


def is_loopback(address: str) -> bool:
    return is_loopback_host(urlsplit(address).hostname or "")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    source: str  # where it came from, for messages: "RAY_AUTH_TOKEN", a file path


def _default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def resolve_token() -> Token | None:
    """The token to send: RAY_AUTH_TOKEN, the RAY_AUTH_TOKEN_PATH file, or Ray's default
    file ~/.ray/auth_token; none when RAY_AUTH_MODE=disabled. A named file that cannot be
    read is an error, not a silent fall-through."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return None
    value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return Token(value, "RAY_AUTH_TOKEN")
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else _default_token_path()
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        if named:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={named} does not exist") from None
        if mode == "token":
            raise ClusterError(
                f"RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a "
                f"file holding it, or put it in {path}"
            ) from None
        return None
    except OSError as err:
        raise ClusterError(f"cannot read the token file {path}: {err.strerror}") from None
    if not value:
        raise ClusterError(f"the token file {path} is empty")
    return Token(value, str(path))
