"""Shared fixtures: one trained CNN run and its exports, made once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_HOME", str(ROOT / ".cache" / "keras"))
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))

SHIPPED = ROOT / "models" / "bundles"
EXAMPLES = ROOT / "models" / "examples"
LEGACY_PYTHON = ROOT / ".venv-legacy" / "bin" / "python"


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN trained 3 epochs on MNIST-5k (about 95% test accuracy)."""
    from cloud.train.training import TrainConfig, train

    run = tmp_path_factory.mktemp("cnn-run")
    train(TrainConfig(model="cnn", data="mnist5k", epochs=3, patience=None, seed=0), run, progress=False)
    return run


@pytest.fixture(scope="session")
def loaded_run(cnn_run: Path):
    from cloud.export.exporter import load_run

    return load_run(cnn_run)


@pytest.fixture(scope="session")
def exported(loaded_run, tmp_path_factory: pytest.TempPathFactory):
    """Every export mode of the session's CNN: {mode: ModeResult}."""
    from cloud.export.exporter import ExportConfig, export_all_modes

    out = tmp_path_factory.mktemp("bundles")
    return {r.mode: r for r in export_all_modes(loaded_run, out, ExportConfig())}


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None):
    """Run ``python -m edgeloop …`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "edgeloop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mlp-small`` trained 1 epoch on sklearn's digits (about 30% test accuracy: room to improve)."""
    from cloud.train.training import TrainConfig, train

    run = tmp_path_factory.mktemp("digits-run")
    train(TrainConfig(model="mlp-small", data="digits", epochs=1, patience=None, seed=0), run, progress=False)
    return run


@pytest.fixture(scope="session")
def trainable_bundle(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits run exported with ``--trainable`` (SGD, train batch 32), verified."""
    from cloud.export.exporter import load_run
    from cloud.export.trainable import TrainableConfig, export_trainable

    out = tmp_path_factory.mktemp("trainable") / "digits-mlp-small-trainable"
    export_trainable(load_run(digits_run), out, TrainableConfig())
    return out
