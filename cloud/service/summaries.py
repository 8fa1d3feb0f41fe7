"""Interval summaries from agents: the request schema, storing one once, and reading them back.

Agents send one summary per version per interval, even when they collect no samples
(:mod:`device.agent.summary`). They feed drift scores (:mod:`cloud.service.drift`), rollout
health (:mod:`cloud.service.rollout_store`) and the dashboard's plots.
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from cloud.service.db import Device, Summary
from cloud.service.drift import DriftScore, add_summaries, drift_score
from device.agent.summary import CONFIDENCE_BINS, INPUT_BINS, MAX_CHANNELS

Count = Annotated[int, Field(ge=0, le=10**12)]


class SummaryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    start: float
    end: float
    predictions: Count
    errors: Count
    labelled: Count
    correct: Count
    confidence_sum: Annotated[float, Field(ge=0.0)]
    confidence_hist: Annotated[list[Count], Field(min_length=CONFIDENCE_BINS, max_length=CONFIDENCE_BINS)]
    prediction_hist: Annotated[list[Count], Field(max_length=100_000)]
    input_values: Count
    input_sum: Annotated[list[float], Field(max_length=MAX_CHANNELS)]
    input_sumsq: Annotated[list[float], Field(max_length=MAX_CHANNELS)]
    input_hist: Annotated[list[Annotated[list[Count], Field(min_length=INPUT_BINS, max_length=INPUT_BINS)]],
                          Field(max_length=MAX_CHANNELS)] | None = None

    @field_validator("start", "end", "confidence_sum")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @field_validator("input_sum", "input_sumsq")
    @classmethod
    def _finite_list(cls, v: list[float]) -> list[float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError("must be finite numbers")
        return v

    def consistent(self) -> str | None:
        """Why the counts contradict each other, or None."""
        if self.correct > self.labelled or self.labelled > self.predictions:
            return "correct <= labelled <= predictions must hold"
        if sum(self.confidence_hist) != self.predictions:
            return "confidence_hist must add up to predictions"
        if self.confidence_sum > self.predictions * (1 + 1e-6):
            return "confidence_sum cannot exceed predictions"
        if self.end < self.start:
            return "end must not be before start"
        return None


_ADD_SUMMARY = insert(Summary.__table__)


def store_summary(sessions: sessionmaker, device_id: int, summary: SummaryIn) -> bool:
    """Store a summary once (by the device's key); returns False for a resend."""
    now = time.time()
    body = summary.model_dump()
    try:
        with sessions.kw["bind"].begin() as conn:  # one Core INSERT: an ORM session costs more than the insert
            conn.execute(_ADD_SUMMARY, {
                "device_id": device_id, "key": summary.key, "version": summary.version, "start": summary.start,
                "end": min(summary.end, now), "received": now, "predictions": summary.predictions,
                "errors": summary.errors, "labelled": summary.labelled, "correct": summary.correct,
                "confidence_sum": summary.confidence_sum, "body": json.dumps(body, separators=(",", ":"))})
        return True
    except IntegrityError:
        return False


def summaries(sessions: sessionmaker, version: str | None = None, since: float = 0.0,
              device_ids: set[int] | None = None) -> list[dict[str, Any]]:
    """Stored summaries (each with ``device_id``), oldest first, filtered by version, end time and device."""
    q = select(Summary.device_id, Summary.body).where(Summary.end >= since).order_by(Summary.end)
    if version is not None:
        q = q.where(Summary.version == version)
    with sessions() as s:
        rows = s.execute(q).all()
    return [{**json.loads(body), "device_id": did} for did, body in rows if device_ids is None or did in device_ids]


def version_profile(registry: Any, version: str) -> dict[str, Any] | None:
    """The reference profile in a published version's manifest, or None."""
    from device.runtime.bundle import read_manifest

    if not version.isdigit():
        return None
    try:
        return dict(read_manifest(registry.version_dir(int(version))).profile) or None
    except Exception:  # noqa: BLE001 - an unreadable or missing bundle simply has no profile
        return None


def drift_table(sessions: sessionmaker, registry: Any, since: float = 0.0, per_device: bool = False
                ) -> list[dict[str, Any]]:
    """A drift score per version (and per device of it, with ``per_device``) over summaries since ``since``."""
    rows = summaries(sessions, since=since)
    with sessions() as s:
        names = dict(s.execute(select(Device.id, Device.name)).all())
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["version"], None), []).append(r)
        if per_device:
            groups.setdefault((r["version"], names.get(r["device_id"], "?")), []).append(r)
    profiles: dict[str, dict[str, Any] | None] = {}
    out = []
    for (version, device), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if version not in profiles:
            profiles[version] = version_profile(registry, version)
        total = add_summaries(group)
        score: DriftScore = drift_score(profiles[version], total)
        out.append({"version": version, "device": device, "devices": len({g["device_id"] for g in group}),
                    "summaries": len(group), "errors": total["errors"], "labelled": total["labelled"],
                    "field_accuracy": total["correct"] / total["labelled"] if total["labelled"] else None,
                    **score.to_json()})
    return out
