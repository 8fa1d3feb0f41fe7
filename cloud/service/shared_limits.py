"""A token bucket per key kept in the database, for several server processes or hosts.

``serve --workers N`` (or several hosts on one PostgreSQL) would give each process its own
in-memory bucket, so a device could send N times the burst. Here each request is one
conditional UPDATE that refills and takes a token only if one is there; PostgreSQL's row lock
and SQLite's single writer make it atomic, so every process draws on the same bucket and
the bound is exactly the one-process bound. Same interface as :class:`cloud.service.auth.RateLimiter`.
"""

from __future__ import annotations

import time

from sqlalchemy import Float, String, bindparam, case, insert, select, update
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
