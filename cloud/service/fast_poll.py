"""The fleet's commonest request, answered without FastAPI: a poll whose release has not changed (304).

Nearly every request a fleet sends is ``GET /v1/channels/C/current`` with ``If-None-Match`` and
the answer "unchanged". Through FastAPI's routing, header validation and a thread hop that costs
over a millisecond of CPU; this ASGI middleware recognises the request from the raw scope and
asks ``answer`` (the app's own authentication, rate limit and release lookup, see
:func:`cloud.service.app.create_app`) for the 304's headers. Whenever the answer would be
anything else (no or unknown token, throttled, no release, a changed release, odd headers),
``answer`` returns None and the request goes on to the full route untouched, which then gives
exactly the reply it always gave. So the fast path can change speed, never behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

POLL_PATH = re.compile(r"/v1/channels/([A-Za-z0-9_.-]{1,64})/current")  # the route's own channel pattern
_WANTED = {b"authorization", b"if-none-match", b"x-model-version"}
_BODY = {b"content-length", b"transfer-encoding"}

Answer = Callable[[str, str, str, "str | None"], Awaitable["list[tuple[bytes, bytes]] | None"]]


def poll_headers(scope: dict[str, Any]) -> tuple[str, str, str, str | None] | None:
    """(channel, authorization, if_none_match, x_model_version) of an unchanged-release poll, else None."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
        return None
    match = POLL_PATH.fullmatch(scope["path"])
    if match is None:
        return None
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _BODY:  # a GET with a body: the full route (behind the body limit) decides
            return None
        if name in _WANTED:
            if name in found:  # a repeated header: let the full route decide what it means
                return None
            found[name] = value.decode("latin-1")
    if b"authorization" not in found or b"if-none-match" not in found:
        return None
    return match.group(1), found[b"authorization"], found[b"if-none-match"], found.get(b"x-model-version")


class FastPoll:
    """ASGI middleware: a 304 for an unchanged release straight from ``answer``; everything else passes on."""

    def __init__(self, app: Any, answer: Answer) -> None:
        self.app, self.answer = app, answer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        poll = poll_headers(scope)
        if poll is not None:
            headers = await self.answer(*poll)
            if headers is not None:
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)
