"""The model registry: published versions, channels, promote and roll back.

A version's files are copied to ``DATA/blobs/<id>/``, given canary inputs, their
manifest's ``version`` set to the registry id, and signed; the database keeps their
hashes. A channel's history is a stack: publishing or promoting pushes, rolling back pops.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.service.db import ChannelEntry, Statement, Version
from cloud.service.epochs import install as install_change_counters
from device.agent.updater import BUNDLE_FILES
from device.errors import EdgeloopError
from device.runtime.bundle import MANIFEST_NAME, read_manifest, write_bundle

install_change_counters()  # every write to the release tables bumps the "releases" counter

SOURCE_DIR = "source"  # model.keras + config.json of the run a version came from, for retraining


class RegistryError(EdgeloopError):
    """No such version or channel, or a channel with nothing to roll back to."""


@dataclass(frozen=True)
class Release:
    version: int
    name: str
    mode: str
    model_sha256: str
    files: dict[str, dict[str, Any]]
    accuracy: float | None
    created: float
    statement: dict[str, Any] | None = None  # the channel's signed release statement (None: unsigned)

    @property
    def etag(self) -> str:
        """Names the version and its release statement: a re-signed statement (a rollback) is a new ETag."""
        sequence = f"-s{self.statement['sequence']}" if self.statement else ""
        return f'"v{self.version}-{self.model_sha256[:16]}{sequence}"'

    def to_json(self, base_url: str = "") -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "mode": self.mode, "etag": self.etag,
                "accuracy": self.accuracy, "created": self.created,
                "files": {n: {**meta, "url": f"{base_url}/v1/versions/{self.version}/files/{n}"}
                          for n, meta in self.files.items()}, "statement": self.statement}


def _release(v: Version, statement: dict[str, Any] | None = None) -> Release:
    return Release(v.id, v.name, v.mode, v.model_sha256, json.loads(v.files), v.accuracy, v.created, statement)


class Registry:
    def __init__(self, sessions: sessionmaker, data_dir: Path | str) -> None:
        self.sessions = sessions
        self.blobs = Path(data_dir) / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def version_dir(self, version: int) -> Path:
        return self.blobs / str(version)

    def publish(self, bundle_dir: Path | str, channel: str | None, signing_key: Any | None,
                accuracy: float | None = None, source_run: Path | None = None, parent: int | None = None,
                note: str = "", canary_samples: int = 16, check_canary: bool = True) -> Release:
        """Register ``bundle_dir`` as a new version (and make it ``channel``'s current one, if given).

        ``accuracy`` defaults to the manifest's verified test accuracy. A canary the bundle brings
        must pass the same health check a device runs, unless ``check_canary`` is off (tests of the
        device's rollback). ``signing_key`` None publishes an unsigned bundle, which devices refuse.
        """
        from cloud.release.signing import public_raw
        from device.agent.verify_signature import key_id

        src = Path(bundle_dir)
        manifest = read_manifest(src)
        model = (src / manifest.model_file).read_bytes()
        if accuracy is None:  # the export's own verified accuracy on its test split
            accuracy = manifest.metrics.get("tflite_accuracy")
        with self.sessions.begin() as s:
            row = Version(name=manifest.name, created=time.time(), mode=manifest.mode, model_sha256=manifest.sha256,
                          files="{}", accuracy=accuracy, parent=parent, note=note,
                          key_id=key_id(public_raw(signing_key)) if signing_key is not None else None)
            s.add(row)
            s.flush()
            vid = row.id
        target = self.version_dir(vid)
        try:
            self._write_blobs(src, target, model, manifest, vid, signing_key, source_run, canary_samples)
            if check_canary:
                _check_canary(target)
        except BaseException:  # leave no half-published version behind
            shutil.rmtree(target, ignore_errors=True)
            with self.sessions.begin() as s:
                s.execute(delete(Version).where(Version.id == vid))
            raise
        with self.sessions.begin() as s:
            row = s.get(Version, vid)
            row.files = json.dumps(self._hash_files(target))
            statement = None
            if channel:
                s.add(ChannelEntry(channel=channel, version_id=vid, time=time.time()))
                statement = self._sign(s, channel, vid, signing_key)
            return _release(row, statement)

    def _sign(self, s: Session, channel: str, version: int, signing_key: Any | None) -> dict[str, Any] | None:
        """Record a new release statement for ``channel`` (sequence one above its last); None without a key."""
        if signing_key is None:
            return None
        from cloud.release.signing import sign_release

        last = s.scalars(select(func.max(Statement.sequence)).where(Statement.channel == channel)).one()
        statement = sign_release(self.version_dir(version), signing_key, channel, (last or 0) + 1, version).to_json()
        s.add(Statement(channel=channel, sequence=statement["sequence"], version_id=version,
                        body=json.dumps(statement), time=time.time()))
        return statement

    @staticmethod
    def _statement(s: Session, channel: str, version: int) -> dict[str, Any] | None:
        """The newest statement naming ``version`` as ``channel``'s release."""
        row = s.scalars(select(Statement).where(Statement.channel == channel, Statement.version_id == version)
                        .order_by(Statement.sequence.desc()).limit(1)).first()
        return None if row is None else json.loads(row.body)

    @staticmethod
    def _write_blobs(src: Path, target: Path, model: bytes, manifest: Any, vid: int, signing_key: Any | None,
                     source_run: Path | None, canary_samples: int) -> None:
        from dataclasses import replace

        from cloud.release.canary import write_canary
        from cloud.release.signing import sign_bundle
        from device.agent.verify_signature import CANARY_NAME

        shutil.rmtree(target, ignore_errors=True)
        write_bundle(target, model, replace(manifest, version=str(vid)))
        if (src / CANARY_NAME).is_file():
            shutil.copy2(src / CANARY_NAME, target / CANARY_NAME)
        else:
            write_canary(target, n=canary_samples)
        if signing_key is not None:
            sign_bundle(target, signing_key)
        if source_run is not None:
            (target / SOURCE_DIR).mkdir(exist_ok=True)
            for name in ("model.keras", "config.json"):
                shutil.copy2(Path(source_run) / name, target / SOURCE_DIR / name)

    def rehash_files(self, version: int) -> Release:
        """Record the blobs' current hashes (after editing them by hand: repairs, or tests of tampering)."""
        with self.sessions.begin() as s:
            row = self._get(s, version)
            row.files = json.dumps(self._hash_files(self.version_dir(version)))
            return _release(row)

    @staticmethod
    def _hash_files(root: Path) -> dict[str, dict[str, Any]]:
        out = {}
        for name in BUNDLE_FILES:
            path = root / name
            if path.is_file():
                content = path.read_bytes()
                out[name] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
        return out

    def _get(self, s: Session, version: int) -> Version:
        row = s.get(Version, version)
        if row is None:
            raise RegistryError(f"no version {version} in the registry")
        return row

    def get(self, version: int) -> Release:
        with self.sessions() as s:
            return _release(self._get(s, version))

    def current(self, channel: str) -> Release | None:
        """The channel's current version, with its newest release statement for that channel."""
        with self.sessions() as s:
            entry = s.scalars(select(ChannelEntry).where(ChannelEntry.channel == channel)
                              .order_by(ChannelEntry.id.desc()).limit(1)).first()
            if entry is None:
                return None
            return _release(self._get(s, entry.version_id), self._statement(s, channel, entry.version_id))

    def sign_statement(self, channel: str, version: int, signing_key: Any) -> dict[str, Any] | None:
        """Sign a new release statement naming ``version`` on ``channel`` without changing the channel: a
        staged rollout serves it to the devices in its stage, and a halted one re-announces the base version."""
        with self.sessions.begin() as s:
            self._get(s, version)
            return self._sign(s, channel, version, signing_key)

    def release_on(self, channel: str, version: int) -> Release:
        """``version`` as ``channel``'s release, with its newest statement there (what a rollout serves)."""
        with self.sessions() as s:
            return _release(self._get(s, version), self._statement(s, channel, version))

    def promote(self, version: int, channel: str, signing_key: Any | None = None) -> Release:
        """Make ``version`` current on ``channel``; with ``signing_key``, sign the release statement devices
        need to take it (without one, devices keep what they run)."""
        with self.sessions.begin() as s:
            row = self._get(s, version)
            s.add(ChannelEntry(channel=channel, version_id=version, time=time.time()))
            return _release(row, self._sign(s, channel, version, signing_key) or self._statement(s, channel, version))

    def rollback(self, channel: str, signing_key: Any | None = None) -> Release:
        """Make the channel's previous version current again; returns it.

        Devices refuse a release statement older than the one they run, so a rollback that
        should reach devices is signed anew (``signing_key``), with the next sequence number.
        """
        with self.sessions.begin() as s:
            entries = s.scalars(select(ChannelEntry).where(ChannelEntry.channel == channel)
                                .order_by(ChannelEntry.id.desc()).limit(2)).all()
            if len(entries) < 2:
                raise RegistryError(f"channel {channel!r} has no earlier version to roll back to")
            s.execute(delete(ChannelEntry).where(ChannelEntry.id == entries[0].id))
            version = entries[1].version_id
            return _release(self._get(s, version),
                            self._sign(s, channel, version, signing_key) or self._statement(s, channel, version))

    def versions(self) -> list[dict[str, Any]]:
        """Every version, newest first, with the channels it is current on."""
        by_version: dict[int, list[str]] = {}
        for ch, vid in self.channels().items():
            by_version.setdefault(vid, []).append(ch)
        with self.sessions() as s:
            rows = s.scalars(select(Version).order_by(Version.id.desc())).all()
            return [{**_release(v).to_json(), "channels": sorted(by_version.get(v.id, [])), "parent": v.parent,
                     "note": v.note, "signed": v.key_id is not None} for v in rows]

    def channels(self) -> dict[str, int]:
        with self.sessions() as s:
            latest = (select(ChannelEntry.channel, func.max(ChannelEntry.id).label("id"))
                      .group_by(ChannelEntry.channel).subquery())
            return {ch: vid for ch, vid in s.execute(
                select(ChannelEntry.channel, ChannelEntry.version_id).join(latest, ChannelEntry.id == latest.c.id)).all()}

    def file_path(self, version: int, name: str) -> Path:
        release = self.get(version)
        if name not in release.files:
            raise RegistryError(f"version {version} has no file {name!r}")
        return self.version_dir(version) / name

    def source_run(self, version: int) -> Path:
        path = self.version_dir(version) / SOURCE_DIR
        if not (path / "model.keras").is_file():
            raise RegistryError(f"version {version} was published without its training run (--run), "
                                "so it cannot be fine-tuned")
        return path


def _check_canary(bundle: Path) -> None:
    from device.agent.health import check_health, read_canary
    from device.runtime.runtime import Runtime

    report = check_health(Runtime(bundle), read_canary(bundle))
    if not report.healthy:
        raise RegistryError(f"{bundle}: refusing to publish, the bundle fails its own canary check ({report.reason})")


def manifest_path(registry: Registry, version: int) -> Path:
    return registry.version_dir(version) / MANIFEST_NAME
