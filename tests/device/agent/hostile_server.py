"""A small hostile HTTP server on 127.0.0.1 for the agent's tests: it serves the bad replies on demand.

It plays the edgeloop service from a real registry (signed bundles, signed release statements),
and each test swaps in what a broken or malicious server would do for one path: a non-ASCII
ETag, a truncated or slow-drip body, a redirect to another origin, a 400 MiB answer, an HTML
page where JSON belongs, a ``Retry-After`` of ``nan``. Every request is logged with its headers
and body, so a test can check what the agent sent (and to whom).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Handler = Callable[["_Handler"], None]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HostileServer:
    """``with HostileServer() as srv: srv.route("/v1/...", handler)``; unrouted paths answer 404."""

    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Bound(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Bound)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def requests_to(self, prefix: str) -> list[Seen]:
        return [s for s in list(self.seen) if s.path.startswith(prefix)]

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    server_owner: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 10 << 20)) if length else b""
        owner = self.server_owner
        owner.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
        handler = owner.routes.get(self.path)
        if handler is None:
            handler = next((h for p, h in owner.routes.items() if p.endswith("*") and self.path.startswith(p[:-1])), None)
        try:
            if handler is None:
                reply(self, 404, {"detail": "not here"})
            else:
                handler(self)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    do_GET = do_POST = _dispatch  # noqa: N815 - http.server's naming


# -- replies ---------------------------------------------------------------------------------


def reply(h: _Handler, status: int, body: Any = b"", headers: dict[str, str] | None = None) -> None:
    """A complete answer; ``body`` may be bytes or anything JSON encodes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    if not any(k.lower() == "content-type" for k in (headers or {})):
        h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(data)


def raw(h: _Handler, data: bytes) -> None:
    """Bytes straight onto the socket: a status line and headers of the test's own making."""
    h.wfile.write(data)
    h.wfile.flush()


def file_reply(path: Path) -> Handler:
    return lambda h: reply(h, 200, path.read_bytes(), {"Content-Type": "application/octet-stream"})


def truncated(content: bytes, keep: int, chunked: bool = False) -> Handler:
    """Announce all of ``content`` but send ``keep`` bytes, then close: a transfer cut short."""
    def handler(h: _Handler) -> None:
        if chunked:
            raw(h, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                + f"{len(content):x}\r\n".encode() + content[:keep])
        else:
            raw(h, b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(content)).encode()
                + b"\r\nConnection: close\r\n\r\n" + content[:keep])
    return handler


def slow_drip(content: bytes, every: float, stop: threading.Event) -> Handler:
    """Send ``content`` one byte every ``every`` seconds (each read succeeds; the whole never arrives)."""
    def handler(h: _Handler) -> None:
        raw(h, b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(content)).encode() + b"\r\nConnection: close\r\n\r\n")
        for i in range(len(content)):
            if stop.wait(every):
                return
            raw(h, content[i:i + 1])
    return handler


def endless(sent: list[int], limit: int = 400 << 20) -> Handler:
    """Stream up to ``limit`` bytes of a JSON-looking body, counting what the client took into ``sent``."""
    def handler(h: _Handler) -> None:
        raw(h, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(limit).encode()
            + b"\r\nConnection: close\r\n\r\n")
        chunk = b" " * (1 << 16)
        deadline = time.monotonic() + 30
        while sent[0] < limit and time.monotonic() < deadline:
            h.wfile.write(chunk)
            sent[0] += len(chunk)
    return handler
