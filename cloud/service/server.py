"""How ``edgeloop cloud serve`` runs uvicorn: its connection limits, chosen on purpose.

uvicorn's defaults suit a trusted network: the httptools parser takes headers of any size,
and nothing closes a connection that never finishes its request line and headers, so a
thousand half-open connections (slowloris) hold the server. The limits here:

* ``max_header_bytes`` 16 KiB: the h11 parser refuses a larger request head (HTTP 431/400, closed);
* ``header_timeout_s`` 10 s: a connection that has not sent a complete request head this long
  after connecting, or after its last response, is closed;
* ``keep_alive_s`` 5 s: an idle keep-alive connection is closed;
* ``max_concurrency`` 512 connections and tasks: beyond, new requests get 503 at once;
* ``backlog`` 256 pending connections in the kernel.

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
    backlog: int = 256

    def __post_init__(self) -> None:
        if not 1024 <= self.max_header_bytes <= 1 << 20:
            raise ValueError(f"max_header_bytes must be in [1024, 1 MiB], got {self.max_header_bytes}")
        if not 0 < self.header_timeout_s <= 300:
            raise ValueError(f"header_timeout_s must be in (0, 300], got {self.header_timeout_s}")
        if not 1 <= self.keep_alive_s <= 300:
            raise ValueError(f"keep_alive_s must be in [1, 300], got {self.keep_alive_s}")
        if self.max_concurrency < 8 or self.backlog < 8:
            raise ValueError(f"max_concurrency and backlog must be >= 8, got {self.max_concurrency}, {self.backlog}")


def guarded_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing connections that do not complete a request head in time."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            waiting_for = self.cycle  # a new request replaces the cycle; if it has not, close
            self.loop.call_later(header_timeout_s, self._expire, waiting_for)

        def _expire(self, waiting_for: Any) -> None:
            if self.cycle is waiting_for and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


HEADER_TIMEOUT_ENV = "EDGELOOP_HEADER_TIMEOUT_S"


def __getattr__(name: str) -> Any:
    """``GuardedH11Protocol`` by name, for worker processes: uvicorn imports the protocol from a string there
    (a class made inside a function cannot be pickled to a spawned worker); the timeout comes from the
    environment the parent set."""
    if name == "GuardedH11Protocol":
        import os

        return guarded_protocol(float(os.environ.get(HEADER_TIMEOUT_ENV, "10")))
    raise AttributeError(name)


def uvicorn_config(app: Any, host: str, port: int, limits: ServerLimits, log_level: str = "warning",
                   **extra: Any) -> Any:
    """uvicorn's config with these limits; ``extra`` passes on (``factory``, ``workers`` for several processes)."""
    import os

    import uvicorn

    http: Any = guarded_protocol(limits.header_timeout_s)
    if extra.get("workers", 1) > 1:
        os.environ[HEADER_TIMEOUT_ENV] = str(limits.header_timeout_s)
        http = "cloud.service.server:GuardedH11Protocol"
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                          http=http,
                          h11_max_incomplete_event_size=limits.max_header_bytes,
                          timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_concurrency,
                          backlog=limits.backlog, **extra)
