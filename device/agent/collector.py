"""The on-device sample queue: SQLite, capped, oldest-first drops that are counted and reported.

Samples wait here until the cloud has acknowledged them. An upload takes the oldest
samples, names them a batch (an idempotency key) in the same transaction, and only
deletes them once the server says the batch is stored, so a crash or an outage at any
point resends the same batch under the same key, which the server stores once.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import CollectorError

POLICIES = ("all", "random", "low-confidence", "none")
WIRE_DTYPES = ("uint8", "int8", "float32")  # the input dtypes the service stores
MAX_SET_ASIDE = 1000  # refused samples kept for inspection (newest)


@dataclass(frozen=True)
class CollectionPolicy:
    """Which predictions to keep: ``all``, a ``random`` fraction ``rate``, or ``low-confidence`` below ``threshold``."""

    mode: str = "low-confidence"
    rate: float = 0.1
    threshold: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"collection policy must be one of {', '.join(POLICIES)}, got {self.mode!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {self.rate}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


class Sampler:
    """Applies a :class:`CollectionPolicy`; deterministic for its seed."""

    def __init__(self, policy: CollectionPolicy) -> None:
        self.policy = policy
        self._rng = np.random.default_rng(policy.seed)

    def keep(self, confidence: float, labelled: bool = False) -> bool:
        mode = self.policy.mode
        if mode == "none":
            return False
        if mode == "all" or labelled:  # a user correction is always worth sending
            return True
        if mode == "random":
            return bool(self._rng.random() < self.policy.rate)
        return confidence < self.policy.threshold


def encode_input(x: np.ndarray) -> dict[str, Any]:
    """A raw input as JSON: shape, dtype and base64 bytes (what the service's ingest API takes)."""
    arr = np.ascontiguousarray(x)
    return {"shape": list(arr.shape), "dtype": arr.dtype.name, "data": base64.b64encode(arr.tobytes()).decode()}


def decode_input(obj: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(obj["data"], validate=True)
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])


_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    batch TEXT
);
CREATE INDEX IF NOT EXISTS samples_batch ON samples(batch);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, reason TEXT);
"""


class SampleQueue:
    """A persistent FIFO of samples with a size cap. Thread-safe; one connection per queue."""

    def __init__(self, path: Path | str, max_samples: int = 10_000) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.path = Path(path)
        self.max_samples = max_samples
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise CollectorError(f"{self.path}: cannot open the sample queue ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, x: np.ndarray, prediction: int, confidence: float, model_version: str,
            label: int | None = None, timestamp: float | None = None, sample_id: str | None = None) -> str:
        """Queue one sample; returns its id. Over the cap, the oldest unsent samples are dropped and counted."""
        sid = sample_id or uuid.uuid4().hex
        body = json.dumps({"id": sid, "input": encode_input(x), "prediction": int(prediction),
                           "confidence": float(confidence), "label": None if label is None else int(label),
                           "model_version": model_version, "timestamp": time.time() if timestamp is None else timestamp})
        with self._lock, self._tx():
            self._db.execute("INSERT INTO samples(id, body) VALUES (?, ?)", (sid, body))
            (count,) = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()
            excess = count - self.max_samples
            if excess > 0:
                cur = self._db.execute(
                    "DELETE FROM samples WHERE seq IN (SELECT seq FROM samples WHERE batch IS NULL ORDER BY seq LIMIT ?)",
                    (excess,))
                self._bump("dropped", cur.rowcount)
        return sid

    def next_batch(self, size: int) -> tuple[str, list[dict[str, Any]]] | None:
        """The batch to send next: a pending one first (resent under its key), else the oldest ``size`` samples."""
        with self._lock, self._tx():
            row = self._db.execute("SELECT batch FROM samples WHERE batch IS NOT NULL ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                key = uuid.uuid4().hex
                cur = self._db.execute(
                    "UPDATE samples SET batch = ? WHERE seq IN (SELECT seq FROM samples WHERE batch IS NULL ORDER BY seq LIMIT ?)",
                    (key, size))
                if cur.rowcount == 0:
                    return None
            else:
                key = row[0]
            bodies = self._db.execute("SELECT body FROM samples WHERE batch = ? ORDER BY seq", (key,)).fetchall()
        return key, [json.loads(b) for (b,) in bodies]

    def ack(self, batch: str) -> int:
        """The server stored ``batch``: forget its samples. Returns how many."""
        with self._lock, self._tx():
            n = self._db.execute("DELETE FROM samples WHERE batch = ?", (batch,)).rowcount
            self._bump("sent", n)
        return n

    def set_aside(self, batch: str) -> int:
        """The server refused ``batch`` as invalid: move its samples to the ``rejected`` table (the newest
        :data:`MAX_SET_ASIDE` are kept for inspection) so they stop blocking the queue. Returns how many."""
        with self._lock, self._tx():
            self._db.execute("INSERT INTO rejected(body) SELECT body FROM samples WHERE batch = ? ORDER BY seq", (batch,))
            n = self._db.execute("DELETE FROM samples WHERE batch = ?", (batch,)).rowcount
            self._db.execute("DELETE FROM rejected WHERE seq <= (SELECT MAX(seq) FROM rejected) - ?", (MAX_SET_ASIDE,))
            self._bump("rejected", n)
        return n

    def discard(self) -> int:
        """Delete every queued sample, sent or not (the owner withdrew consent); returns how many."""
        with self._lock, self._tx():
            n = self._db.execute("DELETE FROM samples").rowcount
            self._bump("withdrawn", n)
        return n

    def meta(self, key: str) -> int:
        """A persisted integer (0 when unset): counters, and what the agent has reported of them."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_meta(self, key: str, value: int) -> None:
        with self._lock, self._tx():
            self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, int(value)))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def counters(self) -> dict[str, int]:
        """``queued``, ``sent`` (acknowledged), ``dropped`` (over the cap) and ``rejected`` (refused by the
        server as invalid, set aside) since the queue was created."""
        with self._lock:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            queued = int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        return {"queued": queued, "sent": int(meta.get("sent", 0)), "dropped": int(meta.get("dropped", 0)),
                "rejected": int(meta.get("rejected", 0))}

    def _bump(self, key: str, n: int) -> None:
        if n:
            self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value", (key, n))

    def _tx(self) -> Any:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
