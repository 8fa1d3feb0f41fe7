"""The device side on machines without TensorFlow: the device-extra venv and the legacy tflite-runtime venv."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import EXAMPLES, LEGACY_PYTHON, ROOT

DEVICE_ENV = ROOT / ".venv-device" / "bin"


def _need(path) -> None:
    if not path.exists():
        if os.environ.get("EDGELOOP_SKIP_ENVS") == "1":
            pytest.skip(f"{path} is missing and EDGELOOP_SKIP_ENVS=1")
        pytest.fail(f"{path} is missing: run 'make test', which creates it")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def test_device_extra_alone_has_no_tensorflow_and_predicts() -> None:
    _need(DEVICE_ENV / "python")
    probe = _run([str(DEVICE_ENV / "python"), "-c", "import importlib.util as u; "
                  "print([m for m in ('tensorflow', 'keras', 'sklearn') if u.find_spec(m)])"])
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    for cmd in ([str(DEVICE_ENV / "python"), "-m", "device"], [str(DEVICE_ENV / "edgeloop"), "device"]):
        out = _run([*cmd, "predict", "mnist-cnn-int8", str(EXAMPLES / "digit-6.png"), "--json"])
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["predictions"][0]["label"] == "6"


def test_legacy_tflite_runtime_env_runs_the_device_cli() -> None:
    """numpy<2, tflite-runtime 2.14, no rich: ``python -m device predict --json`` still works."""
    _need(LEGACY_PYTHON)
    out = _run([str(LEGACY_PYTHON), "-m", "device", "predict", str(ROOT / "models/bundles/mnist-cnn-int8"),
                str(EXAMPLES / "digit-9.png"), "--json"], env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bundle"]["backend"] == "tflite_runtime"
    assert result["predictions"][0]["label"] == "9"


def test_device_only_install_names_the_extra_for_cloud_commands(tmp_path) -> None:
    """On the device extra alone, cloud commands say in one line which extra to install (no traceback)."""
    _need(DEVICE_ENV / "python")
    help_out = _run([str(DEVICE_ENV / "edgeloop"), "--help"])
    assert help_out.returncode == 0
    cloud_line = next(line for line in help_out.stdout.splitlines() if line.strip().startswith("cloud"))
    assert "pip install 'edgeloop[cloud]'" in cloud_line
    model = tmp_path / "model.keras"  # exists, so export gets past its path check to the missing TensorFlow
    model.write_bytes(b"PK")
    for args in (["cloud", "train", "--model", "mlp", "--data", "digits", "--out", str(tmp_path / "run")],
                 ["cloud", "export", str(model), "--data", "digits"],
                 ["federated", "simulate", "--rounds", "1", "--out", str(tmp_path / "fed")]):
        out = _run([str(DEVICE_ENV / "edgeloop"), *args])
        assert out.returncode == 1, out.stdout + out.stderr
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("error: ") and "pip install 'edgeloop[cloud" in out.stderr, out.stderr
