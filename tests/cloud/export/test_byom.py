"""Bring your own model: a .keras/.h5 file with its own preprocessing and a softmax, exported
exactly as it was trained; declarations that would make it wrong are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud.export.report import print_table
from cloud.export.verify import TOLERANCES, allowed_drop, compare
from tests.cloud.export.byom_helpers import colour_folder, rescaling_softmax_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_model(tmp_path_factory: pytest.TempPathFactory):
    """(folder, model.keras, keras model, dataset): a Rescaling + softmax model fitted on colour images."""
    root = tmp_path_factory.mktemp("byom")
    folder = colour_folder(root / "colours")
    model, ds = rescaling_softmax_model(folder)
    path = root / "mine.keras"
    model.save(path)
    return folder, path, model, ds


def test_keras_file_exports_with_data_and_softmax_is_not_applied_twice(own_model, tmp_path: Path, capsys) -> None:
    # Regressions: `export mobilenet.keras` was a NotADirectoryError traceback; a softmax output was
    # written as "logits" (softmax twice on the device); a Rescaling model was divided by 255 twice.
    from cloud import cli
    from device.runtime.runtime import Runtime

    folder, path, model, ds = own_model
    out = tmp_path / "bundle"
    rc = cli.main(["export", str(path), "--data", str(folder), "--mode", "int8", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "classification" and manifest["outputs"][0]["kind"] == "probabilities"
    assert manifest["outputs"][0]["labels"] == ["blue", "red"]
    inp = manifest["inputs"][0]
    assert inp["dtype"] == "uint8" and inp["normalization"] == {"mean": [0.0], "std": [1.0]}  # raw pixels in
    assert inp["quantization"] == {"scale": 1.0, "zero_point": 0}
    # the device gives what Keras gives, for the same raw image: probabilities, not softmax(probabilities)
    rt = Runtime(out)
    keras_probs = np.asarray(model(ds.x.astype(np.float32), training=False))
    device = np.stack([rt.predict(img) for img in ds.x])
    np.testing.assert_allclose(device, keras_probs, atol=0.02)
    assert abs(device.sum(axis=1) - 1.0).max() < 0.02
    assert report["keras_accuracy"] > 0.9 and report["tflite_accuracy"] >= report["keras_accuracy"] - 0.01


def test_h5_file_exports_too(own_model, tmp_path: Path) -> None:
    from cloud.export.exporter import ExportConfig, export_bundle, load_run
    from cloud.export.source import SourceOptions

    folder, _, model, _ = own_model
    h5 = tmp_path / "mine.h5"
    model.save(h5)
    run = load_run(h5, SourceOptions(data=str(folder)))
    assert run.kind == "probabilities" and run.splits.train.normalization == (0.0, 1.0)
    assert any("rescale (Rescaling)" in note for note in run.notes)
    v = export_bundle(run, tmp_path / "b", ExportConfig(mode="float32"))
    assert v.passed and v.max_abs_logit_diff < 1e-4


def test_a_wrong_preprocess_declaration_fails_at_chance_with_a_hint(own_model, tmp_path: Path, capsys) -> None:
    # Regression: a Rescaling(1/255) model fed /255 data was "verified" at chance (20%), exit code 0.
    from cloud import cli

    folder, path, _, _ = own_model
    rc = cli.main(["export", str(path), "--data", str(folder), "--preprocess", "scale", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 1 and "chance level" in err and "--preprocess none" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_export_errors_are_one_line(own_model, tmp_path: Path, capsys) -> None:
    from cloud import cli

    folder, path, _, _ = own_model
    assert cli.main(["export", str(tmp_path / "nope.keras"), "--data", str(folder)]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    assert cli.main(["export", str(path)]) == 1
    assert "needs --data" in capsys.readouterr().err
    assert cli.main(["export", str(path), "--data", str(folder), "--task", "multilabel"]) == 1
    assert "use --task classification" in capsys.readouterr().err
    assert cli.main(["export", str(path), "--data", str(folder), "--preprocess", "standardize", "1"]) == 1
    assert "needs MEAN and STD" in capsys.readouterr().err


def test_int8_rule_is_inclusive_and_counts_samples() -> None:
    # Regression: an export exactly 1.00 point below Keras was refused ("at most 1 point below").
    y = np.arange(100) % 10
    keras = np.eye(10, dtype=np.float32)[y]
    keras[:5] = np.eye(10, dtype=np.float32)[(y[:5] + 1) % 10]  # Keras: 95 of 100 right
    one_below = keras.copy()
    one_below[50] = np.eye(10, dtype=np.float32)[(y[50] + 1) % 10]  # 94 of 100
    ok = compare(keras, one_below, y, "int8", TOLERANCES["int8"])
    assert ok.passed and ok.samples == 100
    assert round(100 * (ok.keras_accuracy - ok.tflite_accuracy), 6) == 1.0
    two_below = one_below.copy()
    two_below[60] = np.eye(10, dtype=np.float32)[(y[60] + 1) % 10]  # 93 of 100
    bad = compare(keras, two_below, y, "int8", TOLERANCES["int8"])
    assert not bad.passed and "2 of 100 samples" in bad.failures[0] and "(1 sample on 100)" in bad.failures[0]
    assert allowed_drop(100, 1.0) == 1 and allowed_drop(99, 1.0) == 0 and allowed_drop(1000, 1.0) == 10


def test_all_modes_table_prints_the_whole_reason(capsys) -> None:
    reason = ("int8 export of run/model.keras failed verification on 100 test samples: accuracy 93.00% is 2.00 "
              "points below Keras (95.00%): 2 of 100 samples; tolerance at most 1 points (1 sample on 100). "
              "Nothing was written to out/int8.")
    print_table([{"mode": "int8", "passed": False, "error": reason}], "title")
    printed = " ".join(capsys.readouterr().out.split())
    assert reason in printed


def test_a_run_exported_with_new_float_data_is_normalized_as_it_was_trained(tmp_path: Path) -> None:
    """Defect: exporting a training run with a new ``--data`` of float vectors normalized them not at all
    ("--preprocess none"), though the model learned on its training data's per-feature standardization:
    the Keras model then sat at chance on the verification data and the export was refused."""
    from cloud.export.exporter import ExportConfig, export_bundle, load_run
    from cloud.export.source import SourceOptions
    from cloud.train.training import TrainConfig, train
    from device.runtime.runtime import Runtime

    rng = np.random.default_rng(0)

    def sensors(n: int) -> tuple[np.ndarray, np.ndarray]:  # two classes, far from zero mean and unit scale
        y = rng.integers(0, 2, n)
        x = rng.normal(500.0, 20.0, (n, 6)).astype(np.float32) + (y[:, None] * 30.0).astype(np.float32)
        return x, y

    x, y = sensors(600)
    np.savez(tmp_path / "old.npz", x=x, y=y)
    train(TrainConfig(model="mlp", data=str(tmp_path / "old.npz"), epochs=8, patience=None, seed=0), tmp_path / "run",
          progress=False)
    x_new, y_new = sensors(300)
    np.savez(tmp_path / "new.npz", x=x_new, y=y_new)
    run = load_run(tmp_path / "run", SourceOptions(data=str(tmp_path / "new.npz")))
    assert any("as the run was trained" in note for note in run.notes), run.notes
    mean, std = run.splits.test.normalization
    assert np.allclose(mean, x.mean(axis=0), rtol=1e-4) and np.allclose(std, x.std(axis=0), rtol=1e-3)  # the old data's
    v = export_bundle(run, tmp_path / "bundle", ExportConfig(mode="float32"))
    assert v.passed and v.keras_accuracy > 0.9
    rt = Runtime(tmp_path / "bundle")  # the device normalizes raw sensor values as training did
    assert (rt.predict(x_new).argmax(axis=-1) == y_new).mean() > 0.9
