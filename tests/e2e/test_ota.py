"""Over-the-air updates and uploads between a real agent and a real uvicorn server on 127.0.0.1.

Rejected updates (tampered model, tampered manifest, wrong key, unsigned) leave the old model
serving; an unhealthy update rolls back; inference continues through a swap; and samples
arrive exactly once through a server crash and an agent restart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from device.agent.agent import Agent, AgentConfig
from device.agent.collector import CollectionPolicy
from tests.conftest import ROOT, SHIPPED
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("fleet")
    sessions, registry, key, public, tokens = setup_service(data, ("ota", "outage", "rej", "health"))
    svc = ServiceProcess(data, extra=("--rate", "1000", "--burst", "1000"))
    svc.start()
    try:
        yield {"svc": svc, "sessions": sessions, "registry": registry, "key": key, "public": public, "tokens": tokens,
               "data": data}
    finally:
        svc.stop()


def _agent(fleet, tmp: Path, device: str, channel: str, **over) -> Agent:
    config = AgentConfig(directory=tmp / f"agent-{device}-{channel}", server=fleet["svc"].url, token=fleet["tokens"][device],
                         channel=channel, public_key=fleet["public"], initial_bundle=SHIPPED / "mnist-cnn-float32",
                         poll_interval=0.2, upload_interval=0.05, max_backoff=0.5, timeout=5, seed=0, **over)
    return Agent(config)


def _events(fleet, device: str) -> list[tuple[str, str]]:
    from cloud.service.db import Device, Event

    with fleet["sessions"]() as s:
        return [(k, d) for k, d in s.execute(select(Event.kind, Event.detail).join(Device, Device.id == Event.device_id)
                                              .where(Device.name == device).order_by(Event.id)).all()]


def _digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)


def test_update_swaps_without_interrupting_inference(fleet, tmp_path: Path) -> None:
    release = fleet["registry"].publish(SHIPPED / "mnist-cnn-int8", "ota", fleet["key"])
    agent = _agent(fleet, tmp_path, "ota", "ota")
    assert agent.version == "shipped:mnist-cnn-float32" and agent.runtime.manifest.mode == "float32"
    old_runtime = agent.runtime
    x = _digits(64)
    stop, served, errors, modes = threading.Event(), [0], [], set()

    def infer() -> None:
        i = 0
        while not stop.is_set():
            try:
                agent.predict(x[i % 64])
                modes.add(agent.runtime.manifest.mode)
                served[0] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is what the test looks for
                errors.append(exc)
            i += 1

    worker = threading.Thread(target=infer)
    worker.start()
    try:
        time.sleep(0.3)
        before = served[0]
        assert agent.check_for_update() == "updated"
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join(10)
    assert not errors and before > 0 and served[0] > before
    assert modes == {"float32", "int8"}  # it served both, with no gap that raised
    assert agent.runtime is not old_runtime and agent.runtime.manifest.mode == "int8"
    assert agent.version == str(release.version)
    assert agent.check_for_update() == "unchanged"  # 304: same ETag
    agent.close()
    # `edgeloop device predict AGENT_DIR` runs the agent's current model
    out = subprocess.run([sys.executable, "-m", "edgeloop", "device", "predict", str(agent.store.root),
                          str(ROOT / "models/examples/digit-4.png"), "--json"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bundle"]["mode"] == "int8" and result["bundle"]["version"] == str(release.version)
    assert result["predictions"][0]["label"] == "4"
    assert ("updated", f"now serving v{release.version} (canary: ok, max |Δp| 0)") in _events(fleet, "ota")


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("attack", ["tampered model", "tampered manifest", "wrong key", "unsigned",
                                    "corrupted in transit"])
def test_bad_updates_are_rejected_and_the_old_model_stays(fleet, tmp_path: Path, attack: str) -> None:
    registry, channel = fleet["registry"], "rej-" + attack.replace(" ", "-")
    good = registry.publish(SHIPPED / "mnist-cnn-int8", channel, fleet["key"])
    agent = _agent(fleet, tmp_path, "rej", channel)
    assert agent.check_for_update() == "updated"
    serving, link = agent.runtime, agent.store.current()

    if attack == "wrong key":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        registry.publish(SHIPPED / "mnist-cnn-float32", channel, Ed25519PrivateKey.generate())
    elif attack == "unsigned":
        registry.publish(SHIPPED / "mnist-cnn-float32", channel, None)
    else:
        bad = registry.publish(SHIPPED / "mnist-cnn-float32", channel, fleet["key"])
        blob = registry.version_dir(bad.version)
        if attack in ("tampered model", "corrupted in transit"):
            _flip(blob / "model.tflite", 4000)
        else:
            manifest = json.loads((blob / "manifest.json").read_text())
            labels = manifest["outputs"][0]["labels"]  # the registry writes edgeloop-bundle/2
            labels[0], labels[1] = "1", "0"
            (blob / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if attack != "corrupted in transit":  # else the announced sha256 no longer matches the download
            registry.rehash_files(bad.version)  # a compromised server announces the tampered files' own hashes

    assert agent.check_for_update() == "rejected"
    assert agent.runtime is serving and agent.store.current() == link and agent.version == str(good.version)
    assert agent.predict(_digits(1)[0]).label in serving.labels
    assert agent.check_for_update() == "unchanged"  # a rejected release is not downloaded again
    kind, detail = _events(fleet, "rej")[-1]
    reason = {"tampered model": "is not the manifest's", "tampered manifest": "signature does not match",
              "wrong key": "this device pins key", "unsigned": "has no signature.json",
              "corrupted in transit": "is not the announced"}[attack]
    assert kind == "rejected" and reason in detail, detail
    assert not list(agent.store.root.glob(".staging-*"))
    agent.close()


def test_failed_health_check_rolls_back(fleet, tmp_path: Path) -> None:
    registry = fleet["registry"]
    good = registry.publish(SHIPPED / "mnist-cnn-int8", "health", fleet["key"])
    agent = _agent(fleet, tmp_path, "health", "health")
    assert agent.check_for_update() == "updated"
    serving, link = agent.runtime, agent.store.current()
    # a correctly signed bundle whose model does not behave as its canary says (e.g. a broken converter)
    from device.runtime.runtime import Runtime

    broken = tmp_path / "broken"
    shutil.copytree(SHIPPED / "mnist-cnn-float32", broken)
    x = _digits(8)
    probs = Runtime(broken).predict(x)
    with open(broken / "canary.npz", "wb") as fh:
        np.savez(fh, x=x, expected=np.roll(probs, 3, axis=1).astype(np.float32))
    from cloud.service.registry import RegistryError

    published = len(registry.versions())
    with pytest.raises(RegistryError, match="fails its own canary check"):  # the cloud checks first …
        registry.publish(broken, "health", fleet["key"])
    assert len(registry.versions()) == published  # and leaves no half-published version
    registry.publish(broken, "health", fleet["key"], check_canary=False)  # … but say it slipped through
    assert agent.check_for_update() == "rolled-back"
    assert agent.runtime is serving and agent.store.current() == link and agent.version == str(good.version)
    assert (agent.store.root / "current").resolve() == link
    kind, detail = _events(fleet, "health")[-1]
    assert kind == "rollback" and "health check" in detail
    agent.close()
    # a restarted agent serves the rolled-back model
    again = _agent(fleet, tmp_path, "health", "health")
    assert again.version == str(good.version) and again.check_for_update() == "unchanged"
    again.close()


def test_samples_arrive_exactly_once_through_a_server_crash_and_an_agent_restart(fleet, tmp_path: Path) -> None:
    from cloud.service.db import Device, Sample

    svc, registry = fleet["svc"], fleet["registry"]
    registry.publish(SHIPPED / "mnist-cnn-int8", "outage", fleet["key"])
    agent = _agent(fleet, tmp_path, "outage", "outage", policy=CollectionPolicy("all"), batch_size=10)
    n = 1500
    ids = []
    for i, x in enumerate(_digits(n, seed=1)):
        agent.predict(x, label=i % 10)
    ids = [s["id"] for s in _queued(agent)]
    assert len(ids) == n

    # 1. the server stores a batch, but the agent dies before it hears so: the resend is a replay
    key, batch = agent.queue.next_batch(10)
    agent.client.upload(key, batch)
    agent.close()
    agent = _agent(fleet, tmp_path, "outage", "outage", policy=CollectionPolicy("all"), batch_size=10)
    assert agent.queue.next_batch(10)[0] == key

    # 2. the server is killed mid-upload and restarted while the agent keeps trying
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, kwargs={"stop": stop, "duration": 90})
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while agent.queue.counters()["sent"] < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        svc.kill()
        time.sleep(0.3)  # a response that arrived just before the kill is acknowledged by now
        sent_at_kill = agent.queue.counters()["sent"]
        assert 0 < sent_at_kill < n
        time.sleep(1.0)  # the agent backs off against a dead server
        assert agent.queue.counters()["sent"] == sent_at_kill
        svc.start()
        deadline = time.monotonic() + 60
        while len(agent.queue) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(30)
    assert len(agent.queue) == 0 and agent.queue.counters()["sent"] == n
    agent.close()

    with fleet["sessions"]() as s:
        stored = s.scalars(select(Sample.sample_id).join(Device, Device.id == Sample.device_id)
                           .where(Device.name == "outage")).all()
    assert len(stored) == n and sorted(stored) == sorted(ids)  # by count and by id: none lost, none twice


def _queued(agent: Agent) -> list[dict]:
    rows = agent.queue._db.execute("SELECT body FROM samples ORDER BY seq").fetchall()
    return [json.loads(b) for (b,) in rows]


def test_device_run_cli_updates_and_uploads(fleet, tmp_path: Path) -> None:
    """``edgeloop device run`` as a process: it takes the channel's release, then exits after --duration."""
    release = fleet["registry"].publish(SHIPPED / "mnist-cnn-int8", "cli", fleet["key"])
    out = subprocess.run(
        [sys.executable, "-m", "edgeloop", "device", "run", "--server", fleet["svc"].url, "--channel", "cli",
         "--dir", str(tmp_path / "agent"), "--public-key", str(fleet["public"]), "--initial", "mnist-cnn-float32",
         "--poll-interval", "0.5", "--duration", "3"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ,
                                                                     "EDGELOOP_DEVICE_TOKEN": fleet["tokens"]["ota"]})
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0]["version"] == "shipped:mnist-cnn-float32"
    assert {"outcome": "updated", "version": str(release.version)}.items() <= lines[1].items()
