"""The FastAPI app: release endpoints for devices (a running rollout's version to the devices in its
stage), ingestion of samples, events and interval summaries, the admin API, and the dashboard.

Device endpoints take ``Authorization: Bearer <device token>``; the dashboard, the version
listing, the API docs and the admin API (:mod:`cloud.service.admin`) take the admin token
(``serve --admin-token-file``) and are off without one; ``/healthz`` is open. Status codes: 304 unchanged release; 400 inconsistent
content or a missing Idempotency-Key; 401 unknown token; 404 no release; 409 an
Idempotency-Key reused with another body; 413 request or device quota too large; 422 schema
violation (always a JSON body); 429 too fast, or too many failed authentications.

Every request is authenticated before its body is read, and every body is capped
(:class:`BodyLimit`) before any of it is parsed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import update
from starlette.concurrency import run_in_threadpool

from cloud.service import dashboard
from cloud.service.admin import MAX_BUNDLE_BYTES, PUBLISH_PATH, AdminContext, admin_router
from cloud.service.auth import RateLimit, RateLimiter, TokenCache, admin_guard
from cloud.service.db import Device, Event, database_url, make_engine, make_sessionmaker, volatile_engine
from cloud.service.epochs import RELEASES, EpochCache, Snapshot
from cloud.service.fast_poll import FastPoll
from cloud.service.ingest import (
    BadSample,
    BatchIn,
    IdempotencyConflict,
    QuotaExceeded,
    no_surrogates,
    store_batch,
    validation_errors,
)
from cloud.service.registry import Registry, RegistryError
from cloud.service.rollout_store import active_rollout
from cloud.service.shared_limits import BatchedTakes, SharedRateLimiter
from cloud.service.summaries import SummaryIn, store_summary
from cloud.service.ticker import Ticker, TickerConfig

SEEN_RESOLUTION_S = 5.0  # "last seen" on the dashboard is this precise; it saves a write per poll
SEEN_FLUSH_S = 1.0  # polls' "last seen" times are written together this often


@dataclass(frozen=True)
class ServiceConfig:
    data_dir: Path
    database_url: str | None = None  # default: $DATABASE_URL, else SQLite in data_dir
    max_request_bytes: int = 1 << 20
    max_batch_samples: int = 500
    max_samples_per_device: int = 1_000_000
    rate: RateLimit = field(default_factory=RateLimit)
    # a publish, promote, rollout step or revocation reaches "unchanged" (304) answers at most this much later,
    # in every process and host alike, and every other answer at once (:mod:`cloud.service.epochs`)
    release_cache_s: float = 1.0
    admin_token: str | None = None  # guards the dashboard, /v1/versions and the docs; None: they are off
    # failed authentications per client address: beyond this, 429 instead of 401 (slows token guessing)
    auth_failures: RateLimit = field(default_factory=lambda: RateLimit(rate=2.0, burst=30))
    # rate limits in the database, shared by every worker and host (serve --workers N turns it on)
    shared_limits: bool = False
    ticker: TickerConfig = field(default_factory=TickerConfig)  # rollouts, retention
    auto_retrain: Any = None  # an AutoRetrainConfig: retrain when the channel's current version drifts
    signing_key_path: Path | None = None  # default DATA/keys/signing.key: signs rollout and admin release statements
    worker_header: bool = False  # X-Edgeloop-Worker: <pid> on every response (to see the workers share the load)
    fast_poll: bool = True  # answer unchanged-release polls without FastAPI (off: to compare, in tests and benchmarks)

    def __post_init__(self) -> None:
        if self.release_cache_s < 0:
            raise ValueError(f"--release-cache must be >= 0 seconds, got {self.release_cache_s}")
        if self.max_request_bytes < 1024 or self.max_batch_samples < 1 or self.max_samples_per_device < 1:
            raise ValueError("service limits must be positive (max_request_bytes >= 1024)")


MAX_COUNTER = 2**53  # counters are exact integers in JSON and fit every database's BIGINT
MAX_VERSION = 2**62


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Annotated[str, Field(min_length=1, max_length=32), AfterValidator(no_surrogates)]
    version: Annotated[str, Field(max_length=64), AfterValidator(no_surrogates)] | None = None
    detail: Annotated[str, Field(max_length=2000), AfterValidator(no_surrogates)] = ""
    counters: Annotated[dict[Annotated[str, Field(max_length=32), AfterValidator(no_surrogates)],
                             Annotated[int, Field(ge=0, le=MAX_COUNTER)]], Field(max_length=16)] = {}


class BodyLimit:
    """ASGI middleware: refuse any request body over ``max_bytes`` with 413, before the app reads it.

    A declared ``Content-Length`` over the limit is refused without reading a byte; a body that
    streams past the limit is cut off there. Either way nothing over the limit is buffered.
    ``overrides`` gives a path its own limit (the admin bundle upload).
    """

    def __init__(self, app: Any, max_bytes: int, overrides: dict[str, int] | None = None) -> None:
        self.app, self.default_bytes, self.overrides = app, max_bytes, overrides or {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.overrides.get(scope.get("path", ""), self.default_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > max_bytes):
                await _too_large(send, max_bytes)
                return
        seen, started = 0, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, max_bytes)


class _BodyTooLarge(Exception):
    pass


def worker_header() -> tuple[bytes, bytes]:
    """``X-Edgeloop-Worker: <pid>`` of this process: which worker of ``serve --workers N`` answered."""
    return (b"x-edgeloop-worker", str(os.getpid()).encode())


class WorkerHeader:
    """ASGI middleware: :func:`worker_header` on every response the app makes (FastPoll adds its own)."""

    def __init__(self, app: Any) -> None:
        self.app, self.header = app, worker_header()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)


async def _too_large(send: Any, max_bytes: int) -> None:
    body = f'{{"detail": "request body is over the limit of {max_bytes} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` references inlined, to embed it anywhere in an OpenAPI document."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _poll_take(limiter: Any, engine: Any) -> Callable[[int], Awaitable[float]]:
    """How the 304 fast path takes a device's token, chosen once: in memory, on the event loop; in
    PostgreSQL, the takes of one loop turn in one autocommit statement, on the loop (a thread hop costs
    more than the round trip); in SQLite, in a thread, because the bucket may wait on the file's write lock."""
    if isinstance(limiter, SharedRateLimiter):
        if engine.dialect.name == "postgresql":
            return BatchedTakes(limiter).allow

        async def in_thread(device_id: int) -> float:
            return await run_in_threadpool(limiter.allow, device_id)

        return in_thread

    async def in_memory(device_id: int) -> float:
        return limiter.allow(device_id)

    return in_memory


def create_app(config: ServiceConfig) -> FastAPI:
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url(config.data_dir, config.database_url))
    sessions = make_sessionmaker(engine)
    registry = Registry(sessions, config.data_dir)
    release_cache = EpochCache(engine, max_age_s=60.0)
    tokens = TokenCache(sessions, EpochCache(engine, max_age_s=60.0))
    if config.shared_limits:
        buckets = volatile_engine(engine)  # a token bucket need not reach the disk before a reply
        limiter: Any = SharedRateLimiter(buckets, config.rate, "dev")
        auth_failures: Any = SharedRateLimiter(buckets, config.auth_failures, "auth")
    else:
        limiter, auth_failures = RateLimiter(config.rate), RateLimiter(config.auth_failures)
    poll_take = _poll_take(limiter, engine)
    require_admin = admin_guard(config.admin_token)
    key_path = Path(config.signing_key_path or Path(config.data_dir) / "keys" / "signing.key")
    app = FastAPI(title="edgeloop service", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  description="Signed model releases for a device fleet, sample ingestion, and a dashboard.")
    app.state.registry, app.state.sessions, app.state.engine = registry, sessions, engine
    # the last added is the outermost. A 304 from FastPoll passes no other middleware of ours (each layer
    # is a coroutine per request): it reads no body, so BodyLimit has nothing to guard, and it adds the
    # worker header itself
    if config.worker_header:
        app.add_middleware(WorkerHeader)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes, overrides={PUBLISH_PATH: MAX_BUNDLE_BYTES})
    if config.fast_poll:
        app.add_middleware(FastPoll, answer=lambda *poll: poll_not_modified(*poll))
    worker_tag = [worker_header()] if config.worker_header else []
    admin = AdminContext(sessions, registry, key_path, require_admin)
    app.include_router(admin_router(admin))

    def signing_key() -> Any:
        from cloud.release.signing import load_private_key

        return load_private_key(key_path) if key_path.is_file() else None

    extra = None
    if config.auto_retrain is not None:
        from cloud.service.auto_retrain import check_drift_and_retrain, retrain_process

        launch = retrain_process(Path(config.data_dir), config.database_url, config.auto_retrain.channel)

        def extra() -> None:
            started = check_drift_and_retrain(config.auto_retrain, sessions, registry, launch)
            if started:
                import logging

                logging.getLogger("edgeloop.service").warning("auto-retrain: v%s drifted (PSI %.3f); retraining",
                                                              started["version"], started["drift"])
    ticker = Ticker(config.ticker, sessions, registry, signing_key, extra)
    app.state.ticker = ticker
    app.router.on_startup.append(ticker.start)
    app.router.on_shutdown.append(ticker.stop)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(exc.errors())}, status_code=422)

    def snapshot(request: Request) -> Snapshot:
        """The change counters as this request first read them (one query per request)."""
        snap = request.scope.get("edgeloop.snapshot")
        if snap is None:
            snap = request.scope["edgeloop.snapshot"] = release_cache.snapshot()
        return snap

    def authenticate(request: Request, authorization: str | None) -> int:
        device_id = None
        if authorization and authorization.startswith("Bearer "):
            device_id = tokens.device_id(authorization[7:].strip(), snapshot(request))
        if device_id is not None:
            return device_id
        client = request.client.host if request.client else "?"
        wait = auth_failures.allow(client)
        if wait > 0:
            raise HTTPException(429, f"too many failed authentications from {client}; retry in {wait:.1f} s",
                                headers={"Retry-After": f"{max(1, round(wait))}"})
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "missing 'Authorization: Bearer <device token>'")
        raise HTTPException(401, "unknown or revoked device token; register the device with 'edgeloop cloud add-device'")

    def throttle(device_id: int) -> None:
        wait = limiter.allow(device_id)
        if wait > 0:
            raise HTTPException(429, f"too many requests from this device; retry in {wait:.2f} s",
                                headers={"Retry-After": f"{max(1, round(wait))}"})

    async def read_body(request: Request) -> bytes:
        """The body, after authentication; BodyLimit has already capped it."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_request_bytes:
                raise HTTPException(413, f"request body is over the limit of {config.max_request_bytes} bytes")
        return bytes(body)

    last_written: dict[int, tuple[float, str | None]] = {}

    seen_pending: dict[int, float] = {}  # device id -> when it last polled, not yet written
    seen_flushed = [time.monotonic()]
    flush_lock = threading.Lock()

    def news(device_id: int, running: str | None) -> str | None:
        """The running version a device reports, if it is not the one last written for it."""
        running = running[:64] if running else None
        return running if running not in (None, last_written.get(device_id, (0.0, None))[1]) else None

    def flush_due() -> bool:
        return time.monotonic() - seen_flushed[0] >= SEEN_FLUSH_S

    def seen_is_due(device_id: int, running: str | None) -> bool:
        """Whether a poll has anything to write now: a new running version, or a batch of "last seen" times."""
        return news(device_id, running) is not None or flush_due()

    def seen(device_id: int, running: str | None = None, flush: bool = True, **values: Any) -> None:
        """Record that a device called in. News (a new running version, an event's values) is written at once;
        a plain poll only marks the device seen, and those marks are written together, one transaction
        every SEEN_FLUSH_S, each device at most every SEEN_RESOLUTION_S (a write per poll would cost
        more than the poll)."""
        now = time.time()
        written_at, written_running = last_written.get(device_id, (0.0, None))
        fresh = news(device_id, running)
        if values or fresh:
            last_written[device_id] = (now, fresh or written_running)
            seen_pending.pop(device_id, None)
            with sessions.begin() as s:
                changes = {"last_seen": now, **values}
                if fresh:
                    changes["running_version"] = fresh
                s.execute(update(Device).where(Device.id == device_id).values(**changes))
        elif now - written_at >= SEEN_RESOLUTION_S:
            last_written[device_id] = (now, written_running)
            seen_pending[device_id] = now
        if flush and flush_due():
            flush_seen()

    def flush_seen() -> None:
        """Write every pending "last seen" in one transaction."""
        if not flush_lock.acquire(blocking=False):
            return  # another thread is writing them
        try:
            seen_flushed[0] = time.monotonic()
            batch = [{"id": d, "last_seen": seen_pending.pop(d)} for d in list(seen_pending)]
            if batch:
                with sessions.begin() as s:
                    s.execute(update(Device), batch)  # an UPDATE by primary key, executemany
        finally:
            flush_lock.release()

    app.router.on_shutdown.append(flush_seen)

    names: dict[int, str] = {}  # device id -> name (devices are never renamed)

    def device_name(device_id: int) -> str:
        name = names.get(device_id)
        if name is None:
            with sessions() as s:
                name = names[device_id] = s.get(Device, device_id).name
        return name

    def current_release(channel: str, device_id: int | None, snap: Snapshot) -> Any:
        """The release for this device: a running rollout's version if the device is in its stage, else
        the channel's current one. Cached in this process until the "releases" counter moves."""
        rollout = release_cache.get(snap, RELEASES, ("rollout", channel), lambda: active_rollout(sessions, channel))
        if rollout is not None and device_id is not None and rollout.includes(device_name(device_id)):
            return release_cache.get(snap, RELEASES, ("on", channel, rollout.version),
                                     lambda: registry.release_on(channel, rollout.version))
        return release_cache.get(snap, RELEASES, channel, lambda: registry.current(channel))

    def unchanged(release: Any, if_none_match: str | None) -> bool:
        """Whether ``If-None-Match`` names the release's ETag (one of a comma-separated list)."""
        return bool(if_none_match) and release.etag in [t.strip() for t in if_none_match.split(",")]

    async def poll_not_modified(channel: str, authorization: str, if_none_match: str,
                                model_version: str | None) -> list[tuple[bytes, bytes]] | None:
        """The 304 headers for a poll whose release is unchanged (:mod:`cloud.service.fast_poll`), or None to let
        the full route answer. The same steps as :func:`current`, with the throttle moved after the
        release check so that a poll handed on has taken nothing: the route then does it all again."""
        if not authorization.startswith("Bearer "):
            return None
        # the counters as read at most release_cache_s ago: a publish, promote or revocation reaches the
        # 304 answers that late at most, and every other answer at once (the route reads them afresh)
        snap = release_cache.recent_snapshot(config.release_cache_s)
        device_id = tokens.device_id(authorization[7:].strip(), snap)
        if device_id is None:
            return None
        release = current_release(channel, device_id, snap)
        if release is None or not unchanged(release, if_none_match):
            return None
        wait = await poll_take(device_id)
        if wait > 0:
            return None  # the route answers 429 with its Retry-After
        if seen_is_due(device_id, model_version):
            await run_in_threadpool(seen, device_id, model_version)  # a write: off the event loop
        else:
            seen(device_id, model_version, flush=False)  # only marked, in memory
        return [(b"etag", release.etag.encode("latin-1")), (b"cache-control", b"no-cache"), *worker_tag]

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/channels/{channel}/current", summary="The channel's current release (304 if unchanged)")
    def current(request: Request,
                channel: Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")],
                authorization: Annotated[str | None, Header()] = None,
                if_none_match: Annotated[str | None, Header()] = None,
                x_model_version: Annotated[str | None, Header()] = None) -> Response:
        device_id = authenticate(request, authorization)
        throttle(device_id)
        seen(device_id, x_model_version)
        release = current_release(channel, device_id, snapshot(request))
        if release is None:
            raise HTTPException(404, f"nothing is published on channel {channel!r}")
        headers = {"ETag": release.etag, "Cache-Control": "no-cache"}
        if unchanged(release, if_none_match):
            return Response(status_code=304, headers=headers)
        return JSONResponse(release.to_json(), headers=headers)

    @app.get("/v1/versions/{version}/files/{name}", summary="Download one file of a release")
    def download(request: Request, version: Annotated[int, PathParam(ge=1, le=MAX_VERSION)],
                 name: Annotated[str, PathParam(max_length=64)],
                 authorization: Annotated[str | None, Header()] = None) -> FileResponse:
        authenticate(request, authorization)
        try:
            path = registry.file_path(version, name)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/v1/versions", summary="Every published version, newest first (admin token)")
    def versions(authorization: Annotated[str | None, Header()] = None) -> list[dict[str, Any]]:
        require_admin(authorization)
        return registry.versions()

    # the body is read by hand (after authentication, within the size limit), so its schema is declared here
    @app.post("/v1/samples", summary="Upload a batch of samples under an Idempotency-Key",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": inline_refs(BatchIn.model_json_schema())}}}})
    async def samples(request: Request, authorization: Annotated[str | None, Header()] = None,
                      idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        device_id = await run_in_threadpool(authenticate, request, authorization)  # a DB lookup: off the event loop
        await run_in_threadpool(throttle, device_id)  # with --workers, the bucket is in the database too
        body = await read_body(request)
        if not idempotency_key or len(idempotency_key) > 128:
            raise HTTPException(400, "an 'Idempotency-Key' header (1-128 characters) is required")
        try:
            batch = BatchIn.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, validation_errors(exc.errors())) from None
        if len(batch.samples) > config.max_batch_samples:
            raise HTTPException(413, f"{len(batch.samples)} samples in one batch; at most {config.max_batch_samples}")
        try:
            stored, replayed = await run_in_threadpool(store_batch, sessions, device_id, idempotency_key, batch,
                                                       config.max_samples_per_device)
        except BadSample as exc:
            raise HTTPException(400, str(exc)) from None
        except IdempotencyConflict as exc:
            raise HTTPException(409, str(exc)) from None
        except QuotaExceeded as exc:
            raise HTTPException(413, str(exc)) from None
        return {"stored": stored, "received": len(batch.samples), "replayed": replayed}

    @app.post("/v1/events", status_code=204, summary="Report an update, rollback, rejection or dropped samples",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": inline_refs(EventIn.model_json_schema())}}}})
    async def events(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
        device_id = await run_in_threadpool(authenticate, request, authorization)
        await run_in_threadpool(throttle, device_id)
        try:
            body = EventIn.model_validate_json(await read_body(request))
        except ValidationError as exc:
            raise HTTPException(422, validation_errors(exc.errors())) from None
        await run_in_threadpool(record_event, device_id, body)
        return Response(status_code=204)

    def record_event(device_id: int, body: EventIn) -> None:
        now = time.time()
        with sessions.begin() as s:
            s.add(Event(device_id=device_id, kind=body.kind, version=body.version, detail=body.detail, time=now))
        extra: dict[str, Any] = {"last_event": f"{body.kind}: {body.detail}"[:500]}
        if "dropped" in body.counters:
            extra["dropped"] = int(body.counters["dropped"])
        seen(device_id, body.version if body.kind == "updated" else None, **extra)

    @app.post("/v1/summaries", status_code=204, summary="An interval summary: counts, input statistics, "
                                                        "confidence histogram (drift and rollout health)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": inline_refs(SummaryIn.model_json_schema())}}}})
    async def summaries(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
        device_id = await run_in_threadpool(authenticate, request, authorization)  # a DB lookup: off the event loop
        await run_in_threadpool(throttle, device_id)
        try:
            body = SummaryIn.model_validate_json(await read_body(request))
        except ValidationError as exc:
            raise HTTPException(422, validation_errors(exc.errors())) from None
        problem = body.consistent()
        if problem is not None:
            raise HTTPException(400, f"inconsistent summary: {problem}")
        await run_in_threadpool(store_summary, sessions, device_id, body)
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse, summary="Fleet dashboard (admin token)")
    def index(authorization: Annotated[str | None, Header()] = None) -> HTMLResponse:
        require_admin(authorization)
        return HTMLResponse(dashboard.render(dashboard.dashboard_data(sessions, registry)))

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        require_admin(authorization)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(authorization: Annotated[str | None, Header()] = None) -> HTMLResponse:
        require_admin(authorization)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="edgeloop service")

    return app
