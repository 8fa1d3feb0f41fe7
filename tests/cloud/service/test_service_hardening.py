"""The service under attack (issue 12, items 15-21): a real ``edgeloop cloud serve`` on 127.0.0.1.

Bodies are capped and authentication comes before any parsing; numbers and strings are checked
at the edge (a 4xx, nothing stored); a reused Idempotency-Key with another body is a 409; tokens
can be revoked at once; failed authentications, huge headers and half-open connections are
limited; the dashboard and the listings need the admin token. Test names carry the item number.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from tests.conftest import SHIPPED, run_cli
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service

ADMIN = "the-admin-token-of-the-hardening-tests"
DEVICES = ("d15", "d16", "d17", "d18", "d19", "d20", "d21")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("hard")
    sessions, registry, key, _, tokens = setup_service(data, DEVICES)
    registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    extra = ("--rate", "1000", "--burst", "1000", "--max-request-bytes", "200000", "--header-timeout", "1")
    with ServiceProcess(data, extra=extra, admin_token=ADMIN) as svc:
        yield svc, sessions, tokens, data


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sample(i: int, dtype: str = "uint8", **over) -> dict:
    x = np.full((2,), i % 100, np.dtype(dtype))
    return {"id": f"s{i}", "input": {"shape": [2], "dtype": dtype, "data": base64.b64encode(x.tobytes()).decode()},
            "prediction": 1, "confidence": 0.5, "label": None, "model_version": "1", "timestamp": 1e9, **over}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _healthz_on(sock: socket.socket) -> bool:
    """Send ``GET /healthz`` on a kept-alive connection and read the whole answer (head and body may come
    in two reads); True for a 200, False if the server closed the connection."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while not got.endswith(b'{"status":"ok"}'):
        chunk = sock.recv(4096)
        if not chunk:
            return False
        got += chunk
    return got.startswith(b"HTTP/1.1 200")


def _count(sessions, table) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(table)))


# -- 15 ------------------------------------------------------------------------------------------


def test_15_a_sample_of_an_unstored_dtype_gets_422_with_a_json_body(service) -> None:
    svc, sessions, tokens, _ = service
    r = httpx.post(svc.url + "/v1/samples", json={"samples": [_sample(1, "int64")]},
                   headers={**_auth(tokens["d15"]), "Idempotency-Key": "k15"})
    assert r.status_code == 422, r.text
    assert any("dtype" in e["loc"] for e in r.json()["detail"])


# -- 16 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["none", "device"])
def test_16_a_50_mb_body_is_refused_unread(service, auth: str) -> None:
    from cloud.service.db import Event

    svc, sessions, tokens, _ = service
    headers = {"Content-Type": "application/json", **(_auth(tokens["d16"]) if auth == "device" else {})}
    before = _rss_kib(svc.proc.pid)
    events = _count(sessions, Event)
    body = b'{"kind": "x", "detail": "' + b"a" * (50 << 20) + b'"}'

    def chunks():
        for i in range(0, len(body), 1 << 20):
            yield body[i:i + 1 << 20]

    for content in (body, chunks()):  # with a Content-Length, and chunked (no length to check up front)
        started = time.monotonic()
        try:
            r = httpx.post(svc.url + "/v1/events", content=content, headers=headers, timeout=30)
            assert r.status_code in ((401, 413) if auth == "none" else (413,)), r.text
        except httpx.TransportError:  # the server answered and closed before the client finished sending
            pass
        health = httpx.get(svc.url + "/healthz", timeout=5)
        assert health.status_code == 200 and time.monotonic() - started < 10
    grown = _rss_kib(svc.proc.pid) - before
    assert grown < 40_000, f"server RSS grew by {grown} KiB"
    assert _count(sessions, Event) == events


# -- 17 ------------------------------------------------------------------------------------------


def test_17_a_revoked_token_is_refused_from_the_next_request(service) -> None:
    svc, _, tokens, data = service
    h = _auth(tokens["d17"])
    assert httpx.get(svc.url + "/v1/channels/stable/current", headers=h).status_code == 200
    out = run_cli("cloud", "revoke-device", "d17", "--data-dir", str(data), "--json")
    assert out.returncode == 0, out.stderr
    r = httpx.get(svc.url + "/v1/channels/stable/current", headers=h)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    missing = run_cli("cloud", "revoke-device", "nobody", "--data-dir", str(data))
    assert missing.returncode == 1 and "no device named" in missing.stderr


# -- 18 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "body"), [
    ("dropped 2^70", b'{"kind": "dropped", "counters": {"dropped": 1180591620717411303424}}'),
    ("dropped -5", b'{"kind": "dropped", "counters": {"dropped": -5}}'),
    ("NaN counter", b'{"kind": "dropped", "counters": {"dropped": NaN}}'),
    ("lone surrogate", b'{"kind": "x", "detail": "\\ud800"}'),
    ("surrogate in kind", b'{"kind": "\\udfff"}'),
    ("too many counters", b'{"kind": "x", "counters": {' + b", ".join(b'"c%d": 1' % i for i in range(40)) + b"}}"),
])
def test_18_bad_numbers_and_strings_get_a_4xx_and_store_nothing(service, case: str, body: bytes) -> None:
    from cloud.service.db import Device, Event

    svc, sessions, tokens, _ = service
    before = _count(sessions, Event)
    r = httpx.post(svc.url + "/v1/events", content=body,
                   headers={**_auth(tokens["d18"]), "Content-Type": "application/json"})
    assert r.status_code == 422, (case, r.status_code, r.text)
    assert isinstance(r.json()["detail"], list)
    assert _count(sessions, Event) == before
    with sessions() as s:
        assert s.scalars(select(Device.dropped).where(Device.name == "d18")).one() == 0


@pytest.mark.parametrize("version", ["100000000000000000000000", "-1", "0"])
def test_18_an_absurd_version_in_a_download_path_is_a_4xx(service, version: str) -> None:
    svc, _, tokens, _ = service
    r = httpx.get(svc.url + f"/v1/versions/{version}/files/model.tflite", headers=_auth(tokens["d18"]))
    assert r.status_code == 422, r.text


def test_18_a_sample_with_a_surrogate_or_nan_stores_nothing(service) -> None:
    from cloud.service.db import Sample

    svc, sessions, tokens, _ = service
    before = _count(sessions, Sample)
    h = {**_auth(tokens["d18"]), "Content-Type": "application/json"}
    good = _sample(1)
    for bad in (b'{"samples": [' + httpx.Request("POST", "/", json=good).content[:-1] + b', "x": 1}]}',
                httpx.Request("POST", "/", json={"samples": [good]}).content.replace(b'"model_version":"1"',
                                                                                   b'"model_version":"\\ud800"'),
                httpx.Request("POST", "/", json={"samples": [good]}).content.replace(b'"timestamp":1000000000.0',
                                                                                   b'"timestamp":NaN')):
        r = httpx.post(svc.url + "/v1/samples", content=bad, headers={**h, "Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 422, r.text
    assert _count(sessions, Sample) == before


# -- 19 ------------------------------------------------------------------------------------------


def test_19_an_idempotency_key_reused_with_another_body_is_a_409(service) -> None:
    from cloud.service.db import Device, Sample

    svc, sessions, tokens, _ = service
    h = {**_auth(tokens["d19"]), "Idempotency-Key": "same-key"}
    bodies = [{"samples": [_sample(100 * k + i) for i in range(5)]} for k in range(15)]
    results: list[httpx.Response] = []
    barrier = threading.Barrier(15)

    def send(body: dict) -> None:
        barrier.wait(10)
        results.append(httpx.post(svc.url + "/v1/samples", json=body, headers=h, timeout=30))

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [409] * 14, codes
    winner = next(r for r in results if r.status_code == 200).json()
    assert winner == {"stored": 5, "received": 5, "replayed": False}
    assert all("Idempotency-Key" in r.json()["detail"] for r in results if r.status_code == 409)
    with sessions() as s:
        stored = s.scalars(select(Sample.sample_id).join(Device).where(Device.name == "d19")).all()
    assert len(stored) == 5
    # the exact same body again is a replay, as before
    won = next(b for b in bodies if {s["id"] for s in b["samples"]} == set(stored))
    again = httpx.post(svc.url + "/v1/samples", json=won, headers=h)
    assert again.status_code == 200 and again.json()["replayed"] is True


# -- 20 ------------------------------------------------------------------------------------------


def test_20_a_2_mb_header_is_refused(service) -> None:
    svc, _, tokens, _ = service
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n")
        except OSError:  # refused and closed before all of it was sent
            pass
        answer = sock.recv(4096)
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:100]
    assert httpx.get(svc.url + "/healthz").status_code == 200


def test_20_a_kept_alive_connection_that_dribbles_its_next_head_is_closed_too(service) -> None:
    """After a full request and response, the next head must also complete within --header-timeout (1 s),
    however many bytes trickle in; and a connection that sends whole requests stays open meanwhile."""
    svc = service[0]
    slow, busy = (socket.create_connection(("127.0.0.1", svc.port), timeout=5) for _ in range(2))
    try:
        for s in (slow, busy):
            assert _healthz_on(s)
        start, closed_after = time.monotonic(), None
        for part in [b"G", b"E", b"T", b" ", b"/", b"h", b"e", b"a", b"l", b"t", b"h"] * 2:
            assert _healthz_on(busy)  # every 0.25 s a whole request: this one is answered each time
            try:
                slow.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - start
                break
            slow.settimeout(0.25)
            try:
                if slow.recv(1024) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed_after = time.monotonic() - start
                break
        assert closed_after is not None and 0.9 < closed_after < 2.5, closed_after
    finally:
        slow.close()
        busy.close()


def test_20_half_open_connections_are_closed_after_the_header_timeout(service) -> None:
    svc = service[0]
    socks = [socket.create_connection(("127.0.0.1", svc.port), timeout=5) for _ in range(50)]
    try:
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert httpx.get(svc.url + "/healthz", timeout=5).status_code == 200  # others are still served
        time.sleep(3.0)  # the test server's --header-timeout is 1 s
        closed = 0
        for s in socks:
            s.settimeout(2)
            try:
                closed += s.recv(1024) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
        assert closed == 50
    finally:
        for s in socks:
            s.close()


def test_20_failed_authentications_are_rate_limited(service) -> None:
    svc, _, tokens, _ = service
    codes, limited = [], None
    with httpx.Client() as client:
        for _ in range(80):
            r = client.get(svc.url + "/v1/channels/stable/current", headers=_auth("guess-" + uuid.uuid4().hex))
            codes.append(r.status_code)
            limited = limited or (r if r.status_code == 429 else None)
    assert set(codes) == {401, 429} and codes.index(429) <= 40, codes
    assert codes.count(429) >= 30  # refilled at 2/s, so most of the rest are refused
    assert int(limited.headers["retry-after"]) >= 1 and "failed authentications" in limited.json()["detail"]
    # a device with a good token is not held back by someone else's guessing
    assert httpx.get(svc.url + "/v1/channels/stable/current", headers=_auth(tokens["d20"])).status_code == 200


# -- 21 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/v1/versions", "/docs", "/openapi.json"])
def test_21_listings_need_the_admin_token(service, path: str) -> None:
    svc, _, tokens, _ = service
    assert httpx.get(svc.url + path).status_code == 401
    assert httpx.get(svc.url + path, headers=_auth(tokens["d21"])).status_code == 401  # a device token is not enough
    assert httpx.get(svc.url + path, headers=_auth(ADMIN + "x")).status_code == 401
    assert httpx.get(svc.url + path, headers=_auth(ADMIN)).status_code == 200
    basic = base64.b64encode(f"admin:{ADMIN}".encode()).decode()
    r = httpx.get(svc.url + path, headers={"Authorization": f"Basic {basic}"})  # what a browser sends
    assert r.status_code == 200
    assert "d21" not in httpx.get(svc.url + path).text
    assert httpx.get(svc.url + "/healthz").status_code == 200


def test_21_without_an_admin_token_the_listings_are_off(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cloud.service.app import ServiceConfig, create_app

    with TestClient(create_app(ServiceConfig(tmp_path))) as client:
        for path in ("/", "/v1/versions", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 404
        assert client.get("/healthz").status_code == 200


def test_21_the_admin_token_file_is_checked(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("abc\n")
    out = run_cli("cloud", "serve", "--data-dir", str(tmp_path / "svc"), "--admin-token-file", str(tmp_path / "short"))
    assert out.returncode == 1 and "at least 16 characters" in out.stderr


def test_20_an_idle_kept_alive_connection_closes_after_keep_alive_and_a_dribbling_one_after_header_timeout(
        tmp_path: Path) -> None:
    """``--keep-alive`` (1 s) closes a connection that sends nothing after its response; bytes that never
    complete a head do not keep it open past ``--header-timeout`` (3 s), and do not count as idle before."""
    setup_service(tmp_path, ("k",))
    extra = ("--keep-alive", "1", "--header-timeout", "3")
    with ServiceProcess(tmp_path, extra=extra) as svc:
        idle, dribbling = (socket.create_connection(("127.0.0.1", svc.port), timeout=10) for _ in range(2))
        try:
            for s in (idle, dribbling):
                assert _healthz_on(s)
            dribbling.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: ")  # then one byte of the header's value at a time
            start, closed = time.monotonic(), {}
            while len(closed) < 2 and time.monotonic() - start < 8:
                for name, s in (("idle", idle), ("dribbling", dribbling)):
                    if name in closed:
                        continue
                    if name == "dribbling":
                        try:
                            s.sendall(b"a")
                        except (BrokenPipeError, ConnectionResetError):
                            closed[name] = time.monotonic() - start
                            continue
                    s.settimeout(0.1)
                    try:
                        if s.recv(1024) == b"":
                            closed[name] = time.monotonic() - start
                    except TimeoutError:
                        pass
                    except ConnectionResetError:
                        closed[name] = time.monotonic() - start
                time.sleep(0.1)
            assert 0.8 < closed.get("idle", 99) < 2.0, closed
            assert 2.8 < closed.get("dribbling", 99) < 4.5, closed
        finally:
            idle.close()
            dribbling.close()
