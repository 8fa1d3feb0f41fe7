"""``serve --auto-retrain`` for real: the drift check launches ``edgeloop cloud retrain`` in a detached child,
which fine-tunes on the collected samples and publishes to ``canary``. Judged by what the child leaves:
its log, the registry, and its exit."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from tests.service_helpers import setup_service

CONFIG = {"model": "mlp", "data": "mnist5k", "epochs": 1, "patience": None, "seed": 0}


def _retrain_children(data: Path) -> list[psutil.Process]:
    """This process's children that run ``cloud retrain`` on ``data``."""
    found = []
    for child in psutil.Process().children():
        try:
            cmd = child.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if "retrain" in cmd and str(data) in cmd:
            found.append(child)
    return found


def _state(proc: psutil.Process) -> str:
    try:
        return "zombie" if proc.status() == psutil.STATUS_ZOMBIE else "running"
    except psutil.NoSuchProcess:
        return "reaped"


def _wait_exit(proc: psutil.Process, timeout: float, grace: float = 3.0) -> str:
    """Poll (never wait, which would reap it) until ``proc`` has exited: ``"reaped"`` once it is gone from
    the process table, ``"zombie"`` if it stays unreaped for ``grace`` seconds, ``"running"`` at the timeout."""
    deadline, zombie_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        state = _state(proc)
        if state == "reaped":
            return state
        if state == "zombie":
            zombie_since = zombie_since or time.monotonic()
            if time.monotonic() - zombie_since > grace:
                return state
        time.sleep(0.1)
    return "running"


def _stop(procs: list[psutil.Process]) -> None:
    """Kill the children still running, by PID (each leads its own session: the group is the child and
    whatever it started)."""
    for proc in procs:
        if _state(proc) == "running":
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_exit(proc, 10)


def test_the_launcher_reaps_its_child_and_logs_how_it_ended(tmp_path: Path) -> None:
    """The server is long-running: a child it never waits for stays a zombie there until the server exits.
    Here ``cloud retrain`` fails at once (a data dir with no signing key)."""
    from cloud.service.auto_retrain import retrain_process

    children: list[psutil.Process] = []
    try:
        retrain_process(tmp_path, None, "stable")(7)
        children = _retrain_children(tmp_path)
        assert len(children) == 1, children
        child = children[0]
        assert _wait_exit(child, 60) == "reaped"
    finally:
        _stop(children + _retrain_children(tmp_path))
    log = (tmp_path / "auto-retrain-v7.log").read_text()
    assert "signing.key" in log and log.endswith(f"auto-retrain: process {child.pid} exited with status 1\n"), log


@pytest.mark.slow
def test_auto_retrain_child_fine_tunes_and_publishes_to_canary(tmp_path: Path) -> None:
    from cloud.export.exporter import ExportConfig, export_bundle, load_run
    from cloud.service.auto_retrain import AutoRetrainConfig, check_drift_and_retrain, retrain_process
    from cloud.service.db import AutoRetrain, Device
    from cloud.service.ingest import BatchIn, store_batch
    from cloud.service.summaries import SummaryIn, store_summary
    from cloud.train.training import TrainConfig, make_splits, train
    from device.agent.collector import encode_input
    from device.agent.reporter import SummaryReporter
    from device.runtime.bundle import read_manifest
    from device.runtime.runtime import Runtime

    run = tmp_path / "run"  # a small MLP, exported with its profile (the test split it was verified on)
    train(TrainConfig(**CONFIG), run, progress=False)
    export_bundle(load_run(run), run / "bundle", ExportConfig(mode="float32", name="mnist-mlp"))
    data = tmp_path / "svc"
    sessions, registry, key, _, _ = setup_service(data, ("cam",))
    v1 = registry.publish(run / "bundle", "stable", key, source_run=run)
    manifest = read_manifest(registry.version_dir(v1.version))
    assert manifest.profile, "export records a profile"
    with sessions() as s:
        cam = s.scalars(select(Device.id).where(Device.name == "cam")).one()

    # the camera starts to see inverted digits: its summaries drift, and users label 60 of them
    splits = make_splits(TrainConfig(**CONFIG))
    seen = 255 - splits.validation.x[:300]
    runtime = Runtime(registry.version_dir(v1.version))
    reporter = SummaryReporter()
    for x, p in zip(seen, runtime.predict(seen)):
        reporter.observe(str(v1.version), manifest, x, int(p.argmax()), float(p.max()), None)
    for summary in reporter.take():
        store_summary(sessions, cam, SummaryIn.model_validate(summary))
    labelled = [{"id": f"s{i}", "input": encode_input(255 - splits.train.x[i]), "prediction": 0, "confidence": 0.5,
                 "label": int(splits.train.y[i]), "model_version": str(v1.version), "timestamp": 1e9}
                for i in range(60)]
    assert store_batch(sessions, cam, "b1", BatchIn.model_validate({"samples": labelled}), 10_000) == (60, False)

    config = AutoRetrainConfig(max_drift=0.25, min_predictions=100)
    children: list[psutil.Process] = []
    t0 = time.monotonic()
    try:
        started = check_drift_and_retrain(config, sessions, registry, retrain_process(data, None, "stable"))
        children = _retrain_children(data)
        assert started is not None and started["version"] == v1.version and started["drift"] > 0.25
        assert len(children) == 1, children
        child = children[0]
        state = _wait_exit(child, 80)
        elapsed = time.monotonic() - t0
        log = (data / f"auto-retrain-v{v1.version}.log").read_text()
        assert state == "reaped", (state, log[-3000:])
    finally:
        _stop(children + _retrain_children(data))

    assert log.endswith(f"auto-retrain: process {child.pid} exited with status 0\n"), log[-3000:]
    result, _ = json.JSONDecoder().raw_decode(log, log.index("{\n"))  # the child's --json result
    print(f"auto-retrain child: {elapsed:.1f} s, drift {started['drift']:.2f}, {result}")
    assert result["base_version"] == v1.version and result["labelled_samples"] == 60
    assert result["published"] is not None and result["new_accuracy"] >= result["old_accuracy"]
    canary = registry.current("canary")
    assert canary is not None and canary.version == result["published"] != v1.version
    assert registry.current("stable").version == v1.version  # auto-retrain never touches stable
    assert read_manifest(registry.version_dir(canary.version)).mode == "float32"
    assert _retrain_children(data) == []
    with sessions() as s:
        assert [r.version_id for r in s.scalars(select(AutoRetrain))] == [v1.version]
    # the same drift seen again starts nothing: the version's retraining has already run
    assert check_drift_and_retrain(config, sessions, registry, retrain_process(data, None, "stable")) is None
    assert _retrain_children(data) == []
