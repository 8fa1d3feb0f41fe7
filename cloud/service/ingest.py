"""Sample ingestion: the request schema, its checks, and storing a batch exactly once.

A batch is stored in one transaction together with its idempotency key; a replay of the
key finds the batch and stores nothing, and a sample id seen before from the same device
is never stored twice either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, Row, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from cloud.service.db import Batch, Device, Sample

INPUT_DTYPES = {"uint8": 1, "int8": 1, "float32": 4}
MAX_INPUT_VALUES = 1 << 16


class BadSample(ValueError):
    """A sample passes the schema but its content is inconsistent (400)."""


class IdempotencyConflict(ValueError):
    """An Idempotency-Key already names a stored batch with different content (409)."""


def no_surrogates(value: str) -> str:
    """Refuse lone UTF-16 surrogates (JSON's ``\\ud800``): no database can store them as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text holds a lone surrogate (not valid Unicode)") from None
    return value


def validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's errors as plain JSON: location, message and type only (no input, no context objects,
    which may hold NaN, bytes or exceptions that JSON cannot encode)."""
    return [{"loc": [str(p)[:64] for p in e.get("loc", ())][:8], "msg": str(e.get("msg", ""))[:300],
             "type": str(e.get("type", ""))[:64]} for e in errors[:20]]


class InputArray(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shape: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=1, max_length=4)]
    dtype: str
    data: str

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in INPUT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(INPUT_DTYPES)}")
        return v


class SampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    input: InputArray
    prediction: Annotated[int, Field(ge=0, le=100_000)]
    confidence: Annotated[float, Field(ge=0.0, le=1.0)]
    label: Annotated[int, Field(ge=0, le=100_000)] | None = None
    model_version: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(no_surrogates)]
    timestamp: float


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: Annotated[list[SampleIn], Field(min_length=1)]


def decode(sample: SampleIn) -> bytes:
    """The input's raw bytes, checked against its shape and dtype; raises :class:`BadSample`."""
    n = math.prod(sample.input.shape)
    if n > MAX_INPUT_VALUES:
        raise BadSample(f"sample {sample.id}: input has {n} values, at most {MAX_INPUT_VALUES} are accepted")
    try:
        raw = base64.b64decode(sample.input.data, validate=True)
    except (binascii.Error, ValueError):
        raise BadSample(f"sample {sample.id}: input.data is not valid base64") from None
    expected = n * INPUT_DTYPES[sample.input.dtype]
    if len(raw) != expected:
        raise BadSample(f"sample {sample.id}: input.data holds {len(raw)} bytes; shape {sample.input.shape} "
                        f"{sample.input.dtype} needs {expected}")
    if not math.isfinite(sample.timestamp):
        raise BadSample(f"sample {sample.id}: timestamp must be finite")
    return raw


# Built once, with bound parameters: through the ORM, the entity select of a Batch and statements built per
# call were most of an upload's Python time (py-spy). Core statements on one connection do the same work.
_FIND_BATCH = select(Batch.stored, Batch.digest).where(Batch.device_id == bindparam("device_id"),
                                                      Batch.key == bindparam("key"))
_SEEN_IDS = select(Sample.sample_id).where(Sample.device_id == bindparam("device_id"),
                                           Sample.sample_id.in_(bindparam("ids", expanding=True)))
# the quota is taken by one conditional UPDATE (it row-locks the device on PostgreSQL), so concurrent
# batches on other workers or hosts cannot both slip under it
_TAKE_QUOTA = (update(Device).where(Device.id == bindparam("device_id"),
                                    Device.samples_stored + bindparam("fresh") <= bindparam("quota"))
               .values(samples_stored=Device.samples_stored + bindparam("fresh"), last_seen=bindparam("now")))
_ADD_BATCH = insert(Batch).returning(Batch.id)
_ADD_SAMPLES = insert(Sample.__table__)


def store_batch(sessions: sessionmaker, device_id: int, key: str, batch: BatchIn, quota: int) -> tuple[int, bool]:
    """Store a batch once; returns ``(samples stored by this batch, replayed)``.

    Raises :class:`BadSample` (nothing stored), :class:`IdempotencyConflict` (the key names a stored
    batch with other content: nothing stored) and :class:`QuotaExceeded`.
    """
    raws = [decode(s) for s in batch.samples]
    digest = batch_digest(batch)
    ids = [s.id for s in batch.samples]
    if len(set(ids)) != len(ids):
        raise BadSample("sample ids within a batch must be unique")
    now = time.time()
    engine = sessions.kw["bind"]
    try:
        with engine.begin() as conn:
            existing = conn.execute(_FIND_BATCH, {"device_id": device_id, "key": key}).first()
            if existing is not None:
                return _replay(existing, key, digest)
            seen = set(conn.scalars(_SEEN_IDS, {"device_id": device_id, "ids": ids}).all())
            fresh = [(smp, raw) for smp, raw in zip(batch.samples, raws) if smp.id not in seen]
            took = conn.execute(_TAKE_QUOTA, {"device_id": device_id, "fresh": len(fresh), "quota": quota,
                                              "now": now}).rowcount
            if not took:
                stored = _device_count(conn, device_id)
                raise QuotaExceeded(f"device quota of {quota} stored samples reached ({stored} stored)")
            batch_id = conn.execute(_ADD_BATCH, {"device_id": device_id, "key": key, "received": now,
                                                 "stored": len(fresh), "digest": digest}).scalar_one()
            if fresh:  # one executemany
                conn.execute(_ADD_SAMPLES, [
                    {"device_id": device_id, "sample_id": smp.id, "batch_id": batch_id, "shape": json.dumps(smp.input.shape),
                     "dtype": smp.input.dtype, "data": raw, "prediction": smp.prediction, "confidence": smp.confidence,
                     "label": smp.label, "model_version": smp.model_version, "timestamp": smp.timestamp, "received": now}
                    for smp, raw in fresh])
            return len(fresh), False
    except IntegrityError:  # the same key raced in on another connection and won: this is a replay
        with engine.connect() as conn:
            existing = conn.execute(_FIND_BATCH, {"device_id": device_id, "key": key}).first()
        if existing is None:
            raise
        return _replay(existing, key, digest)


def batch_digest(batch: BatchIn) -> str:
    """sha256 of a batch's content in canonical JSON: equal for equal batches however they were serialised."""
    return hashlib.sha256(json.dumps(batch.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _replay(existing: Row[Any], key: str, digest: str) -> tuple[int, bool]:
    """A stored batch (its ``stored`` and ``digest``) met again under its key."""
    stored, stored_digest = existing
    if stored_digest is not None and stored_digest != digest:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for a batch with other content; "
                                  "use a new key for new samples")
    return stored, True


class QuotaExceeded(Exception):
    """The device has stored as many samples as it may (413)."""


def _device_count(conn: Connection, device_id: int) -> int:
    return int(conn.scalars(select(Device.samples_stored).where(Device.id == device_id)).one())
