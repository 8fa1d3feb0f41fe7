"""The admin API (``/v1/admin/…``): publish, promote, roll back, roll out, add and revoke devices,
forget a device's samples, export samples, and the drift table, for an operator's CLI on another host.

Every endpoint depends on ``require_admin(authorization)``, the one admin-token check the app
makes (:func:`cloud.service.auth.admin_guard`), as a router-wide dependency that runs before any
body is parsed; a device token is not the admin token, so it never gets past it. A bundle is uploaded as an uncompressed tar of its directory; only the
bundle's own file names are taken from it, as regular files, within a size cap.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from device.errors import EdgeloopError

BUNDLE_MEMBERS = ("manifest.json", "model.tflite", "canary.npz")
Auth = Annotated[str | None, Header()]  # module level: FastAPI resolves these (string) annotations in the globals
MAX_BUNDLE_BYTES = 64 << 20
PUBLISH_PATH = "/v1/admin/versions"  # the one body allowed past the service's request cap, up to MAX_BUNDLE_BYTES


@dataclass(frozen=True)
class AdminContext:
    """What the admin endpoints act on: the store, the registry, and the signing key (loaded on use)."""

    sessions: Any
    registry: Any
    key_path: Path
    require_admin: Callable[[str | None], None]

    def signing_key(self) -> Any:
        from cloud.release.signing import load_private_key

        if not self.key_path.is_file():
            raise HTTPException(409, f"the server has no signing key at {self.key_path}; run 'edgeloop cloud keygen'")
        return load_private_key(self.key_path)


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=1, le=2**31)]


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)]


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=1, le=2**31)]
    channel: Annotated[str, Field(min_length=1, max_length=64)] = "stable"
    stages: Annotated[str, Field(max_length=200)] = "5,25,100"
    hold: Annotated[str, Field(max_length=32)] = "10m"
    min_devices: Annotated[int, Field(ge=1, le=10**6)] = 1
    min_labelled: Annotated[int, Field(ge=1, le=10**9)] = 20
    min_predictions: Annotated[int, Field(ge=1, le=10**9)] = 20
    max_rollback_rate: Annotated[float, Field(ge=0, le=1)] | None = 0.1
    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = 0.01
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = 0.05
    max_drift: Annotated[float, Field(ge=0, le=1e6)] | None = None

    def plan(self) -> Any:
        from cloud.service.rollout import RolloutPlan, Thresholds, parse_duration, parse_stages

        return RolloutPlan(stages=parse_stages(self.stages), hold_s=parse_duration(self.hold),
                           min_devices=self.min_devices, min_labelled=self.min_labelled,
                           min_predictions=self.min_predictions,
                           thresholds=Thresholds(self.max_rollback_rate, self.max_error_rate, self.max_accuracy_drop,
                                                 self.max_drift))


def extract_bundle(body: bytes, dest: Path) -> None:
    """Unpack an uploaded bundle tar into ``dest``: only known file names, regular files, nothing else."""
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name not in BUNDLE_MEMBERS or not member.isreg():
                    continue
                if member.size > MAX_BUNDLE_BYTES:
                    raise HTTPException(413, f"{name} is over {MAX_BUNDLE_BYTES} bytes")
                src = tar.extractfile(member)
                if src is not None:
                    (dest / name).write_bytes(src.read(MAX_BUNDLE_BYTES + 1))
    except tarfile.TarError as exc:
        raise HTTPException(400, f"the body is not a tar of a bundle directory ({exc})") from None
    for name in ("manifest.json", "model.tflite"):
        if not (dest / name).is_file():
            raise HTTPException(400, f"the uploaded bundle has no {name}")


def bundle_tar(bundle_dir: Path | str) -> bytes:
    """The upload body for a bundle directory (what ``extract_bundle`` takes)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:") as tar:
        for name in BUNDLE_MEMBERS:
            path = Path(bundle_dir) / name
            if path.is_file():
                tar.add(path, arcname=name)
    return out.getvalue()


def admin_router(ctx: AdminContext) -> APIRouter:
    from cloud.service.registry import RegistryError
    from cloud.service.rollout import RolloutError

    def admin_only(authorization: Auth = None) -> None:
        ctx.require_admin(authorization)

    # a router-wide dependency runs before any body is parsed: no admin token, no look at the body
    router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin_only)])

    def guarded(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (RegistryError, RolloutError) as exc:
            raise HTTPException(409, str(exc)) from None
        except EdgeloopError as exc:
            raise HTTPException(400, str(exc)) from None

    @router.get("/versions", summary="Every published version, newest first")
    def versions() -> list[dict[str, Any]]:
        return ctx.registry.versions()

    @router.post("/versions", summary="Publish a bundle (body: a tar of its directory), signed by the server's key")
    async def publish(request: Request, channel: str | None = None, note: str = "",
                      accuracy: float | None = None) -> dict[str, Any]:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BUNDLE_BYTES:
                raise HTTPException(413, f"a bundle upload is at most {MAX_BUNDLE_BYTES} bytes")
        tmp = Path(tempfile.mkdtemp(prefix="edgeloop-upload-"))
        try:
            extract_bundle(bytes(body), tmp)
            key = ctx.signing_key()

            def publish_now() -> Any:
                return guarded(lambda: ctx.registry.publish(tmp, channel or None, key, accuracy=accuracy,
                                                            note=note[:500]))
            try:
                release = await run_in_threadpool(publish_now)
            except (ValueError, OSError) as exc:
                raise HTTPException(400, f"not a valid bundle: {exc}") from None
            return release.to_json()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @router.post("/channels/{channel}/promote", summary="Make a version current on a channel")
    def promote(channel: str, body: PromoteIn) -> dict[str, Any]:
        return guarded(lambda: ctx.registry.promote(body.version, channel, ctx.signing_key())).to_json()

    @router.post("/channels/{channel}/rollback", summary="Make a channel's previous version current again")
    def rollback(channel: str) -> dict[str, Any]:
        return guarded(lambda: ctx.registry.rollback(channel, ctx.signing_key())).to_json()

    @router.post("/rollouts", summary="Start a staged rollout of a version on a channel")
    def start(body: RolloutIn) -> dict[str, Any]:
        from cloud.service.rollout_store import start_rollout

        return guarded(lambda: start_rollout(ctx.sessions, ctx.registry, body.version, body.channel, body.plan(),
                                             signing_key=ctx.signing_key()))

    @router.get("/rollouts", summary="Every rollout with its decisions, newest first")
    def rollouts() -> list[dict[str, Any]]:
        from cloud.service.rollout_store import rollout_status

        return rollout_status(ctx.sessions, ctx.registry)

    @router.get("/rollouts/{rollout}", summary="One rollout (by id, or a channel's active or latest one)")
    def rollout(rollout: str) -> dict[str, Any]:
        from cloud.service.rollout_store import rollout_status

        return guarded(lambda: rollout_status(ctx.sessions, ctx.registry, rollout))[0]

    @router.post("/rollouts/{rollout}/{action}", summary="pause, resume or abort a rollout; returns its status")
    def act(rollout: str, action: str) -> dict[str, Any]:
        from cloud.service.rollout_store import rollout_status, set_state

        row = guarded(lambda: set_state(ctx.sessions, rollout, action, registry=ctx.registry,
                                        signing_key=ctx.signing_key()))
        return rollout_status(ctx.sessions, ctx.registry, row["id"])[0]

    @router.post("/devices", summary="Register a device; returns its token (shown once)")
    def add(body: DeviceIn) -> dict[str, str]:
        from cloud.service.auth import add_device

        try:
            return {"device": body.name, "token": add_device(ctx.sessions, body.name)}
        except EdgeloopError as exc:
            raise HTTPException(409, str(exc)) from None

    @router.post("/devices/{name}/revoke", summary="Revoke a device's token at once")
    def revoke(name: str) -> dict[str, str]:
        from cloud.service.auth import revoke_device

        try:
            revoke_device(ctx.sessions, name)
        except EdgeloopError as exc:
            raise HTTPException(404, str(exc)) from None
        return {"device": name, "revoked": "yes"}

    @router.delete("/devices/{name}/samples", summary="Delete every sample a device sent (forget-device)")
    def forget(name: str) -> dict[str, Any]:
        from cloud.service.governance import UnknownDeviceName, forget_device

        try:
            return {"device": name, "deleted": forget_device(ctx.sessions, name)}
        except UnknownDeviceName as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/samples", summary="Export samples as JSON lines (newest first)")
    def export(version: str | None = None, labelled: bool = False,
               limit: Annotated[int, Field(ge=1, le=100_000)] = 1000) -> StreamingResponse:
        from cloud.service.governance import iter_samples

        limit = max(1, min(int(limit), 100_000))

        def lines() -> Iterator[bytes]:
            for sample in iter_samples(ctx.sessions, version, labelled, limit):
                yield (json.dumps(sample) + "\n").encode()
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.get("/drift", summary="Drift (PSI) per version, and per device with per_device=true")
    def drift(per_device: bool = False, since: float = 0.0) -> list[dict[str, Any]]:
        from cloud.service.summaries import drift_table

        return drift_table(ctx.sessions, ctx.registry, since=since, per_device=per_device)

    return router
