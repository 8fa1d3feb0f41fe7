"""Data governance: delete a device's samples on request, drop samples past their retention, export samples.

``forget_device`` removes the samples a device sent; its interval summaries stay, since they
hold only counts and histograms, no sample. Retention (``serve --retention-days``) runs in the
service's background tick. Idempotency records (batch keys) stay, so a device that resends
an old batch is still answered "stored" rather than having its samples stored again.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import sessionmaker

from cloud.service.db import Device, Sample
from device.errors import EdgeloopError


class UnknownDeviceName(EdgeloopError):
    """No device is registered under that name."""


def forget_device(sessions: sessionmaker, name: str) -> int:
    """Delete every sample ``name`` sent; returns how many. The device stays registered."""
    with sessions.begin() as s:
        did = s.scalars(select(Device.id).where(Device.name == name)).first()
        if did is None:
            raise UnknownDeviceName(f"no device named {name!r} is registered")
        n = s.execute(delete(Sample).where(Sample.device_id == did)).rowcount
        s.execute(update(Device).where(Device.id == did).values(samples_stored=0))
    return int(n)


def purge_expired(sessions: sessionmaker, retention_days: float, now: float | None = None) -> int:
    """Delete samples received more than ``retention_days`` ago; returns how many."""
    if not retention_days > 0:
        raise ValueError(f"--retention-days must be > 0, got {retention_days}")
    now = time.time() if now is None else now
    cutoff = now - retention_days * 86400.0
    with sessions.begin() as s:
        per_device = dict(s.execute(select(Sample.device_id, func.count()).where(Sample.received < cutoff)
                                    .group_by(Sample.device_id)).all())
        if not per_device:
            return 0
        n = s.execute(delete(Sample).where(Sample.received < cutoff)).rowcount
        for did, count in per_device.items():
            s.execute(update(Device).where(Device.id == did)
                      .values(samples_stored=func.max(0, Device.samples_stored - count)
                              if s.bind.dialect.name == "sqlite" else func.greatest(0, Device.samples_stored - count)))
    return int(n)


def iter_samples(sessions: sessionmaker, version: str | None = None, labelled: bool = False,
                 limit: int = 1000) -> Iterator[dict[str, Any]]:
    """Stored samples as JSON-ready dicts (the ingest format plus ``device``), newest first."""
    q = (select(Sample, Device.name).join(Device, Device.id == Sample.device_id)
         .order_by(Sample.id.desc()).limit(limit))
    if version is not None:
        q = q.where(Sample.model_version == version)
    if labelled:
        q = q.where(Sample.label.is_not(None))
    with sessions() as s:
        for smp, name in s.execute(q):
            yield {"device": name, "id": smp.sample_id, "model_version": smp.model_version,
                   "input": {"shape": json.loads(smp.shape), "dtype": smp.dtype,
                             "data": base64.b64encode(smp.data).decode()},
                   "prediction": smp.prediction, "confidence": smp.confidence, "label": smp.label,
                   "timestamp": smp.timestamp, "received": smp.received}

