"""``serve --workers 2`` behaves like one process: a burst spread over both workers gets exactly the
token-bucket bound, and an idempotency key replayed on another worker is stored once.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from cloud.service.db import Sample
from device.agent.collector import encode_input
from tests.conftest import SHIPPED
from tests.service_helpers import ServiceProcess, postgres_cluster_or_skip, setup_service

pytestmark = pytest.mark.service

BURST = 20


def _fresh(method: str, url: str, **kw) -> httpx.Response:
    """One request on its own connection, so the kernel may hand it to either worker."""
    with httpx.Client(timeout=30, headers={"Connection": "close"}) as c:
        return c.request(method, url, **kw)


def _concurrently(n: int, fn) -> list[httpx.Response]:
    out: list[httpx.Response | None] = [None] * n
    def run(i: int) -> None:
        out[i] = fn(i)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return [r for r in out if r is not None]


def test_two_workers_share_the_rate_limit_and_the_idempotency_keys(tmp_path: Path) -> None:
    sessions, registry, key, _, tokens = setup_service(tmp_path, ("burst", "replay"))
    registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    # a refill of one token per 1000 s: within the test the bound is exactly the burst
    with ServiceProcess(tmp_path, extra=("--workers", "2", "--rate", "0.001", "--burst", str(BURST))) as svc:
        auth = {"Authorization": f"Bearer {tokens['burst']}"}
        replies = _concurrently(60, lambda i: _fresh("GET", svc.url + "/v1/channels/stable/current", headers=auth))
        codes = [r.status_code for r in replies]
        workers = {r.headers["x-edgeloop-worker"] for r in replies}
        assert len(replies) == 60 and len(workers) == 2, workers  # the burst really was spread over both
        assert codes.count(200) == BURST and codes.count(429) == 60 - BURST, codes

        x = np.arange(784, dtype=np.uint8).reshape(28, 28, 1)
        batch = {"samples": [{"id": f"r{i}", "input": encode_input(x), "prediction": 1, "confidence": 0.5,
                              "label": None, "model_version": "1", "timestamp": 1e9} for i in range(5)]}
        headers = {"Authorization": f"Bearer {tokens['replay']}", "Idempotency-Key": uuid.uuid4().hex}
        replays = _concurrently(12, lambda i: _fresh("POST", svc.url + "/v1/samples", json=batch, headers=headers))
        assert [r.status_code for r in replays] == [200] * 12, [r.text for r in replays]
        assert len({r.headers["x-edgeloop-worker"] for r in replays}) == 2
        bodies = [r.json() for r in replays]
        assert sum(not b["replayed"] for b in bodies) == 1 and all(b["stored"] == 5 for b in bodies)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Sample)) == 5


def test_two_hosts_on_one_postgresql_share_the_bucket_and_a_rollout(tmp_path: Path) -> None:
    """Two separate ``serve`` processes (two hosts behind a load balancer) on one PostgreSQL with --shared-limits."""
    from cloud.service.rollout import RolloutPlan, bucket
    from cloud.service.rollout_store import start_rollout

    with postgres_cluster_or_skip() as (url, _info):
        sessions, registry, key, _, tokens = setup_service(tmp_path / "a", ("burst",) + tuple(f"d{i}" for i in range(8)),
                                                           database_url=url)
        registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
        registry.publish(SHIPPED / "mnist-cnn-float32", None, key)
        start_rollout(sessions, registry, 2, "stable", RolloutPlan(stages=(50, 100), hold_s=3600), signing_key=key)
        shutil.copytree(tmp_path / "a" / "blobs", tmp_path / "b" / "blobs")  # the hosts share the blob store
        shutil.copytree(tmp_path / "a" / "keys", tmp_path / "b" / "keys")
        extra = ("--shared-limits", "--rate", "0.001", "--burst", str(BURST), "--database-url", url)
        with ServiceProcess(tmp_path / "a", extra=extra) as a, ServiceProcess(tmp_path / "b", extra=extra) as b:
            auth = {"Authorization": f"Bearer {tokens['burst']}"}
            replies = _concurrently(60, lambda i: _fresh("GET", (a, b)[i % 2].url + "/v1/channels/stable/current",
                                                         headers=auth))
            codes = [r.status_code for r in replies]
            assert codes.count(200) == BURST and codes.count(429) == 60 - BURST, codes
            for i in range(8):  # both hosts put every device in the same stage
                h = {"Authorization": f"Bearer {tokens[f'd{i}']}"}
                got = {httpx.get(host.url + "/v1/channels/stable/current", headers=h).json()["version"] for host in (a, b)}
                assert got == {2 if bucket("2", f"d{i}") < 50 else 1}
