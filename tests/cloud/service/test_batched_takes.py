"""The fast path's batched throttle on PostgreSQL: one statement per loop turn, the per-request decisions."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import event

from cloud.service.auth import RateLimit, RateLimiter
from cloud.service.db import make_engine, make_sessionmaker, volatile_engine
from cloud.service.shared_limits import BatchedTakes, SharedRateLimiter
from tests.service_helpers import postgres_cluster_or_skip

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def pg_url():
    with postgres_cluster_or_skip() as (url, _info):
        make_sessionmaker(make_engine(url))  # creates the tables
        yield url


def _turn(batcher: BatchedTakes, keys: list[object]) -> list[float]:
    """Every key's take started in one event-loop turn, as a loaded worker's polls are."""
    async def main() -> list[float]:
        return list(await asyncio.gather(*(batcher.allow(k) for k in keys)))
    return asyncio.run(main())


def test_one_turn_is_one_statement_with_the_decisions_of_the_per_request_path(pg_url: str) -> None:
    engine = volatile_engine(make_engine(pg_url))
    limit = RateLimit(rate=0.001, burst=3)
    batcher = BatchedTakes(SharedRateLimiter(engine, limit, prefix="t1"))
    updates = [0]

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        updates[0] += statement.lstrip().upper().startswith("UPDATE")

    keys = [f"d{i}" for i in range(40)]
    assert _turn(batcher, keys) == [0.0] * 40  # each key's first request: no row yet, each created by allow()
    updates[0] = 0
    assert _turn(batcher, keys) == [0.0] * 40
    assert batcher.statements == 2 and updates[0] == 1  # 40 takes, one UPDATE
    # the same key four times in one turn (a burst of 3 with 2 left) and other keys beside it:
    # exactly what the in-memory limiter says, Retry-After included
    oracle = RateLimiter(limit)
    expected = [oracle.allow(k) for k in ["d0", "d0"] + ["d0", "d0", "d0", "d1"]][2:]
    got = _turn(batcher, ["d0", "d0", "d0", "d1"])
    assert [w == 0 for w in got] == [w == 0 for w in expected] == [True, False, False, True]
    assert got[1] == pytest.approx(expected[1], rel=1e-3) and got[1] > 900  # about 1/rate seconds


def test_two_workers_taking_overlapping_keys_in_opposite_orders_get_exactly_the_burst(pg_url: str) -> None:
    """Two processes' batches lock the same rows: in key order, so neither deadlocks, and the bound is exact."""
    limit = RateLimit(rate=0.001, burst=20)
    keys = [f"k{i}" for i in range(30)]
    granted = {k: 0 for k in keys}
    lock, errors = threading.Lock(), []

    def worker(order: list[str]) -> None:
        batcher = BatchedTakes(SharedRateLimiter(volatile_engine(make_engine(pg_url)), limit, prefix="t2"))
        try:
            for _ in range(15):
                for k, wait in zip(order, _turn(batcher, order), strict=True):
                    if wait == 0:
                        with lock:
                            granted[k] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(o,)) for o in (keys, keys[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert granted == {k: 20 for k in keys}  # 2 workers × 15 turns = 30 asks per key, 20 granted
