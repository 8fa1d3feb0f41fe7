"""forget-device, retention, sample export, and the drift-triggered retraining, on a real SQLite store."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from cloud.service.db import Device, Sample
from cloud.service.governance import UnknownDeviceName, forget_device, iter_samples, purge_expired
from cloud.service.ingest import BatchIn, store_batch
from tests.conftest import SHIPPED
from tests.service_helpers import setup_service


def _batch(prefix: str, n: int, version: str = "1") -> BatchIn:
    data = base64.b64encode(np.zeros((2, 2, 1), np.uint8).tobytes()).decode()
    return BatchIn.model_validate({"samples": [
        {"id": f"{prefix}{i}", "input": {"shape": [2, 2, 1], "dtype": "uint8", "data": data}, "prediction": 1,
         "confidence": 0.5, "label": 1 if i % 2 else None, "model_version": version, "timestamp": 1e9}
        for i in range(n)]})


def _count(sessions, name: str) -> tuple[int, int]:
    with sessions() as s:
        did = s.scalars(select(Device.id).where(Device.name == name)).one()
        stored = s.scalars(select(Device.samples_stored).where(Device.id == did)).one()
        return int(s.scalar(select(func.count()).select_from(Sample).where(Sample.device_id == did))), int(stored)


def test_forget_device_deletes_its_samples_only(tmp_path: Path) -> None:
    sessions, _, _, _, _ = setup_service(tmp_path, ("a", "b"))
    store_batch(sessions, 1, "k1", _batch("a", 5), 100)
    store_batch(sessions, 2, "k2", _batch("b", 3), 100)
    assert forget_device(sessions, "a") == 5
    assert _count(sessions, "a") == (0, 0) and _count(sessions, "b") == (3, 3)
    with pytest.raises(UnknownDeviceName):
        forget_device(sessions, "nobody")
    exported = list(iter_samples(sessions, labelled=True))
    assert [s["device"] for s in exported] == ["b"] and exported[0]["label"] == 1


def test_retention_deletes_samples_received_before_the_cutoff(tmp_path: Path) -> None:
    sessions, _, _, _, _ = setup_service(tmp_path, ("a",))
    store_batch(sessions, 1, "old", _batch("o", 4), 100)
    store_batch(sessions, 1, "new", _batch("n", 2), 100)
    with sessions.begin() as s:  # the first batch arrived ten days ago
        s.execute(Sample.__table__.update().where(Sample.sample_id.like("o%")).values(received=time.time() - 10 * 86400))
    assert purge_expired(sessions, retention_days=7) == 4
    assert _count(sessions, "a") == (2, 2)
    assert purge_expired(sessions, retention_days=7) == 0
    with pytest.raises(ValueError, match="retention-days"):
        purge_expired(sessions, 0)


def test_auto_retrain_starts_once_when_the_current_version_drifts(tmp_path: Path) -> None:
    from cloud.export.profile import add_profile
    from cloud.service.auto_retrain import AutoRetrainConfig, check_drift_and_retrain
    from cloud.service.summaries import SummaryIn, store_summary
    from cloud.train.data import load_mnist5k
    from device.agent.reporter import SummaryReporter
    from device.runtime.bundle import read_manifest

    sessions, registry, key, _, _ = setup_service(tmp_path / "svc", ("cam",))
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED / "mnist-cnn-int8", bundle)
    digits = load_mnist5k(seed=0).x
    add_profile(bundle, digits[:500])
    v1 = registry.publish(bundle, "stable", key)
    manifest = read_manifest(registry.version_dir(v1.version))
    started: list[int] = []
    config = AutoRetrainConfig(max_drift=0.25, min_predictions=100)

    from device.runtime.runtime import Runtime

    runtime = Runtime(registry.version_dir(v1.version))

    def report(x: np.ndarray) -> None:
        rep = SummaryReporter()
        probs = runtime.predict(x)
        for img, p in zip(x, probs):
            rep.observe(str(v1.version), manifest, img, int(p.argmax()), float(p.max()), None)
        for summary in rep.take():
            store_summary(sessions, 1, SummaryIn.model_validate(summary))

    report(digits[500:700])  # the data it was verified on: no drift
    assert check_drift_and_retrain(config, sessions, registry, started.append) is None and started == []
    report(255 - digits[700:1000])  # now the camera sees inverted digits
    out = check_drift_and_retrain(config, sessions, registry, started.append)
    assert out is not None and out["drift"] > 0.25 and started == [v1.version]
    assert check_drift_and_retrain(config, sessions, registry, started.append) is None and started == [v1.version]
