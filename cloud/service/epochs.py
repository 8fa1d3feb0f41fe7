"""Change counters: a cache every server process can trust without a time limit.

A device's poll needs its token's device id, the channel's release and any running rollout:
state that changes a few times a day but is read a thousand times a second. Each process keeps
it in memory, tagged with the value of a counter in the database that every change bumps in the
same transaction. A request reads the counters once (one primary-key query, with no lock) and
uses only entries tagged with what it read, so a publish, promote, rollout step or token
revocation made by any process or host, or by the CLI on the data directory, is seen by the very
next request everywhere, as with one process and no cache.

The bumps are not scattered through the code: SQLAlchemy session events bump ``releases`` on any
change to the tables a release is made of, however it is written (ORM objects or bulk
UPDATE/DELETE), and :func:`cloud.service.auth.revoke_device` bumps ``tokens``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from cloud.service.db import COUNTERS, ChangeCounter, ChannelEntry, Rollout, Statement, Version

RELEASES, TOKENS = COUNTERS
# what a device's release is made of: a write to any of these moves the "releases" counter
RELEASE_TABLES = frozenset(model.__tablename__ for model in (Version, ChannelEntry, Statement, Rollout))


def bump(conn: Connection | Session, name: str) -> None:
    """Move counter ``name`` on, inside the caller's transaction (so the change and the bump commit together)."""
    conn.execute(update(ChangeCounter).where(ChangeCounter.name == name).values(value=ChangeCounter.value + 1))


def _after_flush(session: Session, _context: Any) -> None:
    changed = (*session.new, *session.dirty, *session.deleted)
    if any(getattr(o, "__tablename__", None) in RELEASE_TABLES for o in changed):
        bump(session.connection(), RELEASES)


def _do_orm_execute(state: Any) -> None:
    if state.is_update or state.is_delete or state.is_insert:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in RELEASE_TABLES:
            bump(state.session.connection(), RELEASES)


def install() -> None:
    """Hook the bumps into every ORM session (idempotent)."""
    from sqlalchemy import event

    if not event.contains(Session, "after_flush", _after_flush):
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "do_orm_execute", _do_orm_execute)



class Snapshot(dict):
    """The counters as one request read them: ``{name: value}``."""


class EpochCache:
    """Values cached in this process, each valid while its counter has not moved (and for at most ``max_age_s``,
    in case something edits the database behind edgeloop's back). Thread-safe: entries are immutable tuples."""

    def __init__(self, engine: Engine, max_age_s: float = 60.0, max_entries: int = 200_000) -> None:
        self.engine, self.max_age_s, self.max_entries = engine, max_age_s, max_entries
        self._query = select(ChangeCounter.name, ChangeCounter.value)
        self._entries: dict[Any, tuple[int, float, Any]] = {}
        self._lock = threading.Lock()
        self._latest: tuple[float, Snapshot] = (float("-inf"), Snapshot())

    def snapshot(self) -> Snapshot:
        """Read every counter (one query): the view of the state a request works with."""
        with self.engine.connect() as conn:
            snap = Snapshot(conn.execute(self._query).all())
        self._latest = (time.monotonic(), snap)
        return snap

    def recent_snapshot(self, max_age_s: float) -> Snapshot:
        """The latest snapshot this process read, if it is at most ``max_age_s`` old, else a fresh one.

        For the one answer that may be a little late, "your release is unchanged" (a 304): reading the
        counters for each of a thousand polls a second would cost more than the poll itself.
        """
        taken, snap = self._latest
        if time.monotonic() - taken <= max_age_s:
            return snap
        return self.snapshot()

    def get(self, snap: Snapshot, counter: str, key: Any, load: Callable[[], Any], cache_none: bool = True) -> Any:
        """``load()``, or the value cached for ``key`` under the counter value ``snap`` read."""
        epoch = snap.get(counter, -1)
        hit = self._entries.get((counter, key))
        now = time.monotonic()
        if hit is not None and hit[0] == epoch and now - hit[1] < self.max_age_s:
            return hit[2]
        value = load()
        if value is not None or cache_none:
            if len(self._entries) >= self.max_entries:
                with self._lock:
                    self._entries.clear()
            self._entries[(counter, key)] = (epoch, now, value)
        return value
