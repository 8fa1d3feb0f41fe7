"""Random bytes and random JSON against every service endpoint, the agent's client and the bundle loader.

Bounded in count and in time. Used small by the tests (``tests/cloud/service/test_fuzz.py``,
``tests/device/agent/test_fuzz.py``) and large by ``benchmarks/fuzz.py``. A run passes when no
request gets a 5xx and no call raises anything but the errors it documents.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

NASTY_STRINGS = ["", "\ud800", "\udfff", "\x00", "é", "\u2603", "a" * 5000, "../../etc/passwd", "%00", "NaN",
                 "<script>", "' OR 1=1 --", "\r\nX-Injected: 1"]
NASTY_NUMBERS: list[Any] = [0, -1, -5, 1, 2**31, 2**63, 2**70, 10**23, 10**300, 1e308, -1e308, 0.5, 1e-300,
                            float("nan"), float("inf"), True, False]


def random_json(rng: np.random.Generator, depth: int = 0) -> Any:
    """A random JSON value with the values that break parsers: huge ints, NaN, surrogates, deep nesting."""
    pick = int(rng.integers(0, 9 if depth < 6 else 5))
    if pick == 0:
        return None
    if pick == 1:
        return NASTY_NUMBERS[int(rng.integers(len(NASTY_NUMBERS)))]
    if pick == 2:
        return NASTY_STRINGS[int(rng.integers(len(NASTY_STRINGS)))]
    if pick == 3:
        return float(rng.normal()) * 10 ** int(rng.integers(-5, 5))
    if pick == 4:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FFF, size=int(rng.integers(0, 12))))
    if pick in (5, 6):
        return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    keys = ["samples", "kind", "version", "detail", "counters", "dropped", "id", "input", "shape", "dtype", "data",
            "prediction", "confidence", "label", "model_version", "timestamp", "files", "etag", "statement"]
    return {keys[int(rng.integers(len(keys)))] if rng.random() < 0.8 else str(random_json(rng, 9))[:20]:
            random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))}


def mutate(value: Any, rng: np.random.Generator) -> Any:
    """A valid document with one leaf replaced by random JSON."""
    if isinstance(value, dict) and value and rng.random() < 0.85:
        key = list(value)[int(rng.integers(len(value)))]
        return {**value, key: mutate(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.85:
        i = int(rng.integers(len(value)))
        return [*value[:i], mutate(value[i], rng), *value[i + 1:]]
    return random_json(rng)


def encode(value: Any, rng: np.random.Generator) -> bytes:
    """JSON text, allowing NaN/Infinity and lone surrogates (what a hostile client can send)."""
    text = json.dumps(value, allow_nan=True, ensure_ascii=bool(rng.random() < 0.5))
    return text.encode("utf-8", "surrogatepass")


def random_body(rng: np.random.Generator, valid: list[Any]) -> bytes:
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return bytes(rng.integers(0, 256, size=int(rng.integers(0, 400)), dtype=np.uint8))
    if kind == 1:
        return encode(random_json(rng), rng)
    if kind == 2:
        return b"[" * int(rng.integers(1, 5000)) + b"]" * int(rng.integers(0, 5000))
    return encode(mutate(valid[int(rng.integers(len(valid)))], rng), rng)


def valid_sample(i: int) -> dict[str, Any]:
    x = np.full((2,), i % 256, np.uint8)
    return {"id": f"f{i}", "input": {"shape": [2], "dtype": "uint8", "data": base64.b64encode(x.tobytes()).decode()},
            "prediction": 1, "confidence": 0.5, "label": 2, "model_version": "1", "timestamp": 1e9}


def fuzz_service(url: str, device_token: str, admin_token: str | None, n: int, seconds: float,
                 seed: int = 0) -> Counter:
    """``n`` random requests (at most ``seconds``) to every endpoint; returns the status codes seen.

    Raises AssertionError on any 5xx.
    """
    import httpx

    rng = np.random.default_rng(seed)
    valid = [{"samples": [valid_sample(i) for i in range(3)]},
             {"kind": "dropped", "version": "1", "detail": "x", "counters": {"dropped": 3, "queued": 1}}]
    auths = [None, f"Bearer {device_token}", "Bearer " + "x" * 43, "Basic Zm9vOmJhcg==", "Bearer \u00e9",
             *([f"Bearer {admin_token}"] if admin_token else [])]
    codes: Counter = Counter()
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(n):
            if time.monotonic() > deadline:
                break
            auth = auths[int(rng.integers(len(auths)))]
            headers = {"Content-Type": "application/json"}
            if auth is not None:
                headers["Authorization"] = auth
            if rng.random() < 0.7:
                headers["Idempotency-Key"] = ["k", "", "x" * 200, str(i), "\u00e9"][int(rng.integers(5))]
            if rng.random() < 0.3:
                headers["If-None-Match"] = str(random_json(rng))[:200]
            if rng.random() < 0.2:
                headers["X-Model-Version"] = str(random_json(rng))[:100]
            headers = {k: _header_bytes(v) for k, v in headers.items()}
            which = int(rng.integers(0, 9))
            segment = urllib.parse.quote(str(random_json(rng))[:40].encode("utf-8", "surrogatepass"), safe="")
            if which <= 2:
                r = client.post("/v1/samples", content=random_body(rng, valid), headers=headers)
            elif which <= 4:
                r = client.post("/v1/events", content=random_body(rng, valid), headers=headers)
            elif which == 5:
                r = client.get(f"/v1/channels/{segment or 'stable'}/current", headers=headers)
            elif which == 6:
                r = client.get(f"/v1/versions/{segment or 1}/files/{['model.tflite', segment][int(rng.integers(2))]}",
                               headers=headers)
            else:
                path = ["/", "/v1/versions", "/docs", "/openapi.json", "/healthz", f"/{segment}"][int(rng.integers(6))]
                method = ["GET", "POST", "PUT", "DELETE"][int(rng.integers(4))]
                r = client.request(method, path, headers=headers, content=random_body(rng, valid))
            codes[r.status_code] += 1
            assert r.status_code < 500, (r.request.method, str(r.request.url)[:200], r.status_code, r.text[:300])
            if r.status_code == 429:  # the failed-auth limiter: wait as told, briefly
                time.sleep(min(0.5, float(r.headers.get("retry-after", "0.1"))))
    return codes


def _header_bytes(value: str) -> bytes:
    """Any text as raw header bytes (UTF-8, surrogates and all), minus what would end the header line."""
    return value.encode("utf-8", "surrogatepass").translate(None, b"\r\n\x00\t").strip(b" ")


def fuzz_bundle_loader(root: Path, template: Path, n: int, seconds: float, seed: int = 0) -> Counter:
    """Random ``manifest.json`` and ``signature.json`` contents into a copy of ``template``: the loader
    raises only ``BundleError`` and the signature check only ``UpdateRejected``. Returns outcomes."""
    import shutil

    from device.agent.verify_signature import verify_bundle_signature
    from device.errors import BundleError, UpdateRejected
    from device.runtime.bundle import read_manifest

    rng = np.random.default_rng(seed)
    bundle = root / "fuzz-bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(template, bundle)
    manifest = json.loads((template / "manifest.json").read_text())
    signature = json.loads((template / "signature.json").read_text()) if (template / "signature.json").exists() else {}
    key = bytes(32)
    outcomes: Counter = Counter()
    deadline = time.monotonic() + seconds
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        (bundle / "manifest.json").write_bytes(random_body(rng, [manifest]))
        (bundle / "signature.json").write_bytes(random_body(rng, [signature]))
        try:
            read_manifest(bundle)
            outcomes["manifest ok"] += 1
        except BundleError:
            outcomes["manifest BundleError"] += 1
        try:
            verify_bundle_signature(bundle, key)
            outcomes["signature ok"] += 1  # cannot happen with an all-zero key
        except UpdateRejected:
            outcomes["signature UpdateRejected"] += 1
    return outcomes


def random_replies(rng: np.random.Generator) -> Iterator[Callable[[Any], None]]:
    """Handlers for :class:`tests.device.agent.hostile_server.HostileServer`: random statuses, headers, bodies."""
    from tests.device.agent.hostile_server import raw, reply

    valid = [{"version": 1, "name": "x", "etag": '"v1"', "files": {}, "statement": None},
             {"stored": 1, "received": 1, "replayed": False}]
    while True:
        kind = int(rng.integers(0, 4))
        status = [200, 200, 200, 304, 400, 401, 404, 409, 413, 422, 429, 500, 503][int(rng.integers(13))]
        body = random_body(rng, valid)
        headers = {}
        if rng.random() < 0.3:
            headers["Retry-After"] = str(random_json(rng))[:60].encode("ascii", "replace").decode()
        if rng.random() < 0.3:
            headers["ETag"] = str(random_json(rng))[:60].encode("ascii", "replace").decode()
        if kind == 0:
            yield lambda h, s=status, b=body, hd=headers: reply(h, s, b, hd)
        elif kind == 1:  # a lying Content-Length
            yield lambda h, s=status, b=body: raw(h, f"HTTP/1.1 {s} X\r\nContent-Length: {len(b) + 50}\r\n"
                                                    f"Connection: close\r\n\r\n".encode() + b)
        elif kind == 2:  # garbage instead of HTTP
            yield lambda h, b=body: raw(h, b)
        else:  # a broken chunked body
            yield lambda h, b=body: raw(h, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + b)


def fuzz_client(n: int, seconds: float, seed: int = 0) -> Counter:
    """The agent's client against ``n`` random replies: only its documented errors, or a valid result."""
    from device.agent.client import RequestRejected, ServerUnavailable, ServiceClient
    from device.errors import UpdateRejected
    from tests.device.agent.hostile_server import HostileServer

    rng = np.random.default_rng(seed)
    replies = random_replies(rng)
    outcomes: Counter = Counter()
    deadline = time.monotonic() + seconds
    with HostileServer() as srv:
        client = ServiceClient(srv.url, "token", timeout=2.0, download_timeout=3.0)
        for i in range(n):
            if time.monotonic() > deadline:
                break
            handler = next(replies)
            srv.route("/v1/channels/stable/current", handler)
            srv.route("/v1/samples", handler)
            srv.route("/v1/events", handler)
            try:
                which = i % 3
                if which == 0:
                    client.current("stable", '"v0"', running="1")
                elif which == 1:
                    client.upload("key", [valid_sample(i)])
                else:
                    client.report("kind", "1", "detail", {"dropped": 1})
                outcomes["ok"] += 1
            except (ServerUnavailable, RequestRejected, UpdateRejected) as exc:
                outcomes[type(exc).__name__] += 1
    return outcomes
