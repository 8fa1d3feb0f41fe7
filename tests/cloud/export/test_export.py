"""Export: every mode against Keras (the oracle), manifests, the NaN trap, and tflite-runtime compat."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cloud.errors import ExportVerificationError
from cloud.export.exporter import ExportConfig, export_bundle
from cloud.export.verify import TOLERANCES, compare
from device import Runtime
from device.runtime.bundle import MODES
from tests.conftest import LEGACY_PYTHON, ROOT


def test_every_mode_is_verified(exported) -> None:
    assert set(exported) == set(MODES)
    for result in exported.values():
        assert result.error is None, result.error
        assert result.verification.passed and result.verification.samples == 1000


@pytest.mark.parametrize("mode", MODES)
def test_litert_outputs_agree_with_keras(exported, loaded_run, mode: str) -> None:
    """Independent of the exporter's own check: run the bundle here and compare with Keras."""
    rt = Runtime(exported[mode].bundle)
    test = loaded_run.splits.test
    tflite = rt.logits(test.x)
    keras_logits = loaded_run.keras_test_logits
    assert np.isfinite(tflite).all()
    diff = np.abs(tflite - keras_logits).max()
    agreement = (tflite.argmax(1) == keras_logits.argmax(1)).mean()
    scale = np.abs(keras_logits).max()
    if mode == "float32":
        assert diff < 1e-3
    elif mode == "float16":
        assert diff < 1e-2 * scale
    else:
        assert agreement >= 0.97, agreement
    assert diff == pytest.approx(exported[mode].verification.max_abs_logit_diff, rel=1e-4, abs=1e-6)


def test_int8_accuracy_within_one_point_of_float32(exported) -> None:
    f32 = exported["float32"].verification.tflite_accuracy
    i8 = exported["int8"].verification.tflite_accuracy
    assert f32 > 0.9
    assert 100 * (f32 - i8) <= 1.0, (f32, i8)


def test_sizes_shrink_with_quantization(exported) -> None:
    size = {m: r.verification.size_bytes for m, r in exported.items()}
    assert size["int8"] < 0.35 * size["float32"] and size["dynamic"] < 0.35 * size["float32"]
    assert size["float16"] < 0.6 * size["float32"]


def test_manifest_describes_the_model(exported, loaded_run) -> None:
    from ai_edge_litert.interpreter import Interpreter

    bundle = exported["int8"].bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    tflite = (bundle / "model.tflite").read_bytes()
    assert manifest["model"]["sha256"] == hashlib.sha256(tflite).hexdigest()
    assert manifest["model"]["size_bytes"] == len(tflite)
    it = Interpreter(model_content=tflite)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert manifest["format"] == "edgeloop-bundle/2" and manifest["task"] == "classification"
    (m_in,), (m_out,) = manifest["inputs"], manifest["outputs"]
    # an image model's int8 export takes raw uint8 pixels: the normalization is folded into the model
    assert m_in["dtype"] == "uint8" and m_out["dtype"] == "uint8"
    assert m_in["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert (m_in["quantization"]["scale"], m_in["quantization"]["zero_point"]) == pytest.approx(inp["quantization"])
    assert (m_out["quantization"]["scale"], m_out["quantization"]["zero_point"]) == pytest.approx(out["quantization"])
    assert m_in["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert m_out["labels"] == [str(i) for i in range(10)]
    assert manifest["metrics"]["passed"] is True and manifest["metrics"]["top1_agreement"] >= 0.97
    assert manifest["metrics"]["median_latency_ms"] > 0
    assert manifest["source"]["checkpoint"].endswith("model.keras")
    assert manifest["source"]["train_config"]["model"] == "cnn"
    assert manifest["name"] == "mnist5k-cnn-int8" and manifest["version"] == "1" and manifest["created"]


def _saved_model_route(model, mode, representative=None, compat="litert", io="int8") -> bytes:
    """The Keras 3 trap: SavedModel → TFLite gives a model that runs and outputs all-NaN."""
    import tempfile

    import tensorflow as tf

    from device.runtime.native_log import quiet_native_output

    with tempfile.TemporaryDirectory() as tmp, quiet_native_output():
        tf.saved_model.save(model, tmp)
        return tf.lite.TFLiteConverter.from_saved_model(tmp).convert()


def test_silent_nan_export_is_caught_and_loses_nothing(loaded_run, exported, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "bundle"
    shutil.copytree(exported["float32"].bundle, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr("cloud.export.exporter.convert", _saved_model_route)
    with pytest.raises(ExportVerificationError, match="non-finite"):
        export_bundle(loaded_run, target, ExportConfig(mode="float32"))
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging directory left behind


def test_cli_exits_nonzero_on_a_failed_verification(cnn_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from cloud import cli

    monkeypatch.setattr("cloud.export.exporter.convert", _saved_model_route)
    rc = cli.main(["export", str(cnn_run), "--mode", "float32", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    # the SavedModel route's outputs are usually all-NaN, in one run here finite garbage: refused either way
    assert rc == 1 and "error:" in err and "failed verification" in err and "Nothing was written" in err
    assert not (tmp_path / "b").exists()


def test_compare_flags_disagreement() -> None:
    rng = np.random.default_rng(0)
    keras_logits = rng.normal(size=(100, 10)).astype(np.float32)
    y = keras_logits.argmax(1)
    ok = compare(keras_logits, keras_logits + 1e-6, y, "float32", TOLERANCES["float32"])
    assert ok.passed and ok.top1_agreement == 1.0 and ok.keras_accuracy == 1.0
    shuffled = compare(keras_logits, keras_logits[::-1].copy(), y, "int8", TOLERANCES["int8"])
    assert not shuffled.passed and any("agreement" in f for f in shuffled.failures)
    assert any("accuracy" in f for f in shuffled.failures)
    nan = keras_logits.copy()
    nan[3, 2] = np.nan
    bad = compare(keras_logits, nan, y, "float16", TOLERANCES["float16"])
    assert not bad.passed and "non-finite" in bad.failures[0] and bad.max_abs_logit_diff == float("inf")
    with pytest.raises(ValueError, match="shapes"):
        compare(keras_logits, keras_logits[:, :5], y, "float32", TOLERANCES["float32"])


LEGACY_PROBE = """
import json, sys
import numpy as np
from device import Runtime
x = np.load(sys.argv[2])
rt = Runtime(sys.argv[1])
print(json.dumps({"backend": rt.backend, "numpy": np.__version__, "logits": rt.logits(x).tolist()}))
"""


def _legacy(bundle: Path, x_path: Path) -> subprocess.CompletedProcess:
    if not LEGACY_PYTHON.exists():
        if os.environ.get("EDGELOOP_SKIP_LEGACY") == "1":
            pytest.skip("EDGELOOP_SKIP_LEGACY=1 and no .venv-legacy")
        pytest.fail("no .venv-legacy: run 'make legacy' (make test creates it)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGELOOP_INTERPRETER": "tflite_runtime"}
    return subprocess.run([str(LEGACY_PYTHON), "-c", LEGACY_PROBE, str(bundle), str(x_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


@pytest.mark.legacy
@pytest.mark.parametrize("mode", ["dynamic", "int8", "float32"])
def test_compat_bundle_runs_in_tflite_runtime_214(loaded_run, exported, tmp_path: Path, mode: str) -> None:
    bundle = tmp_path / f"compat-{mode}"
    export_bundle(loaded_run, bundle, ExportConfig(mode=mode, compat="tflite-runtime"))
    x = loaded_run.splits.test.x[:64]
    np.save(tmp_path / "x.npy", x)
    out = _legacy(bundle, tmp_path / "x.npy")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "tflite_runtime" and result["numpy"].startswith("1.")
    legacy_logits = np.asarray(result["logits"], dtype=np.float32)
    litert_logits = Runtime(bundle).logits(x)
    np.testing.assert_allclose(legacy_logits, litert_logits, atol=1e-4 if mode == "float32" else 0.2)
    assert (legacy_logits.argmax(1) == loaded_run.splits.test.y[:64]).mean() > 0.9


@pytest.mark.legacy
def test_default_dynamic_bundle_fails_clearly_in_tflite_runtime(exported, loaded_run, tmp_path: Path) -> None:
    """Why --compat exists: FULLY_CONNECTED v12 is unknown to 2.14, and the error says what to do."""
    np.save(tmp_path / "x.npy", loaded_run.splits.test.x[:2])
    out = _legacy(exported["dynamic"].bundle, tmp_path / "x.npy")
    assert out.returncode != 0
    assert "FULLY_CONNECTED" in out.stderr and "--compat tflite-runtime" in out.stderr


def test_shipped_bundle_recipe_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    """Two runs of the ship-bundles recipe with one seed give byte-identical bundles."""
    from cloud.export.ship import ShipConfig, ship_bundles

    digests = []
    for i in range(2):
        ship_bundles(ShipConfig(epochs=1, seed=5, modes=("int8",)), tmp_path / f"run{i}",
                     bundles_dir=tmp_path / f"bundles{i}", examples_dir=tmp_path / f"examples{i}")
        bundle = tmp_path / f"bundles{i}" / "mnist-cnn-int8"
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["source"].pop("checkpoint")  # the run directory's path differs
        manifest["metrics"].pop("median_latency_ms")  # a timing
        digests.append((hashlib.sha256((bundle / "model.tflite").read_bytes()).hexdigest(), manifest))
    assert digests[0] == digests[1]
