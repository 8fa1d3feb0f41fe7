"""The federated device client in its own venv: the ``device-fl`` extra (device + Flower), no TensorFlow."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import ROOT, SHIPPED
from tests.device.test_device_only_env import _need, _run

DEVICE_FL_ENV = ROOT / ".venv-device-fl" / "bin"


def test_fl_client_modules_load_without_tensorflow_installed(tmp_path) -> None:
    _need(DEVICE_FL_ENV / "python")
    code = ("import importlib.util as u, sys, json, device.fl.client, device.fl.clientapp, device.fl.trainer\n"
            "print(json.dumps({'installed': [m for m in ('tensorflow', 'keras') if u.find_spec(m)],"
            " 'loaded': sorted({m.split('.')[0] for m in sys.modules})}))")
    probe = _run([str(DEVICE_FL_ENV / "python"), "-c", code])
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["installed"] == [] and "flwr" in result["loaded"]
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 28, 28), np.uint8), y=np.zeros(2, np.int64))
    out = _run([str(DEVICE_FL_ENV / "edgeloop"), "device", "fl-client", "--server", "127.0.0.1:9",
                "--bundle", str(SHIPPED / "mnist-cnn-int8"), "--data", str(tmp_path / "d.npz")])
    assert out.returncode == 1 and "not trainable" in out.stderr, out.stderr
