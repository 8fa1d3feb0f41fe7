"""Training: optimizers, gradient accumulation, early stopping, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cloud.errors import CheckpointError
from cloud.train.training import OPTIMIZERS, TrainConfig, Trainer, make_splits, train
from tests.conftest import ROOT

SMALL = TrainConfig(model="mlp-small", data="digits", epochs=2, batch_size=32, patience=None, seed=0)


def final_weights(run: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_learns(tmp_path: Path, optimizer: str) -> None:
    metrics = train(replace(SMALL, optimizer=optimizer, epochs=3), tmp_path, progress=False)
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    assert metrics["test_accuracy"] > 0.7, metrics["test_accuracy"]


def test_accumulation_equals_large_batch() -> None:
    """4 micro-batches of 8 then one SGD step == one step on the batch of 32 (same sample order)."""
    config = replace(SMALL, optimizer="sgd", epochs=1)
    splits = make_splits(config)
    big = Trainer(replace(config, batch_size=32, accumulate=1), splits)
    big.train_epoch(0)
    acc = Trainer(replace(config, batch_size=8, accumulate=4), splits)
    acc.train_epoch(0)
    other = Trainer(replace(config, batch_size=8, accumulate=1), splits)
    other.train_epoch(0)
    for a, b in zip(big.model.get_weights(), acc.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert max(np.abs(a - c).max() for a, c in zip(big.model.get_weights(), other.model.get_weights())) > 1e-3


def test_early_stopping_restores_best(tmp_path: Path) -> None:
    # a learning rate this large makes validation loss rise quickly
    config = replace(SMALL, optimizer="sgd", learning_rate=3.0, epochs=20, patience=2)
    metrics = train(config, tmp_path, progress=False)
    assert metrics["stopped_early"] and metrics["epochs_done"] < 20
    assert metrics["epochs_done"] - metrics["best_epoch"] == 2


def test_resume_refuses_a_changed_config_and_a_used_directory(tmp_path: Path) -> None:
    train(SMALL, tmp_path, progress=False, stop_after=1)
    with pytest.raises(CheckpointError, match="different config"):
        train(replace(SMALL, seed=1), tmp_path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="--resume"):
        train(SMALL, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(SMALL, tmp_path / "fresh", resume=True, progress=False)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    args = ["--model", "mlp-small", "--data", "digits", "--optimizer", "adam", "--batch-size", "8",
            "--epochs", "12", "--patience", "0", "--seed", "7", "--json"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "edgeloop", "cloud", "train", *args]

    full = tmp_path / "full"
    done = subprocess.run([*cmd, "--out", str(full)], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoints" / "last.npz").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.keras").exists(), "the run finished before it was killed"
    with np.load(killed / "checkpoints" / "last.npz") as ckpt:
        epochs_before_kill = json.loads(str(ckpt["state"]))["epoch"]
    assert 1 <= epochs_before_kill < 12

    resumed = subprocess.run([*cmd, "--out", str(killed), "--resume"], capture_output=True, text=True,
                             timeout=300, cwd=ROOT, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_weights(full), final_weights(killed)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), "resumed weights differ from the uninterrupted run"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, killed))
    assert [h["val_loss"] for h in ma["history"]] == [h["val_loss"] for h in mb["history"]]
    assert ma["test_accuracy"] == mb["test_accuracy"]


def test_config_validation() -> None:
    for bad in (dict(optimizer="lbfgs"), dict(batch_size=0), dict(accumulate=0), dict(learning_rate=-1.0),
                dict(patience=0), dict(test_fraction=1.0)):
        with pytest.raises(ValueError):
            replace(SMALL, **bad)
