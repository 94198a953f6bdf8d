"""The farm in a browser: a small HTTP server inside the farm manager's process.

    browser ──HTTP──► UIServer (a thread of the farm-manager actor, on the head)
                        │ reads and steers the manager in-process, under its lock:
                        │ snapshot(), set_priority(), stop_job(), previews()
                        ▼
                      FarmManager (scheduler/manager.py)

Routes (JSON unless said):

    GET  /                           the page (HTML; polls /api/state every second)
    GET  /app.js, /app.css           its script and style
    GET  /api/state                  jobs, actors, each job's preview frame numbers
    GET  /api/session                {"csrf": token} for clients that are not the page
    GET  /api/preview/JOB/N.jpg      a thumbnail a driver published (image/jpeg)
    GET  /api/output/JOB/video|report  a finished job's mp4 or HTML report, when the
                                     output is a file on this node
    POST /api/jobs/JOB/priority      {"priority": 0-100}
    POST /api/jobs/JOB/stop          the job's driver ends it STOPPED at its next check
    GET|POST /login                  the token form (only when bound beyond loopback)

Safety:
- every POST carries the page's CSRF token in `X-CSRF-Token`; without it: 403, nothing
  changes (a page on another site can make the browser send a POST, never read the token);
- bound to anything but loopback, every request needs the Ray auth token: an
  `Authorization: Bearer` header, or the cookie the login form sets; without it: 401;
- the page builds its DOM with `textContent`, never from HTML strings, so a prompt with
  `<script>` shows as text; responses carry a Content-Security-Policy of `'self'` only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from scheduler.webui_page import LOGIN, PAGE, SCRIPT, STYLE

#: The UI's port when none is given: the one after the Ray dashboard's 8265.
DEFAULT_PORT = 8266
_COOKIE = "farm_ui"
_JOB = r"(?P<job>[A-Za-z0-9_.:\-]{1,200})"


class UIServer:
    """Serve the page for `manager` (a FarmManager, or anything with its `snapshot`,
    `set_priority`, `stop_job`, `previews` and `preview_image` methods) on host:port.
    `token` (the Ray auth token) is required when `host` is not loopback."""

    def __init__(self, manager, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None):
        if not _loopback(host) and not token:
            raise ValueError(f"the farm UI on {host} (beyond loopback) needs the Ray auth token, and this "
                             "node has none: start Ray with token auth (RAY_AUTH_MODE=token), or bind 127.0.0.1 "
                             "and reach it through the dashboard's SSH tunnel")
        self.manager, self.host = manager, host
        self.csrf = secrets.token_urlsafe(32)
        self.auth = None if _loopback(host) else token
        self._session = hmac.new((token or "").encode(), b"farm-ui-session", hashlib.sha256).hexdigest()
        server = _IPv6Server if ":" in host else ThreadingHTTPServer
        self.httpd = server((host, port), _Handler)
        self.httpd.ui = self
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="farm-ui", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "UIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- checks -------------------------------------------------------------------------------
    def authorized(self, headers) -> bool:
        if self.auth is None:
            return True
        bearer = headers.get("Authorization", "")
        if bearer.startswith("Bearer ") and _same(bearer[7:].strip(), self.auth):
            return True
        return _same(_cookies(headers.get("Cookie", "")).get(_COOKIE, ""), self._session)

    def csrf_ok(self, headers) -> bool:
        return _same(headers.get("X-CSRF-Token", ""), self.csrf)


class _Handler(BaseHTTPRequestHandler):
    """One request; its server's `ui` (the UIServer) answers it."""

    server_version = "farm-ui"

    @property
    def ui(self) -> UIServer:
        return self.server.ui

    def log_message(self, fmt, *args):  # quiet: the manager's log is for its own events
        pass

    # -- GET ------------------------------------------------------------------------------
    def do_GET(self):
        path = urlsplit(self.path).path
        if path in ("/app.js", "/app.css"):  # no data in them: the login page needs the style
            return self._bytes((SCRIPT if path == "/app.js" else STYLE).encode(),
                               "text/javascript" if path == "/app.js" else "text/css")
        if path == "/login" and self.ui.auth is not None:
            return self._html(LOGIN.replace("{error}", ""), 401 if not self.ui.authorized(self.headers) else 200)
        if not self.ui.authorized(self.headers):
            return self._html(LOGIN.replace("{error}", ""), 401)
        if path == "/":
            return self._html(PAGE.replace("{csrf}", self.ui.csrf))
        if path == "/api/state":
            return self._json(self.ui.manager.ui_state())
        if path == "/api/session":
            return self._json({"csrf": self.ui.csrf})
        m = re.fullmatch(rf"/api/preview/{_JOB}/(?P<n>\d{{1,9}})\.jpg", path)
        if m:
            image = self.ui.manager.preview_image(m["job"], int(m["n"]))
            return self._bytes(image, "image/jpeg") if image else self._error(404, "no such preview")
        m = re.fullmatch(rf"/api/output/{_JOB}/(?P<what>video|report)", path)
        if m:
            return self._output(m["job"], m["what"])
        return self._error(404, "no such page")

    def _output(self, job: str, what: str):
        found = self.ui.manager.output_file(job, what)
        if found is None:
            return self._error(404, "no such output on this node")
        path = Path(found)
        kind = "video/mp4" if what == "video" else "text/html; charset=utf-8"
        return self._bytes(path.read_bytes(), kind)

    # -- POST -----------------------------------------------------------------------------
    def do_POST(self):
        path = urlsplit(self.path).path
        body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 16))
        if path == "/login" and self.ui.auth is not None:
            return self._login(body)
        if not self.ui.authorized(self.headers):
            return self._error(401, "the farm UI needs the Ray auth token (log in at /login, or send "
                                    "Authorization: Bearer TOKEN)")
        if not self.ui.csrf_ok(self.headers):
            return self._error(403, "missing or wrong X-CSRF-Token: reload the page")
        m = re.fullmatch(rf"/api/jobs/{_JOB}/(?P<action>priority|stop)", path)
        if not m:
            return self._error(404, "no such action")
        try:
            if m["action"] == "priority":
                priority = json.loads(body or b"{}").get("priority")
                return self._json(self.ui.manager.set_priority(m["job"], priority))
            return self._json(self.ui.manager.stop_job(m["job"]))
        except KeyError as err:
            return self._error(404, str(err).strip("'\""))
        except (ValueError, AttributeError) as err:
            return self._error(400, str(err))

    def _login(self, body: bytes):
        given = (parse_qs(body.decode(errors="replace")).get("token") or [""])[0].strip()
        if not _same(given, self.ui.auth):
            return self._html(LOGIN.replace("{error}", "That is not this cluster's Ray auth token."), 401)
        self.send_response(303)
        self.send_header("Location", "/")
        self.send_header("Set-Cookie", f"{_COOKIE}={self.ui._session}; HttpOnly; SameSite=Strict; Path=/")
        self.end_headers()

    # -- answers --------------------------------------------------------------------------
    def _json(self, data, status: int = 200):
        self._bytes(json.dumps(data, default=str).encode(), "application/json", status)

    def _html(self, text: str, status: int = 200):
        self._bytes(text.encode(), "text/html; charset=utf-8", status)

    def _error(self, status: int, message: str):
        self._json({"error": message}, status)

    def _bytes(self, data: bytes, kind: str, status: int = 200):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; media-src 'self'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison (bytes: a header may hold any character)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _loopback(host: str) -> bool:
    from scheduler.auth import is_loopback_host

    return is_loopback_host(host)


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


# -- for the CLI: the fast path of `farm queue` and `farm priority` ---------------------------
def ui_for(address: str | None) -> "UIClient | None":
    """The farm UI's client for a jobs API `address` (FARM_UI_PORT on its host), or None
    when nothing answers there."""
    from scheduler.auth import resolve_address

    client = UIClient(resolve_address(address))
    return client if client.reachable() else None


class UIClient:
    """The farm UI's JSON routes, for the CLI: at the jobs API address's host, on
    FARM_UI_PORT (8266). `reachable()` is False when nothing answers there within a
    second; the CLI then goes through the jobs API as before."""

    def __init__(self, address: str, timeout: float = 1.0):
        import os

        host = urlsplit(address if "://" in address else f"http://{address}").hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        self.base = f"http://{host}:{int(os.environ.get('FARM_UI_PORT', DEFAULT_PORT))}"
        self.timeout = timeout
        self._csrf = None

    def reachable(self) -> bool:
        try:
            self.state()
            return True
        except OSError:
            return False

    def state(self) -> dict:
        return self._call("GET", "/api/state")

    def set_priority(self, job_id: str, priority: int) -> dict:
        return self._call("POST", f"/api/jobs/{job_id}/priority", {"priority": priority})

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        import urllib.error
        import urllib.request

        from farm.errors import ClusterError
        from scheduler.auth import resolve_token

        headers = {"Content-Type": "application/json"}
        token = resolve_token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token.value}"
        if method == "POST":
            if self._csrf is None:
                self._csrf = self._call("GET", "/api/session")["csrf"]
            headers["X-CSRF-Token"] = self._csrf
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("error", err.reason)
            except ValueError:
                message = err.reason
            raise ClusterError(f"the farm UI at {self.base} refused it ({err.code}): {message}") from None
