"""The agent's HTTP client for the edgeloop service, on the standard library (``urllib``).

Thin on purpose: it turns HTTP into return values and two exceptions, so the agent's
retry logic can tell "try again later" (:class:`ServerUnavailable`) from "this request is
wrong" (:class:`RequestRejected`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.errors import EdgeloopError, UpdateRejected


class ServerUnavailable(EdgeloopError):
    """The server cannot be reached, timed out, or answered 5xx / 429: retry later."""

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
    """The channel's current version, as the server describes it."""

    version: int
    name: str
    etag: str
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "size", "url"}


class ServiceClient:
    def __init__(self, server: str, token: str, timeout: float = 10.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http(s) URL, got {server!r}")
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                 ) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            if exc.code == 304:
                return 304, dict(exc.headers), b""
            detail = _detail(payload)
            if exc.code == 429 or exc.code >= 500:
                retry = exc.headers.get("Retry-After")
                raise ServerUnavailable(f"{method} {path}: HTTP {exc.code} {detail}",
                                        float(retry) if retry else None) from None
            raise RequestRejected(f"{method} {path}: HTTP {exc.code} {detail}", exc.code) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ServerUnavailable(f"{method} {path}: {getattr(exc, 'reason', exc)}") from None

    def current(self, channel: str, etag: str | None = None, running: str | None = None) -> Release | None:
        """The channel's current release, or None when it is unchanged since ``etag`` (HTTP 304)."""
        headers = {"If-None-Match": etag} if etag else {}
        if running:
            headers["X-Model-Version"] = running
        status, hdrs, body = self._request("GET", f"/v1/channels/{channel}/current", headers=headers)
        if status == 304:
            return None
        try:
            data = json.loads(body)
            return Release(int(data["version"]), str(data["name"]),
                           hdrs.get("ETag") or hdrs.get("etag") or str(data["etag"]), dict(data["files"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ServerUnavailable(f"GET /v1/channels/{channel}/current: malformed release description ({exc})") from None

    def download(self, url: str, dest: Path, sha256: str, max_bytes: int = 64 << 20) -> None:
        """Stream ``url`` to a temporary file next to ``dest``, check its sha256, then rename it to ``dest``."""
        req = urllib.request.Request(self.server + url)
        req.add_header("Authorization", f"Bearer {self.token}")
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                        while chunk := resp.read(1 << 16):
                            size += len(chunk)
                            if size > max_bytes:
                                raise RequestRejected(f"GET {url}: more than {max_bytes} bytes", 413)
                            digest.update(chunk)
                            fh.write(chunk)
                except urllib.error.HTTPError as exc:
                    if exc.code >= 500 or exc.code == 429:
                        raise ServerUnavailable(f"GET {url}: HTTP {exc.code}") from None
                    raise RequestRejected(f"GET {url}: HTTP {exc.code}", exc.code) from None
                except (urllib.error.URLError, OSError, TimeoutError) as exc:
                    raise ServerUnavailable(f"GET {url}: {getattr(exc, 'reason', exc)}") from None
                fh.flush()
                os.fsync(fh.fileno())
            if digest.hexdigest() != sha256:
                raise UpdateRejected(f"{url}: downloaded sha256 {digest.hexdigest()[:16]}… is not the announced "
                                     f"{sha256[:16]}…")
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def upload(self, batch_key: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """POST one batch under its idempotency key; the server stores it once however often it is sent."""
        _, _, body = self._request("POST", "/v1/samples", {"samples": samples}, {"Idempotency-Key": batch_key})
        return json.loads(body)

    def report(self, kind: str, version: str | None, detail: str = "", counters: dict[str, int] | None = None) -> None:
        self._request("POST", "/v1/events", {"kind": kind, "version": version, "detail": detail,
                                              "counters": counters or {}})


def _detail(payload: bytes) -> str:
    try:
        data = json.loads(payload)
        return str(data.get("detail", data))
    except (ValueError, AttributeError):
        return payload[:200].decode(errors="replace")
