"""The agent against a hostile or broken server (issue 12, items 1-15): it may refuse, retry or wait,
but it never crashes, never gets stuck, and never installs what the release signer did not sign.

The server is :mod:`tests.device.agent.hostile_server` on 127.0.0.1, playing a real registry's
signed releases; each test swaps in one bad reply. Test names carry the issue's item number.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from device.agent.agent import Agent, AgentConfig
from device.agent.client import ServerUnavailable, parse_retry_after
from device.agent.collector import CollectionPolicy
from tests.conftest import SHIPPED
from tests.device.agent.hostile_server import (
    HostileServer,
    endless,
    file_reply,
    raw,
    reply,
    slow_drip,
    truncated,
)

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """A registry (no HTTP server) with signed releases: v1, v2 on ``stable``; v3 on ``canary``."""
    from tests.service_helpers import setup_service

    data = tmp_path_factory.mktemp("hostile-fleet")
    sessions, registry, key, public, _ = setup_service(data, ())
    v1 = registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    v2 = registry.publish(SHIPPED / "mnist-cnn-float32", "stable", key)
    v3 = registry.publish(SHIPPED / "mnist-cnn-int8", "canary", key)
    return {"registry": registry, "key": key, "public": public, "v1": v1.version, "v2": v2.version,
            "v3": v3.version, "data": data}


def release_json(fleet, version: int, channel: str) -> dict:
    """What an honest server says about ``version`` on ``channel``: files and its newest statement there."""
    from cloud.service.registry import Registry

    registry = fleet["registry"]
    with registry.sessions() as s:
        statement = Registry._statement(s, channel, version)
    return replace(registry.get(version), statement=statement).to_json()


def serve(srv: HostileServer, fleet, release: int, channel: str = "stable", **over) -> dict:
    """Route ``/current`` for ``channel`` to ``release`` (fields in ``over`` replaced) and every file to its blob."""
    body = {**release_json(fleet, release, channel), **over}
    srv.route(f"/v1/channels/{channel}/current", lambda h: reply(h, 200, body, {"ETag": body["etag"]}))
    serve_files(srv, fleet)
    return body


def serve_files(srv: HostileServer, fleet) -> None:
    blobs = fleet["registry"].blobs

    def files(h) -> None:
        parts = h.path.split("/")  # /v1/versions/<v>/files/<name>
        file_reply(blobs / parts[3] / parts[5])(h)

    srv.route("/v1/versions/*", files)
    srv.route("/v1/events", lambda h: reply(h, 204, b""))
    srv.route("/v1/samples", lambda h: reply(h, 200, {"stored": len(json.loads(h_body(srv))["samples"]),
                                                     "received": 0, "replayed": False}))


def h_body(srv: HostileServer) -> bytes:
    return srv.requests_to("/v1/samples")[-1].body


def make_agent(srv: HostileServer, fleet, tmp: Path, channel: str = "stable", name: str = "a", **over) -> Agent:
    settings = {"poll_interval": 0.2, "upload_interval": 0.05, "max_backoff": 0.5, "timeout": 2.0,
                "download_timeout": 3.0, "seed": 0, **over}
    return Agent(AgentConfig(directory=tmp / name, server=srv.url, token="device-token", channel=channel,
                             public_key=fleet["public"], initial_bundle=SHIPPED / "mnist-cnn-float32", **settings))


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)


# -- 1 -------------------------------------------------------------------------------------------


def test_01_non_ascii_etag_is_refused_and_never_stored(fleet, tmp_path: Path) -> None:
    with HostileServer() as srv:
        body = release_json(fleet, fleet["v1"], "stable") | {"etag": "v1-\u2603"}  # a snowman: not even Latin-1
        srv.route("/v1/channels/stable/current", lambda h: reply(h, 200, body))  # no ETag header
        serve_files(srv, fleet)
        agent = make_agent(srv, fleet, tmp_path)
        with pytest.raises(ServerUnavailable, match="etag"):
            agent.check_for_update()
        assert "\u2603" not in (agent.store.root / "state.json").read_text()
        serve(srv, fleet, fleet["v1"])  # the server is fixed: the next poll works
        assert agent.check_for_update() == "updated" and agent.version == str(fleet["v1"])
        agent.close()


def test_01_a_state_poisoned_by_an_older_agent_does_not_brick_polling(fleet, tmp_path: Path) -> None:
    with HostileServer() as srv:
        serve(srv, fleet, fleet["v1"])
        agent = make_agent(srv, fleet, tmp_path)
        agent.store.update_state(etag="v0-\u2603", rejected=["v9-\u2603"])  # what the old agent saved
        agent.close()
        again = make_agent(srv, fleet, tmp_path)  # a restart
        assert again.check_for_update() == "updated"
        assert all(ord(c) < 128 for c in srv.requests_to("/v1/channels")[-1].headers.get("If-None-Match", ""))
        again.close()


# -- 2 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["deep manifest", "non-utf8 manifest", "non-utf8 signature", "deep signature"])
def test_02_hostile_manifest_or_signature_is_rejected_before_parsing(fleet, tmp_path: Path, attack: str) -> None:
    import hashlib

    deep = b"[" * 200_000 + b"]" * 200_000
    name, content = {"deep manifest": ("manifest.json", deep), "non-utf8 manifest": ("manifest.json", b"{\"a\": \"\xff\xfe\"}"),
                     "non-utf8 signature": ("signature.json", b"\xff\xfe\xfd"),
                     "deep signature": ("signature.json", deep[:8000] + deep[-8000:])}[attack]
    with HostileServer() as srv:
        body = release_json(fleet, fleet["v1"], "stable")
        body["files"][name] = {**body["files"][name], "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
        srv.route("/v1/channels/stable/current", lambda h: reply(h, 200, body, {"ETag": body["etag"]}))
        serve_files(srv, fleet)
        srv.route(f"/v1/versions/{fleet['v1']}/files/{name}", lambda h: reply(h, 200, content))
        agent = make_agent(srv, fleet, tmp_path)
        serving = agent.store.current()
        assert agent.check_for_update() == "rejected"
        assert agent.store.current() == serving and agent.version == "shipped:mnist-cnn-float32"
        assert agent.events[-1]["kind"] == "rejected"
        agent.close()
        again = make_agent(srv, fleet, tmp_path)  # and it starts again
        assert again.version == "shipped:mnist-cnn-float32"
        again.close()


# -- 3 -------------------------------------------------------------------------------------------


def test_03_signed_bundle_with_a_canary_lacking_expected_is_unhealthy_and_never_swapped_in(fleet, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "no-expected"
    shutil.copytree(SHIPPED / "mnist-cnn-int8", bundle)
    with open(bundle / "canary.npz", "wb") as fh:
        np.savez(fh, x=digits(2))  # no "expected"
    release = fleet["registry"].publish(bundle, "nocanary", fleet["key"], check_canary=False)
    with HostileServer() as srv:
        serve(srv, fleet, release.version, "nocanary")
        agent = make_agent(srv, fleet, tmp_path, channel="nocanary")
        serving = agent.store.current()
        assert agent.check_for_update() == "rolled-back"
        assert agent.store.current() == serving and (agent.store.root / "current").resolve() == serving
        assert "canary" in agent.events[-1]["detail"] and "expected" in agent.events[-1]["detail"]
        assert agent.check_for_update() == "unchanged"  # not downloaded again
        agent.close()
    again = Agent(AgentConfig(directory=tmp_path / "a", initial_bundle=SHIPPED / "mnist-cnn-float32"))  # offline
    assert again.version == "shipped:mnist-cnn-float32" and again.runtime.manifest.mode == "float32"
    again.close()


# -- 4 -------------------------------------------------------------------------------------------


def test_04_an_older_signed_release_is_refused_as_a_downgrade(fleet, tmp_path: Path) -> None:
    with HostileServer() as srv:
        serve(srv, fleet, fleet["v2"])
        agent = make_agent(srv, fleet, tmp_path)
        assert agent.check_for_update() == "updated" and agent.version == str(fleet["v2"])
        serve(srv, fleet, fleet["v1"])  # v1 and its genuine, older statement, replayed
        assert agent.check_for_update() == "rejected"
        assert agent.version == str(fleet["v2"]) and "not newer" in agent.events[-1]["detail"]
        agent.close()


def test_04_files_announced_under_another_version_are_refused(fleet, tmp_path: Path) -> None:
    with HostileServer() as srv:
        serve(srv, fleet, fleet["v1"], version=99)
        agent = make_agent(srv, fleet, tmp_path)
        assert agent.check_for_update() == "rejected"
        assert agent.version == "shipped:mnist-cnn-float32" and "says v" in agent.events[-1]["detail"]
        agent.close()


def test_04_a_canary_release_served_on_stable_is_refused(fleet, tmp_path: Path) -> None:
    with HostileServer() as srv:
        body = serve(srv, fleet, fleet["v3"], "canary")
        srv.route("/v1/channels/stable/current", lambda h: reply(h, 200, body, {"ETag": body["etag"]}))
        agent = make_agent(srv, fleet, tmp_path)
        assert agent.check_for_update() == "rejected"
        assert "channel 'canary'" in agent.events[-1]["detail"] and agent.version == "shipped:mnist-cnn-float32"
        agent.close()


def test_04_a_release_without_a_statement_is_refused_but_a_signed_rollback_is_taken(fleet, tmp_path: Path) -> None:
    registry, key = fleet["registry"], fleet["key"]
    a = registry.publish(SHIPPED / "mnist-cnn-int8", "rb", key)
    b = registry.publish(SHIPPED / "mnist-cnn-float32", "rb", key)
    with HostileServer() as srv:
        serve(srv, fleet, a.version, "rb", statement=None)  # e.g. promoted --unsigned, or before statements existed
        agent = make_agent(srv, fleet, tmp_path, channel="rb")
        assert agent.check_for_update() == "rejected" and "statement" in agent.events[-1]["detail"]
        serve(srv, fleet, b.version, "rb")
        assert agent.check_for_update() == "updated"
        back = registry.rollback("rb", key)  # the signer's own rollback: a new, higher statement for `a`
        assert back.version == a.version and back.statement["sequence"] > b.statement["sequence"]
        serve(srv, fleet, a.version, "rb")  # a new statement is a new ETag (the old one was rejected above)
        assert agent.check_for_update() == "updated" and agent.version == str(a.version)
        agent.close()


# -- 5 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [10**300, -1, 0, "7", 2.5, True])
def test_05_an_absurd_version_is_a_malformed_answer_not_a_crash(fleet, tmp_path: Path, version) -> None:
    with HostileServer() as srv:
        serve(srv, fleet, fleet["v1"], version=version)
        agent = make_agent(srv, fleet, tmp_path)
        with pytest.raises(ServerUnavailable, match="version"):
            agent.check_for_update()
        serve(srv, fleet, fleet["v1"])
        assert agent.check_for_update() == "updated"
        agent.close()


# -- 6 and 7 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["current body", "chunked download", "sized download"])
def test_06_a_transfer_cut_short_is_a_transport_error(fleet, tmp_path: Path, where: str) -> None:
    with HostileServer() as srv:
        body = serve(srv, fleet, fleet["v1"])
        if where == "current body":
            data = json.dumps(body).encode()
            srv.route("/v1/channels/stable/current", truncated(data, len(data) // 2))
        else:
            model = (fleet["registry"].version_dir(fleet["v1"]) / "model.tflite").read_bytes()
            srv.route(f"/v1/versions/{fleet['v1']}/files/model.tflite",
                      truncated(model, len(model) // 3, chunked=where == "chunked download"))
        agent = make_agent(srv, fleet, tmp_path)
        with pytest.raises(ServerUnavailable):
            agent.check_for_update()
        assert not list(agent.store.root.glob(".staging-*"))
        agent.close()


def test_07_a_download_truncated_once_is_retried_not_blacklisted(fleet, tmp_path: Path) -> None:
    model = (fleet["registry"].version_dir(fleet["v1"]) / "model.tflite").read_bytes()
    calls = []

    def flaky(h) -> None:  # first time: close-delimited and short (no length to check against); then whole
        calls.append(1)
        if len(calls) == 1:
            raw(h, b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + model[:len(model) // 2])
        else:
            reply(h, 200, model, {"Content-Type": "application/octet-stream"})

    with HostileServer() as srv:
        serve(srv, fleet, fleet["v1"])
        srv.route(f"/v1/versions/{fleet['v1']}/files/model.tflite", flaky)
        agent = make_agent(srv, fleet, tmp_path)
        with pytest.raises(ServerUnavailable, match="ended after"):
            agent.check_for_update()
        assert agent.store.state().get("rejected", []) == []
        assert agent.check_for_update() == "updated" and len(calls) == 2
        agent.close()


# -- 8 -------------------------------------------------------------------------------------------


def test_08_retry_after_is_parsed_and_bounded(tmp_path: Path) -> None:
    now = 1_000_000.0
    assert parse_retry_after("Mon, 12 Jan 1970 13:46:40 GMT", now=now - 42) == pytest.approx(42.0)  # t = 10**6
    assert parse_retry_after("7", now=now) == 7.0
    for bad in ("-1", "nan", "inf", "soon", "", None, "1" * 100):
        assert parse_retry_after(bad, now=now) is None
    agent = Agent(AgentConfig(directory=tmp_path / "a", initial_bundle=SHIPPED / "mnist-cnn-int8", poll_interval=5,
                              max_backoff=60, jitter=0.0))
    assert agent.retry_delay(1, 0.001) == 1.0  # never shorter than the agent's own backoff
    assert agent.retry_delay(3, 10.0) == 10.0  # lengthened by the server
    assert agent.retry_delay(1, 100_000.0) == 60.0  # never beyond max_backoff
    agent.close()


@pytest.mark.parametrize("retry_after", ["Wed, 21 Oct 2065 07:28:00 GMT", "-1", "0.001", "nan", "100000"])
def test_08_the_run_loop_survives_any_retry_after(fleet, tmp_path: Path, retry_after: str) -> None:
    with HostileServer() as srv:
        srv.route("/v1/channels/stable/current", lambda h: reply(h, 503, {"detail": "busy"}, {"Retry-After": retry_after}))
        agent = make_agent(srv, fleet, tmp_path, max_backoff=0.4)
        outcomes: list[str] = []
        agent.run(duration=1.5, on_cycle=lambda outcome, sent: outcomes.append(outcome))
        polls = len(srv.requests_to("/v1/channels"))
        agent.close()
    assert "error" not in outcomes
    assert 2 <= polls <= 10, polls  # it keeps polling (nan, a date, 100000), and not in a tight loop (-1, 0.001)


# -- 9 and 11 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("download", ["slow drip", "500 for ever"])
def test_09_11_a_stuck_or_failing_download_does_not_hold_back_uploads(fleet, tmp_path: Path, download: str) -> None:
    stop = threading.Event()
    with HostileServer() as srv:
        serve(srv, fleet, fleet["v1"])
        model = (fleet["registry"].version_dir(fleet["v1"]) / "model.tflite").read_bytes()
        srv.route(f"/v1/versions/{fleet['v1']}/files/model.tflite",
                  slow_drip(model, 0.2, stop) if download == "slow drip" else lambda h: reply(h, 500, {"detail": "no"}))
        agent = make_agent(srv, fleet, tmp_path, policy=CollectionPolicy("all"), batch_size=10, download_timeout=1.5)
        for x in digits(40):
            agent.predict(x)
        started = time.monotonic()
        try:
            agent.run(duration=3.0)
        finally:
            stop.set()
        elapsed = time.monotonic() - started
        assert agent.queue.counters()["sent"] == 40 and len(agent.queue) == 0
        assert agent.version == "shipped:mnist-cnn-float32" and agent.store.state().get("rejected", []) == []
        assert agent.client.cancel is None  # calls after the run are not cancelled
        downloads = srv.requests_to(f"/v1/versions/{fleet['v1']}/files/model.tflite")
        assert len(downloads) >= 2  # the whole-download deadline (1.5 s) cut the drip, and it was retried
        assert elapsed < 3.0 + 1.0  # at the end of the run, a download in flight ends at its next read
        agent.close()


# -- 10 ------------------------------------------------------------------------------------------


def test_10_a_400_mib_answer_is_cut_off_at_the_cap(fleet, tmp_path: Path) -> None:
    sent = [0]
    with HostileServer() as srv:
        srv.route("/v1/channels/stable/current", endless(sent))
        agent = make_agent(srv, fleet, tmp_path)
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="more than"):
            agent.check_for_update()
        assert time.monotonic() - started < 5
        agent.close()
    assert sent[0] < 32 << 20, sent[0]  # the agent stopped reading at 1 MiB; socket buffers took the rest


# -- 12 ------------------------------------------------------------------------------------------


def test_12_drops_made_offline_are_reported_after_a_restart(fleet, tmp_path: Path) -> None:
    online, delivered = [True], []

    def events(h) -> None:
        if online[0]:
            delivered.append(json.loads(srv.requests_to("/v1/events")[-1].body))
            reply(h, 204, b"")
        else:
            reply(h, 503, {"detail": "down"})

    with HostileServer() as srv:
        srv.route("/v1/events", events)
        agent = make_agent(srv, fleet, tmp_path, policy=CollectionPolicy("all"), queue_max=3)
        for x in digits(5):
            agent.predict(x)
        agent._report_drops(force=True)
        assert delivered[-1]["counters"]["dropped"] == 2
        online[0] = False
        for x in digits(6, seed=1):
            agent.predict(x)
        agent._report_drops(force=True)
        assert agent.queue.counters()["dropped"] == 8
        agent.close()
        online[0] = True
        again = make_agent(srv, fleet, tmp_path, policy=CollectionPolicy("all"), queue_max=3)
        again._report_drops(force=True)  # what the first upload cycle does
        again._report_drops(force=True)  # and no duplicate once delivered
        again.close()
    drops = [e for e in delivered if e["kind"] == "dropped"]
    assert drops[-1]["counters"]["dropped"] == 8 and "8 in total" in drops[-1]["detail"]
    assert [d["counters"]["dropped"] for d in drops] == [2, 8]  # at the run-loop cycle, after the restart; no repeat


# -- 13 ------------------------------------------------------------------------------------------


def test_13_a_redirect_to_another_origin_is_refused_and_the_token_stays_home(fleet, tmp_path: Path) -> None:
    with HostileServer() as evil, HostileServer() as srv:
        evil.route("/v1/channels/stable/current", lambda h: reply(h, 200, {"detail": "thanks for the token"}))
        srv.route("/v1/channels/stable/current",
                  lambda h: reply(h, 302, b"", {"Location": evil.url + "/v1/channels/stable/current"}))
        agent = make_agent(srv, fleet, tmp_path)
        with pytest.raises(ServerUnavailable, match="another origin"):
            agent.check_for_update()
        agent.close()
        assert evil.seen == []


# -- 14 ------------------------------------------------------------------------------------------


def test_14_an_html_answer_to_an_upload_keeps_the_batch_for_a_resend(fleet, tmp_path: Path) -> None:
    with HostileServer() as srv:
        srv.route("/v1/samples", lambda h: reply(h, 200, b"<html>502 Bad Gateway</html>", {"Content-Type": "text/html"}))
        srv.route("/v1/events", lambda h: reply(h, 204, b""))
        agent = make_agent(srv, fleet, tmp_path, policy=CollectionPolicy("all"), batch_size=5)
        for x in digits(5):
            agent.predict(x)
        with pytest.raises(ServerUnavailable, match="not a JSON receipt"):
            agent.upload_pending()
        assert len(agent.queue) == 5 and agent.queue.counters()["sent"] == 0
        key = agent.queue.next_batch(5)[0]
        serve_files(srv, fleet)  # a sane server again: the same batch goes, under the same key
        assert agent.upload_pending() == 5
        assert srv.requests_to("/v1/samples")[-1].headers["Idempotency-Key"] == key
        agent.close()


# -- 15 ------------------------------------------------------------------------------------------


def test_15_an_int64_input_is_queued_in_a_dtype_the_server_stores(fleet, tmp_path: Path) -> None:
    agent = Agent(AgentConfig(directory=tmp_path / "a", initial_bundle=SHIPPED / "mnist-cnn-int8",
                              policy=CollectionPolicy("all")))
    x = digits(1)[0].astype(np.int64)
    agent.predict(x)
    agent.predict(np.minimum(x, 254).astype(np.float64) + 0.5)  # not integral: float32 holds it exactly
    (_, batch) = agent.queue.next_batch(10)
    assert [s["input"]["dtype"] for s in batch] == ["uint8", "float32"]
    agent.close()


def test_15_a_batch_refused_as_invalid_is_set_aside_and_the_rest_uploads(fleet, tmp_path: Path) -> None:
    with HostileServer() as srv:
        def samples(h) -> None:
            body = json.loads(srv.requests_to("/v1/samples")[-1].body)
            if any(s["label"] == 7 for s in body["samples"]):  # the server refuses the batch with the 7
                reply(h, 422, {"detail": [{"loc": ["samples", 0], "msg": "no", "type": "value_error"}]})
            else:
                reply(h, 200, {"stored": len(body["samples"]), "received": len(body["samples"]), "replayed": False})

        srv.route("/v1/samples", samples)
        srv.route("/v1/events", lambda h: reply(h, 204, b""))
        agent = make_agent(srv, fleet, tmp_path, policy=CollectionPolicy("all"), batch_size=4)
        for i, x in enumerate(digits(12)):
            agent.predict(x, label=i)
        assert agent.upload_pending() == 8
        assert agent.queue.counters() == {"queued": 0, "sent": 8, "dropped": 0, "rejected": 4}
        kept = [json.loads(b)["label"] for (b,) in agent.queue._db.execute("SELECT body FROM rejected").fetchall()]
        assert kept == [4, 5, 6, 7]
        reported = [s.json() for s in srv.requests_to("/v1/events")]
        assert reported[-1]["kind"] == "upload-rejected" and "4 samples set aside" in reported[-1]["detail"]
        agent.close()
