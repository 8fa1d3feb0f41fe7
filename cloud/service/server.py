"""How ``edgeloop cloud serve`` runs uvicorn: its connection limits, chosen on purpose.

uvicorn's defaults suit a trusted network: the httptools parser takes headers of any size,
and nothing closes a connection that never finishes its request line and headers, so a
thousand half-open connections (slowloris) hold the server. We keep httptools (a C parser:
a fleet's polls cost a third of the CPU they cost with the pure-Python h11) and add the limits:

* ``max_header_bytes`` 16 KiB: a larger request head is refused (HTTP 431, closed) once that
  much of it has arrived, so at most 16 KiB plus one socket read is ever held;
* ``header_timeout_s`` 10 s: a connection that has not sent a complete request head this long
  after connecting, or after its last response, is closed;
* ``keep_alive_s`` 5 s: an idle keep-alive connection is closed;
* ``max_concurrency`` 512 connections and tasks: beyond, new requests get 503 at once;
* ``backlog`` 2048 pending connections in the kernel (a fleet reconnecting at once overflows a
  short queue, and every dropped SYN costs a device a 1, 3 or 7 s retransmission).

They keep one process healthy on its own; a deployment past 127.0.0.1 should still sit behind a
reverse proxy (TLS, per-address connection limits).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_concurrency: int = 512
    backlog: int = 2048

    def __post_init__(self) -> None:  # each message names serve's flag for the field
        if not 1024 <= self.max_header_bytes <= 1 << 20:
            raise ValueError(f"--max-header-bytes must be in [1024, 1 MiB], got {self.max_header_bytes}")
        if not 0 < self.header_timeout_s <= 300:
            raise ValueError(f"--header-timeout must be in (0, 300] seconds, got {self.header_timeout_s}")
        if not 1 <= self.keep_alive_s <= 300:
            raise ValueError(f"--keep-alive must be in [1, 300] seconds, got {self.keep_alive_s}")
        if self.max_concurrency < 8:
            raise ValueError(f"--max-concurrency must be >= 8, got {self.max_concurrency}")
        if not 8 <= self.backlog <= 65535:
            raise ValueError(f"--backlog must be in [8, 65535], got {self.backlog}")


def guarded_protocol(header_timeout_s: float, max_header_bytes: int = 16 * 1024) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing connections whose request head is too slow or too large."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    too_large = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                 b"content-length: 33\r\nconnection: close\r\n\r\nrequest head over the size limit\n")

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _in_head = False
        _head_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():  # all of this read went into an unfinished head
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    self.transport.write(too_large)
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        # One timer per connection, moved lazily: a timer per response kept ~25,000 handles alive at 2,500
        # polls/s, each holding its request cycle for 10 s (a worker's RSS went from 132 to 230 MiB, and its
        # CPU per poll up by a third). Now a timer that fires early, because a later response moved the
        # deadline, sleeps again until that deadline. (Folding uvicorn's keep-alive timer, which is cancelled
        # on the next read, into this one was measured too: no difference.)
        _deadline = 0.0
        _timer: asyncio.TimerHandle | None = None
        _waiting_for: Any = None

        def _arm(self) -> None:
            self._waiting_for = self.cycle  # a new request replaces the cycle; if it has not by the deadline, close
            self._deadline = self.loop.time() + header_timeout_s
            if self._timer is None:
                self._timer = self.loop.call_at(self._deadline, self._expire)

        def _expire(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not self._waiting_for:
                return  # a request is being answered; its response re-arms
            if self.loop.time() < self._deadline:  # armed again since this timer was set
                self._timer = self.loop.call_at(self._deadline, self._expire)
                return
            self.transport.close()

    return GuardedHttpToolsProtocol


HEADER_TIMEOUT_ENV = "EDGELOOP_HEADER_TIMEOUT_S"
MAX_HEADER_ENV = "EDGELOOP_MAX_HEADER_BYTES"


def __getattr__(name: str) -> Any:
    """``GuardedHttpToolsProtocol`` by name, for worker processes: uvicorn imports the protocol from a string there
    (a class made inside a function cannot be pickled to a spawned worker); the timeout comes from the
    environment the parent set."""
    if name == "GuardedHttpToolsProtocol":
        import os

        return guarded_protocol(float(os.environ.get(HEADER_TIMEOUT_ENV, "10")),
                                int(os.environ.get(MAX_HEADER_ENV, str(16 * 1024))))
    raise AttributeError(name)


def uvicorn_config(app: Any, host: str, port: int, limits: ServerLimits, log_level: str = "warning",
                   **extra: Any) -> Any:
    """uvicorn's config with these limits; ``extra`` passes on (``factory``, ``workers`` for several processes)."""
    import os

    import uvicorn

    http: Any = guarded_protocol(limits.header_timeout_s, limits.max_header_bytes)
    if extra.get("workers", 1) > 1:
        os.environ[HEADER_TIMEOUT_ENV] = str(limits.header_timeout_s)
        os.environ[MAX_HEADER_ENV] = str(limits.max_header_bytes)
        http = "cloud.service.server:GuardedHttpToolsProtocol"
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                          http=http,
                          timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_concurrency,
                          backlog=limits.backlog, **extra)
