"""The 304 fast path, the change counters behind the caches, and the request-head guard.

The oracle for the fast path is the full FastAPI route itself: the same requests against an
app with ``fast_poll=False`` must get the same status, headers and body.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cloud.service.app import ServiceConfig, create_app
from cloud.service.auth import RateLimit, revoke_device
from cloud.service.db import ChangeCounter
from tests.conftest import SHIPPED
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service


def _counters(sessions) -> dict[str, int]:
    with sessions() as s:
        return dict(s.execute(select(ChangeCounter.name, ChangeCounter.value)).all())


def test_every_change_to_a_release_or_a_token_moves_its_counter_and_nothing_else_does(tmp_path: Path) -> None:
    from cloud.service.rollout import RolloutPlan
    from cloud.service.rollout_store import set_state, start_rollout

    sessions, registry, key, _, tokens = setup_service(tmp_path, ("a", "b"))
    steps = []

    def step(name: str, fn) -> None:
        before = _counters(sessions)
        fn()
        after = _counters(sessions)
        steps.append((name, {k: after[k] - before[k] for k in after}))

    step("publish", lambda: registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key))
    step("publish 2", lambda: registry.publish(SHIPPED / "mnist-cnn-float32", None, key))
    step("promote", lambda: registry.promote(2, "stable", key))
    step("rollback", lambda: registry.rollback("stable", key))
    step("rollout", lambda: start_rollout(sessions, registry, 2, "stable", RolloutPlan(stages=(50, 100), hold_s=60),
                                          signing_key=key))
    step("pause", lambda: set_state(sessions, 1, "pause"))
    step("revoke", lambda: revoke_device(sessions, "b"))
    from cloud.service.auth import add_device
    step("add device", lambda: add_device(sessions, "c"))
    moved = dict(steps)
    for name in ("publish", "publish 2", "promote", "rollback", "rollout", "pause"):
        assert moved[name]["releases"] >= 1 and moved[name]["tokens"] == 0, (name, moved[name])
    assert moved["revoke"] == {"releases": 0, "tokens": 1}
    assert moved["add device"] == {"releases": 0, "tokens": 0}  # unknown tokens are never cached


def _app(data: Path, fast: bool):
    return create_app(ServiceConfig(data_dir=data, rate=RateLimit(rate=0.001, burst=4), release_cache_s=0.0,
                                    fast_poll=fast))


def test_the_fast_path_answers_exactly_as_the_full_route(tmp_path: Path) -> None:
    sessions, registry, key, _, tokens = setup_service(tmp_path, ("a", "b", "gone", "slow"))
    registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    revoke_device(sessions, "gone")
    etag = TestClient(_app(tmp_path, False)).get(
        "/v1/channels/stable/current", headers={"Authorization": f"Bearer {tokens['a']}"}).headers["etag"]

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    cases = [
        ("unchanged", "/v1/channels/stable/current", {**auth("a"), "If-None-Match": etag}),
        ("one of several", "/v1/channels/stable/current", {**auth("a"), "If-None-Match": f'"x", {etag}'}),
        ("changed", "/v1/channels/stable/current", {**auth("a"), "If-None-Match": '"old"'}),
        ("no such channel", "/v1/channels/nope/current", {**auth("a"), "If-None-Match": etag}),
        ("bad channel", "/v1/channels/n%20o/current", {**auth("a"), "If-None-Match": etag}),
        ("no token", "/v1/channels/stable/current", {"If-None-Match": etag}),
        ("unknown token", "/v1/channels/stable/current", {"Authorization": "Bearer nope", "If-None-Match": etag}),
        ("revoked", "/v1/channels/stable/current", {**auth("gone"), "If-None-Match": etag}),
        ("basic auth", "/v1/channels/stable/current", {"Authorization": "Basic eDp5", "If-None-Match": etag}),
        ("query string", "/v1/channels/stable/current?x=1", {**auth("b"), "If-None-Match": etag}),
        # a burst of 4, then 429 with Retry-After: the fast path must hand the refusal on without taking a token
        *[(f"throttled {i}", "/v1/channels/stable/current", {**auth("slow"), "If-None-Match": etag}) for i in range(6)],
    ]
    replies = {}
    for fast in (False, True):
        client = TestClient(_app(tmp_path, fast))
        # the Retry-After seconds in a 429's text depend on when it was asked: compare them to the second
        replies[fast] = [(name, r.status_code, {k: v for k, v in r.headers.items() if k != "date"},
                          re.sub(rb"retry in \d+\.\d+ s", lambda m: b"retry in %d s" % round(float(m.group()[9:-2])),
                                 r.content))
                         for name, path, headers in cases for r in [client.get(path, headers=headers)]]
    assert replies[True] == replies[False]
    # a poll with a body over the limit: the body limit refuses it, as before the fast path moved outside it
    for fast in (False, True):
        with_body = TestClient(_app(tmp_path, fast)).request("GET", "/v1/channels/stable/current", content=b"x" * (2 << 20),
                                                             headers={**auth("a"), "If-None-Match": etag})
        assert with_body.status_code == 413, (fast, with_body.status_code)
    statuses = {name: status for name, status, _, _ in replies[True]}
    assert statuses["unchanged"] == statuses["one of several"] == 304 and statuses["changed"] == 200
    assert [statuses[f"throttled {i}"] for i in range(6)] == [304] * 4 + [429] * 2
    assert statuses["revoked"] == statuses["unknown token"] == statuses["no token"] == 401


def test_a_promote_and_a_revocation_reach_every_worker_at_once(tmp_path: Path) -> None:
    """Defect: the release cache lived in each process for ``--release-cache`` seconds, so after a promote a
    worker kept handing out the old release (and its download links) that long. Now only "unchanged" (304)
    answers may lag, and by at most --release-cache, here 1 s; everything else sees the change at once."""
    sessions, registry, key, _, tokens = setup_service(tmp_path, ("a", "b"))
    registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    registry.publish(SHIPPED / "mnist-cnn-float32", None, key)
    with ServiceProcess(tmp_path, extra=("--workers", "2", "--release-cache", "1", "--rate", "1000",
                                         "--burst", "1000")) as svc:
        url = svc.url + "/v1/channels/stable/current"

        def get(name: str, **headers: str) -> httpx.Response:
            with httpx.Client(timeout=30, headers={"Connection": "close"}) as c:  # either worker may answer
                return c.get(url, headers={"Authorization": f"Bearer {tokens[name]}", **headers})

        first = [get("a") for _ in range(12)]
        assert {r.json()["version"] for r in first} == {1} and len({r.headers["x-edgeloop-worker"] for r in first}) == 2
        old = first[0].headers["etag"]
        registry.promote(2, "stable", key)  # in this process: the servers learn of it only through the database
        after = [get("a") for _ in range(12)]
        assert {r.json()["version"] for r in after} == {2}, [r.json()["version"] for r in after]
        promoted = time.monotonic()
        while True:  # a device holding v1's etag: 304 for at most --release-cache, then v2
            r = get("a", **{"If-None-Match": old})
            if r.status_code == 200:
                assert r.json()["version"] == 2
                break
            assert r.status_code == 304 and time.monotonic() - promoted < 1.0 + 1.5, r.status_code
            assert r.headers["x-edgeloop-worker"].isdigit()  # the fast path's 304 names its worker too
            time.sleep(0.05)
        revoke_device(sessions, "b")
        assert [get("b").status_code for _ in range(8)] == [401] * 8


def test_a_request_head_dripped_past_the_limit_is_refused_and_a_large_body_is_not(tmp_path: Path) -> None:
    sessions, registry, key, _, tokens = setup_service(tmp_path, ("a",))
    with ServiceProcess(tmp_path, extra=("--max-header-bytes", "4096")) as svc:
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            sent, answer = 0, b""
            try:
                for _ in range(64):  # 64 KiB in 1 KiB pieces, never the blank line
                    sock.sendall(b"X-Pad: " + b"a" * 1015 + b"\r\n")
                    sent += 1024
                    time.sleep(0.005)
            except OSError:  # closed under us: refused
                pass
            sock.settimeout(5)
            try:
                answer = sock.recv(4096)
            except OSError:
                pass
        assert answer.startswith(b"HTTP/1.1 431"), (sent, answer[:80])
        # a body is not a head: 200 KB of samples in the same writes as the head is judged by the body limit
        body = b'{"samples": [' + b" " * 200_000 + b"]}"
        head = (f"POST /v1/samples HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens['a']}\r\n"
                f"Idempotency-Key: k1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
            sock.sendall(head + body)
            answer = sock.recv(4096)
        assert answer.split(b" ", 2)[1] == b"422", answer[:200]  # an empty batch: the schema says no, not the guard
        assert httpx.get(svc.url + "/healthz").status_code == 200


def test_polls_mark_devices_seen_and_the_marks_are_written_together(tmp_path: Path, monkeypatch) -> None:
    """Defect (found profiling 1,000 polling devices): every device's "last seen" was its own UPDATE and
    transaction, 200 a second, a quarter of the server's time. Now the marks are written in one
    executemany per SEEN_FLUSH_S; a new running version is still written at once."""
    from sqlalchemy import event

    import cloud.service.app as app_module
    from cloud.service.db import Device

    names = tuple(f"d{i}" for i in range(30))
    sessions, registry, key, _, tokens = setup_service(tmp_path, names)
    registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    monkeypatch.setattr(app_module, "SEEN_FLUSH_S", 0.5)
    app = create_app(ServiceConfig(data_dir=tmp_path, rate=RateLimit(rate=100, burst=100)))
    statements: list[tuple[str, bool]] = []
    event.listen(app.state.engine, "before_cursor_execute",
                 lambda conn, cur, stmt, params, ctx, many: statements.append((stmt, many)))
    client = TestClient(app)
    etag = client.get("/v1/channels/stable/current", headers={"Authorization": f"Bearer {tokens['d0']}"}).headers["etag"]
    time.sleep(0.6)
    statements.clear()
    before = time.time()
    for name in names:
        r = client.get("/v1/channels/stable/current", headers={"Authorization": f"Bearer {tokens[name]}",
                                                               "If-None-Match": etag})
        assert r.status_code == 304
    device_updates = [(s, many) for s, many in statements if s.lstrip().upper().startswith("UPDATE DEVICES")]
    assert len(device_updates) <= 1  # at most one flush fell inside the loop
    time.sleep(0.6)
    client.get("/v1/channels/stable/current", headers={"Authorization": f"Bearer {tokens['d0']}", "If-None-Match": etag})
    device_updates = [(s, many) for s, many in statements if s.lstrip().upper().startswith("UPDATE DEVICES")]
    assert 1 <= len(device_updates) <= 2, device_updates  # 30 devices seen: one or two statements, not 30
    with sessions() as s:
        seen = dict(s.execute(select(Device.name, Device.last_seen)).all())
    assert all(seen[n] is not None and seen[n] >= before - 1 for n in names), seen
    # news is not batched: the running version a device reports is written by its own poll
    client.get("/v1/channels/stable/current", headers={"Authorization": f"Bearer {tokens['d3']}", "If-None-Match": etag,
                                                       "X-Model-Version": "7"})
    with sessions() as s:
        assert s.scalar(select(Device.running_version).where(Device.name == "d3")) == "7"
