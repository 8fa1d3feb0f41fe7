"""The whole loop: a device sees a shifted distribution (inverted digits), collects labelled samples,
the cloud fine-tunes and publishes to canary, the device updates itself, and its accuracy on that
distribution goes up, measured before and after on images neither side trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device.agent.agent import Agent, AgentConfig
from device.agent.collector import CollectionPolicy
from tests.conftest import SHIPPED, run_cli
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = [pytest.mark.service, pytest.mark.slow]


CONFIG = {"model": "mlp", "data": "mnist5k", "epochs": 2, "patience": None, "seed": 0}


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP trained 2 epochs on MNIST-5k, with its float32 bundle in RUN/bundle."""
    from cloud.export.exporter import ExportConfig, export_bundle, load_run
    from cloud.train.training import TrainConfig, train

    run = tmp_path_factory.mktemp("mlp-run")
    train(TrainConfig(**CONFIG), run, progress=False)
    export_bundle(load_run(run), run / "bundle", ExportConfig(mode="float32", name="mnist-mlp"))
    return run


def test_collect_retrain_publish_update_improves_accuracy_on_a_shifted_distribution(mlp_run: Path, tmp_path: Path) -> None:
    from cloud.train.training import TrainConfig, make_splits

    config = TrainConfig(**CONFIG)
    data = tmp_path / "svc"
    sessions, registry, key, public, tokens = setup_service(data, ("inverted-cam",))
    v1 = registry.publish(mlp_run / "bundle", "stable", key, source_run=mlp_run)

    splits = make_splits(config)
    device_x, device_y = 255 - splits.train.x[:400], splits.train.y[:400]  # what the camera sees, labelled by users
    eval_x, eval_y = 255 - splits.test.x, splits.test.y  # the same shift on images nobody trains on

    with ServiceProcess(data) as svc:
        agent = Agent(AgentConfig(directory=tmp_path / "agent", server=svc.url, token=tokens["inverted-cam"],
                                  channel="stable", public_key=public, initial_bundle=SHIPPED / "mnist-cnn-int8",
                                  policy=CollectionPolicy("all"), batch_size=100, seed=0))
        try:
            assert agent.check_for_update() == "updated" and agent.version == str(v1.version)

            def accuracy() -> float:
                return float(np.mean(agent.runtime.predict(eval_x).argmax(-1) == eval_y))

            before = accuracy()
            for x, y in zip(device_x, device_y):
                agent.predict(x, label=int(y))
            assert agent.upload_pending() == 400

            out = run_cli("cloud", "retrain", "--data-dir", str(data), "--epochs", "3", "--oversample", "8", "--out",
                          str(tmp_path / "retrain"), "--json", timeout=600)
            assert out.returncode == 0, out.stderr
            result = json.loads(out.stdout)
            assert result["labelled_samples"] == 400 and result["published"] is not None
            assert result["new_accuracy"] >= result["old_accuracy"]
            assert result["new_collected_accuracy"] > result["old_collected_accuracy"]
            assert registry.current("canary").version == result["published"]

            # the device follows stable: nothing new until the canary is promoted
            assert agent.check_for_update() == "unchanged"
            promoted = run_cli("cloud", "promote", str(result["published"]), "--channel", "stable", "--data-dir", str(data))
            assert promoted.returncode == 0, promoted.stderr
            assert agent.check_for_update() == "updated" and agent.version == str(result["published"])
            after = accuracy()
        finally:
            agent.close()
    print(f"accuracy on inverted digits: before {before:.3f}, after {after:.3f}")
    assert after > before + 0.3, (before, after)  # measured here: 0.002 -> 0.575


def test_a_retrained_model_that_is_worse_is_not_published(mlp_run: Path, tmp_path: Path) -> None:
    """The gate: a fine-tune that wrecks the model (learning rate 30) loses held-out accuracy, so nothing is published."""
    from cloud.service.ingest import BatchIn, store_batch
    from cloud.service.retrain import RetrainConfig, retrain
    from cloud.train.training import TrainConfig, make_splits
    from device.agent.collector import encode_input

    sessions, registry, key, _, _ = setup_service(tmp_path / "svc", ("cam",))
    v1 = registry.publish(mlp_run / "bundle", "stable", key, source_run=mlp_run)
    train = make_splits(TrainConfig(**CONFIG)).train
    samples = [{"id": f"s{i}", "input": encode_input(train.x[i]), "prediction": 0, "confidence": 0.5,
                "label": int(train.y[i]), "model_version": str(v1.version), "timestamp": 1e9} for i in range(40)]
    assert store_batch(sessions, 1, "b1", BatchIn.model_validate({"samples": samples}), 10_000) == (40, False)

    result = retrain(RetrainConfig(epochs=1, learning_rate=30.0), sessions, registry, key, tmp_path / "retrain")
    assert result.labelled_samples == 40 and result.new_accuracy < result.old_accuracy
    assert result.published is None and registry.current("canary") is None
    assert [v["version"] for v in registry.versions()] == [v1.version]
