"""The admin API from the operator's side: the CLI's ``--server URL --admin-token-file F`` mode.

Standard library only. An HTTP error becomes :class:`AdminRequestFailed` with the server's
own message, so the CLI prints one line and exits non-zero.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from device.errors import EdgeloopError


class AdminRequestFailed(EdgeloopError):
    """The server refused an admin request or could not be reached."""


class AdminClient:
    def __init__(self, server: str, token: str, timeout: float = 120.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"--server must be an http(s) URL, got {server!r}")
        self.server, self.token, self.timeout = server.rstrip("/"), token, timeout

    @classmethod
    def from_token_file(cls, server: str, token_file: Path | str | None) -> AdminClient:
        if not token_file:
            raise ValueError("--server needs --admin-token-file (the file the server was started with)")
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise AdminRequestFailed(f"{token_file}: cannot read the admin token ({exc})") from None
        return cls(server, token)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                query: dict[str, Any] | None = None, content_type: str = "application/json") -> Any:
        qs = "?" + urllib.parse.urlencode({k: v for k, v in (query or {}).items() if v is not None}) if query else ""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.server + "/v1/admin" + path + qs, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", content_type if raw is None else "application/x-tar")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
                kind = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:2000].decode(errors="replace")
            try:
                detail = str(json.loads(detail).get("detail", detail))
            except (ValueError, AttributeError):
                pass
            raise AdminRequestFailed(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminRequestFailed(f"{self.server}: {getattr(exc, 'reason', exc)}") from None
        if "ndjson" in kind:
            return [json.loads(line) for line in payload.splitlines() if line.strip()]
        return json.loads(payload) if payload else None
