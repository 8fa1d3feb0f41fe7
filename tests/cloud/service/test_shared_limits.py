"""The database token bucket: the same bound as the in-memory one, shared by every limiter on the store."""

from __future__ import annotations

import threading
from pathlib import Path

from cloud.service.auth import RateLimit, RateLimiter
from cloud.service.db import database_url, make_engine, make_sessionmaker
from cloud.service.shared_limits import SharedRateLimiter


def test_two_limiters_on_one_store_share_one_bucket_with_the_in_memory_bound(tmp_path: Path) -> None:
    sessions = make_sessionmaker(make_engine(database_url(tmp_path)))
    limit = RateLimit(rate=2.0, burst=5)
    a, b, oracle = SharedRateLimiter(sessions, limit), SharedRateLimiter(sessions, limit), RateLimiter(limit)
    t = 1_000_000.0
    shared = [(a if i % 2 else b).allow(7, now=t) == 0 for i in range(12)]
    alone = [oracle.allow(7, now=t) == 0 for i in range(12)]
    assert shared == alone == [True] * 5 + [False] * 7
    assert a.allow(7, now=t) == b.allow(7, now=t) == oracle.allow(7, now=t) == 0.5  # the same Retry-After
    assert a.allow(7, now=t + 1.0) == 0 and b.allow(7, now=t + 1.0) == 0 and a.allow(7, now=t + 1.0) > 0  # 2/s refill
    assert a.allow(8, now=t) == 0  # another key has its own bucket


def test_concurrent_takers_get_exactly_the_burst(tmp_path: Path) -> None:
    sessions = make_sessionmaker(make_engine(database_url(tmp_path)))
    limiters = [SharedRateLimiter(sessions, RateLimit(rate=0.001, burst=20)) for _ in range(4)]
    allowed, lock = [0], threading.Lock()

    def hammer(lim: SharedRateLimiter) -> None:
        for _ in range(15):
            if lim.allow("k") == 0:
                with lock:
                    allowed[0] += 1

    threads = [threading.Thread(target=hammer, args=(lim,)) for lim in limiters]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert allowed[0] == 20


def test_a_row_created_between_the_update_and_the_select_is_taken_from_not_waved_through(tmp_path: Path) -> None:
    """CI defect: two hosts on PostgreSQL let 21 of a burst of 20 through.

    Under READ COMMITTED each statement has its own snapshot: a key's first UPDATE can miss a row
    that another host commits before the SELECT that follows sees it with a full bucket. The old
    code then returned the negative "wait" (1 - 19) / rate, which the caller read as "allowed",
    without taking a token. Here the first UPDATE is made to miss the (existing) row.
    """
    from sqlalchemy import event, select

    from cloud.service.db import RateBucket

    engine = make_engine(database_url(tmp_path))
    sessions = make_sessionmaker(engine)
    limit = RateLimit(rate=0.001, burst=20)
    lim = SharedRateLimiter(sessions, limit)
    t = 1_000_000.0
    assert lim.allow("k", now=t) == 0  # creates the row: 19 left
    missed = [0]

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def miss_first_update(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("UPDATE RATE_BUCKETS") and not missed[0]:
            missed[0] = 1
            head, sep, tail = statement.partition(" RETURNING")  # SQLAlchemy 2.1 may add RETURNING for rowcount
            statement = head + " AND 0 = 1" + sep + tail
        return statement, parameters

    assert lim.allow("k", now=t) == 0 and missed[0] == 1
    with sessions() as s:
        assert s.scalar(select(RateBucket.tokens).where(RateBucket.key == "dev:k")) == 18.0  # a token was taken
    granted = sum(lim.allow("k", now=t) == 0 for _ in range(30))
    assert granted == 18  # 20 in all, never more
