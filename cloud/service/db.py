"""SQLAlchemy tables and the engine: SQLite (WAL, one file in the data directory) by default,
PostgreSQL when ``DATABASE_URL`` says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

DB_FILE = "edgeloop.sqlite"


class Base(DeclarativeBase):
    pass


class Version(Base):
    """One published bundle. Files live in ``DATA/blobs/<id>/``; their hashes are here."""

    __tablename__ = "versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created: Mapped[float] = mapped_column(Float)
    mode: Mapped[str] = mapped_column(String(20))
    model_sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[str] = mapped_column(Text)  # JSON {name: {"sha256", "size"}}
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # held-out, as measured at publish
    parent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")


class ChannelEntry(Base):
    """A channel's history: its current version is the newest row; rolling back deletes that row."""

    __tablename__ = "channel_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    time: Mapped[float] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    running_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_event: Mapped[str | None] = mapped_column(Text, nullable=True)
    samples_stored: Mapped[int] = mapped_column(Integer, default=0)
    dropped: Mapped[int] = mapped_column(Integer, default=0)


class Batch(Base):
    """An ingested batch, by the device's idempotency key: a replay finds it and stores nothing."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("device_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    key: Mapped[str] = mapped_column(String(128))
    received: Mapped[float] = mapped_column(Float)
    stored: Mapped[int] = mapped_column(Integer)
    # sha256 of the batch's canonical content: the same key with another body is a conflict (409).
    # Added after the first release; rows stored before have NULL (see migrate()).
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Statement(Base):
    """A signed release statement: ``version`` is ``channel``'s release, the ``sequence``-th one.

    Never deleted: a rollback signs a new, higher-numbered statement for the older version, so
    devices can refuse any statement older than the one they run (TUF's rollback protection).
    """

    __tablename__ = "statements"
    __table_args__ = (UniqueConstraint("channel", "sequence"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    body: Mapped[str] = mapped_column(Text)  # the statement's JSON, as devices receive it
    time: Mapped[float] = mapped_column(Float)


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("device_id", "sample_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    sample_id: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    shape: Mapped[str] = mapped_column(String(64))  # JSON list
    dtype: Mapped[str] = mapped_column(String(16))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    prediction: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    timestamp: Mapped[float] = mapped_column(Float)
    received: Mapped[float] = mapped_column(Float)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text)
    time: Mapped[float] = mapped_column(Float)


class Summary(Base):
    """One device's interval summary of one version (see :mod:`device.agent.summary`): counts, histograms."""

    __tablename__ = "summaries"
    __table_args__ = (UniqueConstraint("device_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    key: Mapped[str] = mapped_column(String(128))  # the agent's id for it: a resend is stored once
    version: Mapped[str] = mapped_column(String(64), index=True)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float, index=True)
    received: Mapped[float] = mapped_column(Float)
    predictions: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    labelled: Mapped[int] = mapped_column(Integer)
    correct: Mapped[int] = mapped_column(Integer)
    confidence_sum: Mapped[float] = mapped_column(Float)
    body: Mapped[str] = mapped_column(Text)  # the whole summary, JSON


class Rollout(Base):
    """A staged rollout of one version on one channel; ``stage`` indexes the plan's stages."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    base_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    plan: Mapped[str] = mapped_column(Text)  # RolloutPlan JSON
    status: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[int] = mapped_column(Integer)
    stage_started: Mapped[float] = mapped_column(Float)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class RolloutDecision(Base):
    """Every change of a rollout's state, with the figures it rested on."""

    __tablename__ = "rollout_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    time: Mapped[float] = mapped_column(Float)
    stage: Mapped[int] = mapped_column(Integer)
    percent: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    figures: Mapped[str] = mapped_column(Text)  # StageFigures + checks, JSON


class RateBucket(Base):
    """A token bucket kept in the database, so every worker and host draws on the same one."""

    __tablename__ = "rate_buckets"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class AutoRetrain(Base):
    """A retraining started because a version drifted (``serve --auto-retrain``): one per version, claimed by insert."""

    __tablename__ = "auto_retrains"
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[float] = mapped_column(Float)
    drift: Mapped[float] = mapped_column(Float)
    detail: Mapped[str] = mapped_column(Text, default="")


class ChangeCounter(Base):
    """How often a kind of cached state changed (:mod:`cloud.service.epochs`): each server process caches
    releases and device tokens until the counter moves, so every process and host sees a change at once."""

    __tablename__ = "change_counters"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


COUNTERS = ("releases", "tokens")


def seed_counters(engine: Engine) -> None:
    """Create the change-counter rows (idempotent; several processes may start at once)."""
    from sqlalchemy import insert, select
    from sqlalchemy.exc import IntegrityError

    for name in COUNTERS:
        try:
            with engine.begin() as conn:
                if conn.execute(select(ChangeCounter.value).where(ChangeCounter.name == name)).first() is None:
                    conn.execute(insert(ChangeCounter).values(name=name, value=0))
        except IntegrityError:  # another process seeded it first
            pass


def database_url(data_dir: Path | str, url: str | None = None) -> str:
    """``url``, else ``$DATABASE_URL``, else a SQLite file in ``data_dir``."""
    url = url or os.environ.get("DATABASE_URL")
    if url:
        if url.startswith("postgresql://"):  # use psycopg 3, not the psycopg2 SQLAlchemy defaults to
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url
    return f"sqlite:///{Path(data_dir).resolve() / DB_FILE}"


def make_engine(url: str) -> Engine:
    """The engine, with a fixed pool and no overflow: under load, threads queue for a connection instead
    of opening and closing one per request (a new PostgreSQL connection forks a backend: with overflow,
    a loaded server spent its time connecting)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=16,
                               max_overflow=0)

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # noqa: ANN001 - SQLAlchemy's callback signature
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    else:
        engine = create_engine(url, pool_size=20, max_overflow=0, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    migrate(engine)
    seed_counters(engine)
    return engine


# Columns added to existing tables after a release: (table, column, SQL type). create_all() makes new
# tables but never alters old ones, so each is added here, nullable, when missing.
_ADDED_COLUMNS = (("batches", "digest", "VARCHAR(64)"),)


def migrate(engine: Engine) -> None:
    """Bring a database created by an older edgeloop up to this schema (idempotent)."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    for table, column, sql_type in _ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def volatile_engine(engine: Engine) -> Engine:
    """An autocommit engine for state that need not survive a crash (token buckets), on the same database.

    On PostgreSQL each commit otherwise waits for its WAL to reach the disk: with a shared rate
    limit that is a disk flush per request. ``synchronous_commit=off`` keeps every commit atomic
    and ordered and loses at most the last fraction of a second of bucket state in a crash. No
    ping on checkout (a dropped connection fails one statement, which the caller retries). SQLite
    in WAL mode with ``synchronous=NORMAL`` already does not flush per commit: the same engine.
    """
    if engine.dialect.name != "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return create_engine(engine.url, pool_size=10, max_overflow=0, isolation_level="AUTOCOMMIT",
                         connect_args={"options": "-c synchronous_commit=off"})
