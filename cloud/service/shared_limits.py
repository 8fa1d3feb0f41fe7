"""A token bucket per key kept in the database, for several server processes or hosts.

``serve --workers N`` (or several hosts on one PostgreSQL) would give each process its own
in-memory bucket, so a device could send N times the burst. Here each request is one
conditional UPDATE that refills and takes a token only if one is there; PostgreSQL's row lock
and SQLite's single writer make it atomic, so every process draws on the same bucket and
the bound is exactly the one-process bound. Same interface as :class:`cloud.service.auth.RateLimiter`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from sqlalchemy import Float, String, any_, bindparam, case, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import sessionmaker

from cloud.service.auth import RateLimit
from cloud.service.db import RateBucket, volatile_engine


class SharedRateLimiter:
    """Each take is one autocommit statement (``UPDATE … RETURNING``): one round trip, no BEGIN/COMMIT.

    Through an ORM session a take cost 3-4 ms on PostgreSQL (a ping, BEGIN, the UPDATE, COMMIT and
    the reset on return, each a round trip), which made a shared limit the whole cost of a poll.
    """

    def __init__(self, store: Engine | sessionmaker, limit: RateLimit, prefix: str = "dev") -> None:
        """``store``: an engine from :func:`cloud.service.db.volatile_engine`, or sessions on the database."""
        self.engine = store if isinstance(store, Engine) else volatile_engine(store.kw["bind"])
        self.limit, self.prefix = limit, prefix

        # built once, with bound parameters: building the expressions per call cost more than the round trip
        now, key = bindparam("b_now", type_=Float), bindparam("b_key", type_=String)
        rate, burst = float(self.limit.rate), float(self.limit.burst)
        elapsed = case((RateBucket.updated < now, now - RateBucket.updated), else_=0.0)
        grown = RateBucket.tokens + elapsed * rate
        refilled = case((grown > burst, burst), else_=grown)
        self._take = (update(RateBucket).where(RateBucket.key == key, refilled >= 1.0)
                      .values(tokens=refilled - 1.0, updated=now).returning(RateBucket.key))
        self._level = select(refilled).where(RateBucket.key == key)
        self._create = insert(RateBucket).values(key=key, tokens=burst - 1.0, updated=now)
        # PostgreSQL: many keys in one statement, with the same refill. The rows are locked in key order
        # first, so two processes taking overlapping sets can never deadlock; the UPDATE then re-checks
        # each locked row's tokens.
        keys = bindparam("b_keys", type_=ARRAY(String))
        locked = (select(RateBucket.key).where(RateBucket.key == any_(keys)).order_by(RateBucket.key)
                  .with_for_update().subquery())
        self._take_many = (update(RateBucket).where(RateBucket.key == locked.c.key, refilled >= 1.0)
                           .values(tokens=refilled - 1.0, updated=now).returning(RateBucket.key))

    def allow(self, key: object, now: float | None = None) -> float:
        """0 if the request may go ahead, else the seconds to wait (for Retry-After)."""
        now = time.time() if now is None else now  # wall clock: shared by processes (and NTP-synchronised hosts)
        params = {"b_key": f"{self.prefix}:{key}", "b_now": now}
        for _ in range(4):
            try:
                with self.engine.connect() as conn:
                    if conn.execute(self._take, params).first() is not None:
                        return 0.0
                    tokens = conn.execute(self._level, params).scalar()
                    if tokens is None:  # the key's first request: a full bucket, less this request's token
                        conn.execute(self._create, params)
                        return 0.0
            except IntegrityError:  # another process created it first: take from it
                continue
            except DBAPIError as exc:  # a connection the database dropped (a restart): SQLAlchemy discards it
                if not exc.connection_invalidated:
                    raise
                continue
            if float(tokens) >= 1.0:
                # the UPDATE's snapshot missed a row (or tokens) another host committed before this
                # SELECT's. Take from it; never wave a request through.
                continue
            return (1.0 - float(tokens)) / float(self.limit.rate)
        return 1.0 / float(self.limit.rate)  # still contended after every try: refuse, and ask to come back

    def take_many(self, keys: Sequence[object], now: float | None = None) -> set[object]:
        """Take one token from each of ``keys`` (distinct) that has one, in one round trip; returns those taken.

        PostgreSQL only. A key not returned may be empty or may have no row yet: ask :meth:`allow`,
        which creates rows and computes Retry-After. Never takes from a key not returned.
        """
        now = time.time() if now is None else now
        names = {f"{self.prefix}:{key}": key for key in keys}
        if len(names) != len(keys):
            raise ValueError("take_many: keys must be distinct (one statement takes at most one token per row)")
        with self.engine.connect() as conn:
            rows = conn.execute(self._take_many, {"b_keys": list(names), "b_now": now}).all()
        return {names[row[0]] for row in rows}


class BatchedTakes:
    """The fast poll path's throttle on PostgreSQL: the takes of one event-loop turn in one statement.

    Under load a worker's loop starts dozens of polls per turn. One autocommit UPDATE per poll cost a
    round trip and a statement each, and with ``--workers 2`` on two cores that made two workers
    slower than one. Here the first take of a turn schedules a flush after the turn's other tasks;
    the flush takes every distinct key at once (:meth:`SharedRateLimiter.take_many`), and a key it did
    not take, or a second take of the same key in one turn, goes through :meth:`SharedRateLimiter.allow`
    as before. Each device's decision is therefore the one the per-request path would make.
    """

    def __init__(self, limiter: SharedRateLimiter) -> None:
        self.limiter = limiter
        self._pending: list[tuple[object, asyncio.Future[float]]] = []
        self.statements = 0  # multi-key statements sent, for tests and benchmarks

    async def allow(self, key: object) -> float:
        """0 if the request may go ahead, else the seconds to wait; same meaning as ``SharedRateLimiter.allow``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((key, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        now = time.time()
        first: dict[object, asyncio.Future[float]] = {}  # each key's first take of the turn, in order
        again: list[tuple[object, asyncio.Future[float]]] = []
        for key, future in pending:
            if key in first:
                again.append((key, future))
            else:
                first[key] = future
        try:
            taken: set[object] = set()
            if len(first) > 1:
                self.statements += 1
                taken = self.limiter.take_many(list(first), now)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, as it would alone
            for _, future in pending:
                _fail(future, exc)
            return
        for key in taken:
            _settle(first[key], 0.0)
        for key, future in [*((k, f) for k, f in first.items() if k not in taken), *again]:
            try:
                _settle(future, self.limiter.allow(key, now))
            except Exception as exc:  # noqa: BLE001
                _fail(future, exc)


def _settle(future: asyncio.Future[float], value: float) -> None:
    if not future.done():  # a client that hung up has had its task, and this future, cancelled
        future.set_result(value)


def _fail(future: asyncio.Future[float], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
