"""The HTTP API against a real uvicorn server on 127.0.0.1: releases, ETags, ingestion and its status codes."""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.conftest import SHIPPED
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service

ADMIN = "admin-token-for-the-api-tests"
LIMITS = ("--rate", "5", "--burst", "40", "--max-batch", "50", "--max-request-bytes", "100000", "--device-quota", "300")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("svc")
    sessions, registry, key, public, tokens = setup_service(data, ("dev1", "dev2", "dev3", "hammer", "quota", "fuzz"))
    with ServiceProcess(data, extra=LIMITS, admin_token=ADMIN) as svc:
        yield svc, sessions, registry, key, tokens


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sample(i: int, **over) -> dict:
    x = np.full((28, 28, 1), i % 256, np.uint8)
    s = {"id": f"s{i}-{uuid.uuid4().hex[:8]}", "input": {"shape": [28, 28, 1], "dtype": "uint8",
                                                          "data": base64.b64encode(x.tobytes()).decode()},
         "prediction": i % 10, "confidence": 0.5, "label": (i + 1) % 10, "model_version": "1", "timestamp": 1.0e9 + i}
    s.update(over)
    return s


def _stored(sessions, device: str) -> list[str]:
    from cloud.service.db import Device, Sample

    with sessions() as s:
        return list(s.scalars(select(Sample.sample_id).join(Device, Device.id == Sample.device_id)
                              .where(Device.name == device)).all())


def test_openapi_schema_is_served(service) -> None:
    svc = service[0]
    schema = httpx.get(svc.url + "/openapi.json", headers=svc.admin).json()
    assert {"/v1/samples", "/v1/channels/{channel}/current", "/v1/events", "/v1/versions"} <= set(schema["paths"])
    body = schema["paths"]["/v1/samples"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    sample = body["properties"]["samples"]["items"]
    assert {"id", "input", "prediction", "confidence", "model_version", "timestamp"} <= set(sample["required"])
    assert "$ref" not in json.dumps(body)


def test_release_etag_promote_and_rollback(service) -> None:
    svc, _, registry, key, tokens = service
    h = _auth(tokens["dev1"])
    assert httpx.get(svc.url + "/v1/channels/stable/current", headers=h).status_code == 404
    v1 = registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    r = httpx.get(svc.url + "/v1/channels/stable/current", headers=h)
    assert r.status_code == 200 and r.headers["etag"] == v1.etag and r.json()["version"] == v1.version
    assert set(r.json()["files"]) == {"manifest.json", "model.tflite", "canary.npz", "signature.json"}
    r304 = httpx.get(svc.url + "/v1/channels/stable/current", headers={**h, "If-None-Match": v1.etag})
    assert r304.status_code == 304 and r304.content == b""
    model = httpx.get(svc.url + r.json()["files"]["model.tflite"]["url"], headers=h)
    assert model.content == (SHIPPED / "mnist-cnn-int8" / "model.tflite").read_bytes()
    assert httpx.get(svc.url + f"/v1/versions/{v1.version}/files/secret.key", headers=h).status_code == 404

    v2 = registry.publish(SHIPPED / "mnist-cnn-float32", "canary", key)
    assert httpx.get(svc.url + "/v1/channels/stable/current", headers={**h, "If-None-Match": v1.etag}).status_code == 304
    registry.promote(v2.version, "stable", key)
    r = httpx.get(svc.url + "/v1/channels/stable/current", headers={**h, "If-None-Match": v1.etag})
    promoted = registry.current("stable")  # v2, with the statement the promote signed for stable
    assert r.status_code == 200 and r.json()["version"] == v2.version and r.headers["etag"] == promoted.etag != v1.etag
    assert r.json()["statement"]["channel"] == "stable" and promoted.etag != v2.etag  # v2.etag: its canary statement
    assert registry.rollback("stable").version == v1.version
    assert httpx.get(svc.url + "/v1/channels/stable/current", headers={**h, "If-None-Match": v1.etag}).status_code == 304
    listed = {v["version"]: v for v in httpx.get(svc.url + "/v1/versions", headers=svc.admin).json()}
    assert listed[v1.version]["channels"] == ["stable"] and listed[v2.version]["channels"] == ["canary"]


def test_replayed_batch_is_stored_once(service) -> None:
    svc, sessions, _, _, tokens = service
    h = _auth(tokens["dev2"])
    batch = {"samples": [_sample(i) for i in range(10)]}
    first = httpx.post(svc.url + "/v1/samples", json=batch, headers={**h, "Idempotency-Key": "k1"})
    again = httpx.post(svc.url + "/v1/samples", json=batch, headers={**h, "Idempotency-Key": "k1"})
    assert first.json() == {"stored": 10, "received": 10, "replayed": False}
    assert again.status_code == 200 and again.json()["replayed"] is True
    # the same samples under a new key (a client that lost its key) are not stored twice either
    other = httpx.post(svc.url + "/v1/samples", json=batch, headers={**h, "Idempotency-Key": "k2"})
    assert other.json()["stored"] == 0
    ids = _stored(sessions, "dev2")
    assert sorted(ids) == sorted(s["id"] for s in batch["samples"])


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("no token", 401), ("unknown token", 401), ("no idempotency key", 400), ("bad base64", 400),
        ("data size mismatch", 400), ("not json", 422), ("missing field", 422), ("confidence > 1", 422),
        ("empty batch", 422), ("unknown field", 422), ("too many samples", 413), ("body too large", 413),
    ],
)
def test_bad_requests_get_their_status_code(service, case: str, status: int) -> None:
    svc, sessions, _, _, tokens = service
    headers = {**_auth(tokens["dev3"]), "Idempotency-Key": uuid.uuid4().hex}
    body: object = {"samples": [_sample(1)]}
    content = None
    if case == "no token":
        headers.pop("Authorization")
    elif case == "unknown token":
        headers["Authorization"] = "Bearer not-a-device"
    elif case == "no idempotency key":
        headers.pop("Idempotency-Key")
    elif case == "bad base64":
        body = {"samples": [_sample(1, input={"shape": [28, 28, 1], "dtype": "uint8", "data": "%%%"})]}
    elif case == "data size mismatch":
        body = {"samples": [_sample(1, input={"shape": [28, 28, 1], "dtype": "uint8", "data": "AAAA"})]}
    elif case == "not json":
        content = b"{this is not json"
    elif case == "missing field":
        body = {"samples": [{k: v for k, v in _sample(1).items() if k != "prediction"}]}
    elif case == "confidence > 1":
        body = {"samples": [_sample(1, confidence=2.0)]}
    elif case == "empty batch":
        body = {"samples": []}
    elif case == "unknown field":
        body = {"samples": [_sample(1, extra=1)]}
    elif case == "too many samples":
        body = {"samples": [_sample(i, input={"shape": [2], "dtype": "uint8", "data": "AAA="}) for i in range(51)]}
    elif case == "body too large":
        body = {"samples": [_sample(i) for i in range(100)]}  # ~105 kB of base64 over the 100 kB limit
    before = len(_stored(sessions, "dev3"))
    r = (httpx.post(svc.url + "/v1/samples", content=content, headers={**headers, "Content-Type": "application/json"})
         if content is not None else httpx.post(svc.url + "/v1/samples", json=body, headers=headers))
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert len(_stored(sessions, "dev3")) == before  # nothing stored by a bad request


def test_device_quota_gets_413(service) -> None:
    svc, sessions, _, _, tokens = service
    h = _auth(tokens["quota"])
    small = {"shape": [2], "dtype": "uint8", "data": "AAA="}
    for k in range(6):
        r = httpx.post(svc.url + "/v1/samples", json={"samples": [_sample(50 * k + i, input=small) for i in range(50)]},
                       headers={**h, "Idempotency-Key": f"q{k}"})
        assert r.status_code == 200, r.text
    r = httpx.post(svc.url + "/v1/samples", json={"samples": [_sample(999, input=small)]},
                   headers={**h, "Idempotency-Key": "q-over"})
    assert r.status_code == 413 and "quota" in r.json()["detail"]
    assert len(_stored(sessions, "quota")) == 300


def test_too_fast_gets_429_with_retry_after(service) -> None:
    """A token bucket of 40 refilled at 5/s: at most 40 + 5 t requests pass in t seconds, then 429."""
    svc, _, _, _, tokens = service
    h = _auth(tokens["hammer"])
    passed, limited = 0, None
    with httpx.Client() as client:
        start = time.monotonic()
        for _ in range(400):
            r = client.get(svc.url + "/v1/channels/none/current", headers=h)
            if r.status_code == 429:
                limited = r
                break
            assert r.status_code == 404
            passed += 1
        elapsed = time.monotonic() - start
    assert limited is not None and int(limited.headers["retry-after"]) >= 1 and "too many" in limited.json()["detail"]
    assert 40 <= passed <= 40 + 5 * elapsed + 1
    other = httpx.get(svc.url + "/v1/channels/none/current", headers=_auth(tokens["dev1"]))
    assert other.status_code == 404  # the limit is per device


def test_events_update_the_device(service) -> None:
    from cloud.service.db import Device

    svc, sessions, _, _, tokens = service
    r = httpx.post(svc.url + "/v1/events", headers=_auth(tokens["dev1"]),
                   json={"kind": "dropped", "version": "1", "detail": "queue full", "counters": {"dropped": 7}})
    assert r.status_code == 204
    with sessions() as s:
        dev = s.scalars(select(Device).where(Device.name == "dev1")).one()
        assert dev.dropped == 7 and dev.last_event == "dropped: queue full" and dev.last_seen is not None
    assert httpx.post(svc.url + "/v1/events", headers=_auth("bogus"), json={"kind": "x"}).status_code == 401


SAMPLE_KEYS = ["id", "input", "prediction", "confidence", "label", "model_version", "timestamp", "extra"]
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                           max_leaves=12)
samples_like = st.fixed_dictionaries({}, optional={k: json_values for k in SAMPLE_KEYS})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=300), st.builds(lambda xs: json.dumps({"samples": xs}).encode(),
                                                        st.lists(samples_like, max_size=3))))
def test_arbitrary_bodies_get_a_4xx_and_store_nothing(service, body: bytes) -> None:
    """Whatever a client sends, the answer is a 4xx with a reason (never a 500), and nothing bad is stored."""
    svc, sessions, _, _, tokens = service
    before = len(_stored(sessions, "fuzz"))
    headers = {**_auth(tokens["fuzz"]), "Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    for _ in range(50):  # hypothesis may call faster than the 5/s rate limit allows: wait as told
        r = httpx.post(svc.url + "/v1/samples", content=body, headers=headers)
        if r.status_code != 429:
            break
        time.sleep(0.2)
    assert r.status_code in (400, 413, 422), (r.status_code, r.text)
    assert len(_stored(sessions, "fuzz")) == before
