"""The whole cloud → device loop through the ``edgeloop`` command, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import run_cli


def test_train_export_all_modes_then_predict_on_device(tmp_path: Path) -> None:
    run, bundles = tmp_path / "run", tmp_path / "bundles"
    out = run_cli("cloud", "train", "--model", "mlp-small", "--data", "digits", "--epochs", "4",
                  "--optimizer", "momentum", "--out", str(run), "--json")
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert metrics["finished"] and metrics["test_accuracy"] > 0.85

    out = run_cli("cloud", "export", str(run), "--all-modes", "--out", str(bundles))
    assert out.returncode == 0, out.stdout + out.stderr
    for column in ("mode", "size", "accuracy", "latency"):
        assert column in out.stdout
    report = json.loads((bundles / "export-report.json").read_text())
    assert [r["mode"] for r in report["modes"]] == ["float32", "float16", "dynamic", "int8"]
    assert all(r["passed"] for r in report["modes"])
    png = (bundles / "export-report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # on the device: sklearn's own digits, raw 0–16 values, through the bundle's preprocessing
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.save(tmp_path / "digits.npy", digits.images[:40].astype(np.uint8))
    out = run_cli("device", "predict", str(bundles / "digits-mlp-small-int8"), str(tmp_path / "digits.npy"), "--json")
    assert out.returncode == 0, out.stderr
    preds = [int(p["label"]) for p in json.loads(out.stdout)["predictions"]]
    assert np.mean(np.array(preds) == digits.target[:40]) > 0.85


def test_export_of_unfinished_or_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    out = run_cli("cloud", "export", str(tmp_path / "nowhere"))
    assert out.returncode == 1 and "Traceback" not in out.stderr and "no such file or directory" in out.stderr
    (tmp_path / "unfinished").mkdir()
    out = run_cli("cloud", "export", str(tmp_path / "unfinished"))
    assert out.returncode == 1 and "Traceback" not in out.stderr and "config.json" in out.stderr
    out = run_cli("cloud", "train", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r"))
    assert out.returncode == 1 and "missing.npz: no such file or directory" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()
