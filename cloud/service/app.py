"""The FastAPI app: release endpoints for devices, ingestion, events, and the dashboard.

Device endpoints take ``Authorization: Bearer <token>``. Status codes: 304 unchanged
release; 400 inconsistent content or a missing Idempotency-Key; 401 unknown token;
404 no release; 413 request or device quota too large; 422 schema violation; 429 too fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import update
from starlette.concurrency import run_in_threadpool

from cloud.service import dashboard
from cloud.service.auth import RateLimit, RateLimiter, TokenCache
from cloud.service.db import Device, Event, database_url, make_engine, make_sessionmaker
from cloud.service.ingest import BadSample, BatchIn, QuotaExceeded, store_batch
from cloud.service.registry import Registry, RegistryError

SEEN_RESOLUTION_S = 5.0  # "last seen" on the dashboard is this precise; it saves a write per poll


@dataclass(frozen=True)
class ServiceConfig:
    data_dir: Path
    database_url: str | None = None  # default: $DATABASE_URL, else SQLite in data_dir
    max_request_bytes: int = 1 << 20
    max_batch_samples: int = 500
    max_samples_per_device: int = 1_000_000
    rate: RateLimit = field(default_factory=RateLimit)
    release_cache_s: float = 1.0  # a publish or promote reaches devices at most this much later

    def __post_init__(self) -> None:
        if self.release_cache_s < 0:
            raise ValueError(f"release_cache_s must be >= 0, got {self.release_cache_s}")
        if self.max_request_bytes < 1024 or self.max_batch_samples < 1 or self.max_samples_per_device < 1:
            raise ValueError("service limits must be positive (max_request_bytes >= 1024)")


class EventIn(BaseModel):
    kind: Annotated[str, Field(min_length=1, max_length=32)]
    version: Annotated[str, Field(max_length=64)] | None = None
    detail: Annotated[str, Field(max_length=2000)] = ""
    counters: dict[str, int] = {}


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


def create_app(config: ServiceConfig) -> FastAPI:
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url(config.data_dir, config.database_url))
    sessions = make_sessionmaker(engine)
    registry = Registry(sessions, config.data_dir)
    tokens = TokenCache(sessions)
    limiter = RateLimiter(config.rate)
    app = FastAPI(title="edgeloop service", version="1",
                  description="Signed model releases for a device fleet, sample ingestion, and a dashboard.")
    app.state.registry, app.state.sessions, app.state.engine = registry, sessions, engine

    def authenticate(authorization: str | None) -> int:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "missing 'Authorization: Bearer <device token>'")
        device_id = tokens.device_id(authorization[7:].strip())
        if device_id is None:
            raise HTTPException(401, "unknown device token; register the device with 'edgeloop cloud add-device'")
        return device_id

    def throttle(device_id: int) -> None:
        wait = limiter.allow(device_id)
        if wait > 0:
            raise HTTPException(429, f"too many requests from this device; retry in {wait:.2f} s",
                                headers={"Retry-After": f"{max(1, round(wait))}"})

    last_written: dict[int, tuple[float, str | None]] = {}

    def seen(device_id: int, running: str | None = None, **values: Any) -> None:
        """Record that a device called in; polls write at most every SEEN_RESOLUTION_S unless something changed."""
        now = time.time()
        running = running[:64] if running else None
        written_at, written_running = last_written.get(device_id, (0.0, None))
        if not values and running in (None, written_running) and now - written_at < SEEN_RESOLUTION_S:
            return
        last_written[device_id] = (now, running or written_running)
        with sessions.begin() as s:
            changes = {"last_seen": now, **values}
            if running:
                changes["running_version"] = running
            s.execute(update(Device).where(Device.id == device_id).values(**changes))

    releases: dict[str, tuple[float, Any]] = {}

    def current_release(channel: str) -> Any:
        """The channel's release, cached briefly (the registry may change from another process)."""
        hit = releases.get(channel)
        if hit is not None and time.monotonic() - hit[0] < config.release_cache_s:
            return hit[1]
        release = registry.current(channel)
        releases[channel] = (time.monotonic(), release)
        return release

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/channels/{channel}/current", summary="The channel's current release (304 if unchanged)")
    def current(channel: str, authorization: Annotated[str | None, Header()] = None,
                if_none_match: Annotated[str | None, Header()] = None,
                x_model_version: Annotated[str | None, Header()] = None) -> Response:
        device_id = authenticate(authorization)
        throttle(device_id)
        seen(device_id, x_model_version)
        release = current_release(channel)
        if release is None:
            raise HTTPException(404, f"nothing is published on channel {channel!r}")
        headers = {"ETag": release.etag, "Cache-Control": "no-cache"}
        if if_none_match and release.etag in [t.strip() for t in if_none_match.split(",")]:
            return Response(status_code=304, headers=headers)
        return JSONResponse(release.to_json(), headers=headers)

    @app.get("/v1/versions/{version}/files/{name}", summary="Download one file of a release")
    def download(version: int, name: str, authorization: Annotated[str | None, Header()] = None) -> FileResponse:
        authenticate(authorization)
        try:
            path = registry.file_path(version, name)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/v1/versions", summary="Every published version, newest first")
    def versions() -> list[dict[str, Any]]:
        return registry.versions()

    # the body is read by hand (to enforce the size limit before parsing), so its schema is declared here
    @app.post("/v1/samples", summary="Upload a batch of samples under an Idempotency-Key",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": inline_refs(BatchIn.model_json_schema())}}}})
    async def samples(request: Request, authorization: Annotated[str | None, Header()] = None,
                      idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        device_id = authenticate(authorization)
        throttle(device_id)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_request_bytes:
            raise HTTPException(413, f"request body of {length} bytes is over the limit of {config.max_request_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_request_bytes:
                raise HTTPException(413, f"request body is over the limit of {config.max_request_bytes} bytes")
        if not idempotency_key or len(idempotency_key) > 128:
            raise HTTPException(400, "an 'Idempotency-Key' header (1-128 characters) is required")
        try:
            batch = BatchIn.model_validate_json(bytes(body))
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_input=False)) from None
        if len(batch.samples) > config.max_batch_samples:
            raise HTTPException(413, f"{len(batch.samples)} samples in one batch; at most {config.max_batch_samples}")
        try:
            stored, replayed = await run_in_threadpool(store_batch, sessions, device_id, idempotency_key, batch,
                                                       config.max_samples_per_device)
        except BadSample as exc:
            raise HTTPException(400, str(exc)) from None
        except QuotaExceeded as exc:
            raise HTTPException(413, str(exc)) from None
        return {"stored": stored, "received": len(batch.samples), "replayed": replayed}

    @app.post("/v1/events", status_code=204, summary="Report an update, rollback, rejection or dropped samples")
    def events(body: EventIn, authorization: Annotated[str | None, Header()] = None) -> Response:
        device_id = authenticate(authorization)
        throttle(device_id)
        now = time.time()
        with sessions.begin() as s:
            s.add(Event(device_id=device_id, kind=body.kind, version=body.version, detail=body.detail, time=now))
        extra: dict[str, Any] = {"last_event": f"{body.kind}: {body.detail}"[:500]}
        if "dropped" in body.counters:
            extra["dropped"] = int(body.counters["dropped"])
        seen(device_id, body.version if body.kind == "updated" else None, **extra)
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse, summary="Fleet dashboard")
    def index() -> HTMLResponse:
        return HTMLResponse(dashboard.render(dashboard.dashboard_data(sessions, registry)))

    return app
