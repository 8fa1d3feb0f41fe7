"""A token bucket per key kept in the database, for several server processes or hosts.

``serve --workers N`` (or several hosts on one PostgreSQL) would give each process its own
in-memory bucket, so a device could send N times the burst. Here each request is one
conditional UPDATE that refills and takes a token only if one is there; PostgreSQL's row lock
and SQLite's single writer make it atomic, so every process draws on the same bucket and
the bound is exactly the one-process bound. Same interface as :class:`cloud.service.auth.RateLimiter`.
"""

from __future__ import annotations

import time

from sqlalchemy import case, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from cloud.service.auth import RateLimit
from cloud.service.db import RateBucket


class SharedRateLimiter:
    def __init__(self, sessions: sessionmaker, limit: RateLimit, prefix: str = "dev") -> None:
        self.sessions, self.limit, self.prefix = sessions, limit, prefix

    def _refilled(self, now: float) -> object:
        rate, burst = float(self.limit.rate), float(self.limit.burst)
        elapsed = case((RateBucket.updated < now, now - RateBucket.updated), else_=0.0)
        grown = RateBucket.tokens + elapsed * rate
        return case((grown > burst, burst), else_=grown)

    def allow(self, key: object, now: float | None = None) -> float:
        """0 if the request may go ahead, else the seconds to wait (for Retry-After)."""
        now = time.time() if now is None else now  # wall clock: shared by processes (and NTP-synchronised hosts)
        k = f"{self.prefix}:{key}"
        refilled = self._refilled(now)
        for _ in range(4):
            with self.sessions.begin() as s:
                took = s.execute(update(RateBucket).where(RateBucket.key == k, refilled >= 1.0)
                                 .values(tokens=refilled - 1.0, updated=now)).rowcount
                if took:
                    return 0.0
                tokens = s.scalars(select(refilled).where(RateBucket.key == k)).first()
            if tokens is not None:
                if float(tokens) >= 1.0:
                    # READ COMMITTED: the UPDATE's snapshot missed a row (or tokens) another host
                    # committed before this SELECT's. Take from it; never wave a request through.
                    continue
                return (1.0 - float(tokens)) / float(self.limit.rate)
            try:  # the key's first request: a full bucket, less this request's token
                with self.sessions.begin() as s:
                    s.execute(insert(RateBucket).values(key=k, tokens=float(self.limit.burst) - 1.0, updated=now))
                return 0.0
            except IntegrityError:  # another process created it first: take from it
                continue
        return 1.0 / float(self.limit.rate)  # still contended after every try: refuse, and ask to come back
