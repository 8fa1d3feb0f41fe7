"""The agent's HTTP client for the edgeloop service, on the standard library (``urllib``).

Thin on purpose: it turns HTTP into return values and two exceptions, so the agent's
retry logic can tell "try again later" (:class:`ServerUnavailable`) from "this request is
wrong" (:class:`RequestRejected`). Whatever a server sends, the client raises one of those
two (or :class:`UpdateRejected` for a download whose bytes are not the announced ones): it
caps every body it reads, gives each request and each download a deadline for the whole
transfer (not per read), never follows a redirect to another origin (the bearer token stays
with the server it was issued for), and validates every value it passes on.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import math
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.errors import EdgeloopError, UpdateRejected

MAX_RESPONSE_BYTES = 1 << 20  # a release description or an upload receipt is a few KiB
MAX_ERROR_BYTES = 4096  # of an error body, for the message
MAX_DOWNLOAD_BYTES = 64 << 20  # one bundle file
MAX_VERSION = 2**53 - 1
_ETAG = re.compile(r'^(?:W/)?"?[\x21\x23-\x7e]{1,120}"?$')  # printable ASCII, no commas or spaces
_FILE_URL = re.compile(r"^/[A-Za-z0-9/_.%-]{1,500}$")


class ServerUnavailable(EdgeloopError):
    """The server cannot be reached, timed out, answered 5xx / 429 or something malformed: retry later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestRejected(EdgeloopError):
    """The server refused the request (4xx other than 429); retrying the same request will not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Release:
    """The channel's current version, as the server describes it (unsigned: the statement is what counts)."""

    version: int
    name: str
    etag: str
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "size", "url"}
    statement: dict[str, Any] | None = None  # the signed release statement (device.agent.verify_signature)


def valid_etag(etag: Any) -> bool:
    """An ETag this client will store and send back: 1-122 printable ASCII characters, no comma or space."""
    return isinstance(etag, str) and bool(_ETAG.match(etag))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date); None if unusable.

    Negative, non-finite or unparseable values give None: the caller's own backoff applies.
    The caller clamps the result to its own bounds.
    """
    if not value or len(value) > 64:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        try:
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (OverflowError, ValueError, OSError):
            return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the origin the token was issued for; refuse any other."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            raise urllib.error.URLError(f"refusing a redirect to another origin ({new.scheme}://{new.netloc}): "
                                        "the device token is sent only to its own server")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """A whole-transfer deadline: each socket read waits at most what is left of it. A set ``cancel``
    event ends the transfer at the next read (the agent is stopping)."""

    def __init__(self, seconds: float, what: str, cancel: threading.Event | None = None) -> None:
        self.end, self.seconds, self.what, self.cancel = time.monotonic() + seconds, seconds, what, cancel

    def left(self) -> float:
        if self.cancel is not None and self.cancel.is_set():
            raise ServerUnavailable(f"{self.what}: cancelled (the agent is stopping)")
        left = self.end - time.monotonic()
        if left <= 0:
            raise ServerUnavailable(f"{self.what}: no complete answer within {self.seconds:g} s (too slow)")
        return left


def _read_capped(resp: Any, max_bytes: int, deadline: _Deadline, sink: Any = None) -> bytes | int:
    """Read a response body in pieces until EOF, over neither ``max_bytes`` nor the deadline.

    With ``sink`` (a callable taking bytes) the body is streamed to it and its size returned.
    """
    chunks, size = [], 0
    sock = _socket_of(resp)
    while True:
        left = deadline.left()
        if sock is not None:
            sock.settimeout(min(left, sock.gettimeout() or left))
        chunk = resp.read1(1 << 16) if hasattr(resp, "read1") else resp.read(1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge(f"{deadline.what}: the answer is more than {max_bytes} bytes")
        if sink is not None:
            sink(chunk)
        else:
            chunks.append(chunk)
    return size if sink is not None else b"".join(chunks)


class _TooLarge(Exception):
    """A body over its cap; the caller says what that means (a broken server, or not the announced file)."""


def _socket_of(resp: Any) -> socket.socket | None:
    try:
        raw = resp.fp.raw  # http.client.HTTPResponse -> socket.SocketIO
        return raw._sock if isinstance(raw._sock, socket.socket) else None
    except AttributeError:
        return None


# What a broken or hostile server can make urllib raise: none of it may escape as a crash.
_TRANSPORT_ERRORS = (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, ValueError)


class ServiceClient:
    def __init__(self, server: str, token: str, timeout: float = 10.0, download_timeout: float = 120.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http(s) URL, got {server!r}")
        if not (timeout > 0 and download_timeout > 0):
            raise ValueError(f"timeout and download_timeout must be > 0, got {timeout}, {download_timeout}")
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.download_timeout = download_timeout
        self.cancel: threading.Event | None = None  # set: transfers in flight end at their next read
        self._opener = urllib.request.build_opener(_SameOriginRedirects())

    def _open(self, req: urllib.request.Request) -> Any:
        return self._opener.open(req, timeout=self.timeout)

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                 ) -> tuple[int, dict[str, str], bytes]:
        what = f"{method} {path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        deadline = _Deadline(self.timeout * 3, what, self.cancel)
        try:
            with self._open(req) as resp:
                return resp.status, dict(resp.headers), _read_capped(resp, MAX_RESPONSE_BYTES, deadline)
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code == 304:
                    return 304, dict(exc.headers or {}), b""
                try:
                    payload = _read_capped(exc, MAX_ERROR_BYTES, deadline) if exc.fp is not None else b""
                except (EdgeloopError, _TooLarge, *_TRANSPORT_ERRORS):
                    payload = b""
            detail = _detail(payload)
            if exc.code == 429 or exc.code >= 500:
                retry = parse_retry_after((exc.headers or {}).get("Retry-After"))
                raise ServerUnavailable(f"{what}: HTTP {exc.code} {detail}", retry) from None
            if 300 <= exc.code < 400:
                raise ServerUnavailable(f"{what}: HTTP {exc.code} redirect not followed") from None
            raise RequestRejected(f"{what}: HTTP {exc.code} {detail}", exc.code) from None
        except _TooLarge as exc:
            raise ServerUnavailable(str(exc)) from None
        except _TRANSPORT_ERRORS as exc:
            raise ServerUnavailable(f"{what}: {_reason(exc)}") from None

    def current(self, channel: str, etag: str | None = None, running: str | None = None) -> Release | None:
        """The channel's current release, or None when it is unchanged since ``etag`` (HTTP 304)."""
        what = f"GET /v1/channels/{channel}/current"
        headers = {"If-None-Match": etag} if etag else {}
        if running:
            headers["X-Model-Version"] = running.encode("ascii", "replace").decode()[:64]
        status, hdrs, body = self._request("GET", f"/v1/channels/{urllib.parse.quote(channel, safe='')}/current",
                                           headers=headers)
        if status == 304:
            return None
        try:
            data = json.loads(body)
            version = data["version"]
            if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
                raise ValueError(f"version must be an integer in [1, {MAX_VERSION}], got {str(version)[:40]}")
            etag_value = hdrs.get("ETag") or hdrs.get("etag") or data["etag"]
            if not valid_etag(etag_value):
                raise ValueError(f"etag {str(etag_value)[:40]!r} is not 1-122 printable ASCII characters")
            files = data["files"]
            if not isinstance(files, dict):
                raise TypeError("files must be an object")
            statement = data.get("statement")
            return Release(version, str(data["name"])[:200], etag_value, dict(files),
                           statement if isinstance(statement, dict) else None)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ServerUnavailable(f"{what}: malformed release description ({str(exc)[:200]})") from None

    def download(self, url: str, dest: Path, sha256: str, max_bytes: int = MAX_DOWNLOAD_BYTES,
                 size: int | None = None) -> None:
        """Stream ``url`` (a path on this server) to a temporary file next to ``dest``, check it, rename it.

        A transfer cut short (fewer bytes than the announced ``size``, a broken chunked body, a
        timeout over the whole download) is :class:`ServerUnavailable`: retry it. Bytes that
        arrive whole but are not the announced ones are :class:`UpdateRejected`.
        """
        if not isinstance(url, str) or not _FILE_URL.match(url) or ".." in url.split("/"):
            raise UpdateRejected(f"release file URL {str(url)[:80]!r} is not a path on this server")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= max_bytes:
                raise UpdateRejected(f"GET {url}: announced size {str(size)[:40]} is not in [0, {max_bytes}]")
            max_bytes = size
        req = urllib.request.Request(self.server + url)
        req.add_header("Authorization", f"Bearer {self.token}")
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        digest = hashlib.sha256()
        deadline = _Deadline(self.download_timeout, f"GET {url}", self.cancel)
        try:
            with os.fdopen(fd, "wb") as fh:
                def sink(chunk: bytes) -> None:
                    digest.update(chunk)
                    fh.write(chunk)

                try:
                    with self._open(req) as resp:
                        got = _read_capped(resp, max_bytes, deadline, sink)
                except urllib.error.HTTPError as exc:
                    exc.close()
                    if exc.code >= 500 or exc.code == 429:
                        raise ServerUnavailable(f"GET {url}: HTTP {exc.code}",
                                                parse_retry_after((exc.headers or {}).get("Retry-After"))) from None
                    raise RequestRejected(f"GET {url}: HTTP {exc.code}", exc.code) from None
                except _TooLarge as exc:  # over the announced size: not the announced file
                    raise UpdateRejected(f"{exc}") from None
                except _TRANSPORT_ERRORS as exc:
                    raise ServerUnavailable(f"GET {url}: {_reason(exc)}") from None
                fh.flush()
                os.fsync(fh.fileno())
            if size is not None and got < size:
                raise ServerUnavailable(f"GET {url}: the transfer ended after {got} of {size} bytes")
            if digest.hexdigest() != sha256:
                raise UpdateRejected(f"{url}: downloaded sha256 {digest.hexdigest()[:16]}… is not the announced "
                                     f"{str(sha256)[:16]}…")
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def upload(self, batch_key: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """POST one batch under its idempotency key; the server stores it once however often it is sent.

        An answer that is not a JSON object (an HTML error page from a proxy, say) is
        :class:`ServerUnavailable`: the batch stays queued and is resent under the same key.
        """
        _, _, body = self._request("POST", "/v1/samples", {"samples": samples}, {"Idempotency-Key": batch_key})
        try:
            receipt = json.loads(body)
        except (ValueError, RecursionError):
            receipt = None
        if not isinstance(receipt, dict):
            raise ServerUnavailable(f"POST /v1/samples: the answer is not a JSON receipt ({body[:60]!r})")
        return receipt

    def report(self, kind: str, version: str | None, detail: str = "", counters: dict[str, int] | None = None) -> None:
        self._request("POST", "/v1/events", {"kind": kind, "version": version, "detail": detail,
                                              "counters": counters or {}})

    def summary(self, summary: dict[str, Any]) -> None:
        """POST one interval summary (:mod:`device.agent.summary`); its ``key`` makes a resend harmless."""
        self._request("POST", "/v1/summaries", summary)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return f"{type(exc).__name__}: {str(reason)[:200]}"


def _detail(payload: bytes) -> str:
    try:
        data = json.loads(payload)
        return str(data.get("detail", data))[:300]
    except (ValueError, AttributeError, RecursionError):
        return payload[:200].decode(errors="replace")
