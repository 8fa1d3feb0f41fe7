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
