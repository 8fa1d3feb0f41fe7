"""Multi-label and regression exports verified against real targets (.npz y of shape (N, K), CSV with
several --label-column columns); numeric CSV class labels read as integers; rounded printing.

The models are tiny Dense layers with weights set by hand (no training), so the targets are known to
fit them; Keras is the oracle the TFLite numbers are checked against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

LABELS = ("sky", "tree", "road")
MEAN = "0.13066048920154572,0.2"
STD = "0.30810780717887876,1.0"


def _csv(path: Path, header: list[str], columns: list[np.ndarray], fmt: str = "{:.5f}") -> Path:
    rows = [",".join(fmt.format(v) if isinstance(v, float) else str(v) for v in row)
            for row in zip(*[c.tolist() for c in columns])]
    path.write_text("\n".join([",".join(header), *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data sets and hand-set Keras models: multi-label (label j on when feature j > 0; sigmoid), regression
    (two linear targets plus noise) and a 2-class classifier (class 1 when feature 0 > 0; logits)."""
    import keras

    root = tmp_path_factory.mktemp("targets")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    multihot = (x[:, :3] > 0).astype(np.int64)
    w = np.array([[0.8, -0.3], [0.1, 1.2], [-0.5, 0.4], [0.3, 0.2]], np.float32)
    b = np.array([1.0, -2.0], np.float32)
    values = (x @ w + b + rng.normal(0.0, 0.1, (400, 2))).astype(np.float32)
    np.savez(root / "ml.npz", x=x, y=multihot, labels=np.array(LABELS))
    np.savez(root / "reg.npz", x=x, y=values)
    f = [x[:, i] for i in range(4)]
    _csv(root / "ml.csv", ["f0", "sky", "f1", "tree", "f2", "road", "f3"],
         [f[0], multihot[:, 0], f[1], multihot[:, 1], f[2], multihot[:, 2], f[3]])
    _csv(root / "reg.csv", ["f0", "f1", "f2", "f3", "t0", "t1"], [*f, values[:, 0], values[:, 1]])
    _csv(root / "reg1.csv", ["f0", "f1", "f2", "f3", "t0"], [*f, values[:, 0]])
    # class labels written as floats, the way pandas and numpy write them
    _csv(root / "cls.csv", ["f0", "f1", "label"], [f[0] + 0.13, f[1], (f[0] > 0).astype(np.float64)],
         fmt="{:.4f}")

    def dense(units: int, kernel: np.ndarray, bias: np.ndarray, activation: str | None, name: str, inputs: int) -> Path:
        model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(units, activation=activation)])
        model.layers[-1].set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        model.save(root / name)
        return root / name

    ml_kernel = np.zeros((4, 3), np.float32)
    ml_kernel[:3] = 8.0 * np.eye(3)
    cls_kernel = np.array([[-5.0, 5.0], [0.0, 0.0]])
    return {
        **{p.stem + p.suffix.replace(".", "_"): p for p in root.iterdir()},
        "ml": dense(3, ml_kernel, np.zeros(3), "sigmoid", "ml.keras", 4),
        "reg": dense(2, w, b, None, "reg.keras", 4),
        "cls": dense(2, cls_kernel, np.array([0.0, 0.0]), None, "cls.keras", 2),
    }


def _export(args: list[str], capsys) -> tuple[int, str, str]:
    from cloud import cli

    rc = cli.main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def _oracle(model: Path, data: Path, bundle: Path, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Keras outputs, TFLite outputs, targets) on the test split: Keras called directly, TFLite through
    the device Runtime on raw inputs."""
    import keras

    from cloud.export.exporter import load_run
    from cloud.export.source import SourceOptions
    from device.runtime.runtime import Runtime

    test = load_run(model, SourceOptions(data=str(data), **options)).splits.test
    keras_out = np.asarray(keras.models.load_model(model, compile=False)(test.x.astype(np.float32)))
    return keras_out, Runtime(bundle).logits(test.x), test.y


def test_multilabel_export_is_verified_against_multi_hot_targets(files, tmp_path: Path, capsys) -> None:
    rc, out, err = _export([files["ml"], "--data", files["ml_npz"], "--mode", "int8", "--out", tmp_path / "b",
                            "--json"], capsys)
    assert rc == 0, err
    report = json.loads(out)
    keras_out, tflite_out, y = _oracle(files["ml"], files["ml_npz"], tmp_path / "b")
    assert y.shape == (80, 3) and report["samples"] == 80 and report["target_values"] == 240
    assert report["keras_accuracy"] == pytest.approx(((keras_out > 0.5) == y).mean())
    assert report["tflite_accuracy"] == pytest.approx(((tflite_out > 0.5) == y).mean())
    assert report["tflite_exact_match"] == pytest.approx(((tflite_out > 0.5) == y).all(axis=1).mean())
    assert report["keras_accuracy"] > 0.95 and report["max_abs_logit_diff"] == pytest.approx(
        np.abs(keras_out - tflite_out).max(), abs=1e-6)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["task"] == "multilabel" and manifest["outputs"][0]["kind"] == "scores"
    assert manifest["outputs"][0]["labels"] == list(LABELS)
    assert manifest["metrics"]["keras_exact_match"] == pytest.approx(((keras_out > 0.5) == y).all(axis=1).mean())


def test_multilabel_targets_from_several_csv_columns(files, tmp_path: Path, capsys) -> None:
    # the flag repeated, or comma-separated: the columns are the labels, in the order given
    for i, flags in enumerate((["--label-column", "sky", "--label-column", "tree", "--label-column", "road"],
                               ["--label-column", "sky,tree,road"])):
        rc, out, err = _export([files["ml"], "--data", files["ml_csv"], *flags, "--mode", "float32",
                                "--out", tmp_path / f"b{i}"], capsys)
        assert rc == 0, err
        assert "multi-hot targets over 3 labels (sky, tree, road)" in out
        assert "per-label accuracy 100.00% (Keras 100.00%) over 240 label decisions, exact match 100.00%" in out
        manifest = json.loads((tmp_path / f"b{i}" / "manifest.json").read_text())
        assert manifest["outputs"][0]["labels"] == list(LABELS)


def test_regression_export_reports_mae_and_rmse_against_targets(files, tmp_path: Path, capsys) -> None:
    rc, out, err = _export([files["reg"], "--data", files["reg_npz"], "--task", "regression", "--mode", "int8",
                            "--out", tmp_path / "b", "--json"], capsys)
    assert rc == 0, err
    report = json.loads(out)
    keras_out, tflite_out, y = _oracle(files["reg"], files["reg_npz"], tmp_path / "b", task="regression")
    assert y.shape == (80, 2) and report["target_values"] == 160
    assert report["keras_mae"] == pytest.approx(np.abs(keras_out - y).mean(), rel=1e-5)
    assert report["tflite_mae"] == pytest.approx(np.abs(tflite_out - y).mean(), rel=1e-5)
    assert report["tflite_rmse"] == pytest.approx(np.sqrt(((tflite_out - y) ** 2).mean()), rel=1e-5)
    assert report["keras_mae"] < 0.1  # the noise level: the targets fit the model
    assert abs(report["tflite_mae"] - report["keras_mae"]) <= report["mean_abs_logit_diff"] + 1e-6
    # the same targets from a CSV, as two comma-separated --label-column columns
    rc, out, err = _export([files["reg"], "--data", files["reg_csv"], "--label-column", "t0,t1", "--task",
                            "regression", "--mode", "float32", "--out", tmp_path / "c"], capsys)
    assert rc == 0, err
    assert "float targets (N, 2) (t0, t1)" in out and "over 160 target values" in out
    mae = float(out.split("MAE ")[1].split(" ")[0])
    assert mae == pytest.approx(report["keras_mae"], abs=1e-4)  # float32: TFLite's MAE is Keras'


def test_targets_that_do_not_fit_are_refused_naming_the_flag(files, tmp_path: Path, capsys) -> None:
    cases = [
        # float targets for a (default) classification: suggest --task regression
        ([files["reg"], "--data", files["reg_csv"], "--label-column", "t0,t1"],
         ["--data", "float targets (N, 2) (t0, t1)", "use --task regression"]),
        ([files["reg"], "--data", files["reg_npz"], "--task", "multilabel"],
         ["--task multilabel needs 0/1 targets", "use --task regression"]),
        ([files["reg"], "--data", files["reg1_csv"], "--label-column", "t0", "--task", "regression"],
         ["--data", "1 regression target per sample (float targets (N,) (t0)) but the model has 2 outputs",
          "--label-column names the target columns"]),
        ([files["ml"], "--data", files["ml_csv"], "--label-column", "sky,tree"],
         ["samples have shape (5,) but the model takes (4,)", "--label-column names all of them"]),
        ([files["ml"], "--data", files["reg1_csv"], "--label-column", "t0", "--task", "multilabel"],
         ["--task multilabel needs 0/1 targets"]),
    ]
    for args, expected in cases:
        rc, _, err = _export([*args, "--mode", "float32", "--out", tmp_path / "b"], capsys)
        assert rc == 1 and "Traceback" not in err, err
        for text in expected:
            assert text in err, (text, err)
        assert not (tmp_path / "b").exists()


def test_float_class_labels_are_integers_and_the_printed_normalization_is_rounded(files, tmp_path: Path,
                                                                                   capsys) -> None:
    # Regressions: labels 0.0000/1.0000 became the class names "0.0000", "1.0000" (labels.txt too);
    # export printed the per-channel mean and std to the last digit.
    from cloud.export.metadata import read_metadata

    rc, out, err = _export([files["cls"], "--data", files["cls_csv"], "--mode", "float32", "--preprocess",
                            "standardize", MEAN, STD, "--out", tmp_path / "b"], capsys)
    assert rc == 0, err
    assert "2 classes" in out and "accuracy" in out
    assert "standardize (raw - [0.1307, 0.2]) / [0.3081, 1]" in out and "0.13066048920154572" not in out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["outputs"][0]["labels"] == ["0", "1"]
    assert manifest["inputs"][0]["normalization"] == {"mean": [0.13066048920154572, 0.2],
                                                      "std": [0.30810780717887876, 1.0]}  # full precision kept
    assert read_metadata((tmp_path / "b" / "model.tflite").read_bytes())["labels"] == ["0", "1"]
    # the channels of MEAN and STD must fit the data's (it was a numpy broadcast error)
    rc, _, err = _export([files["cls"], "--data", files["cls_csv"], "--preprocess", "standardize", "1,2,3", "1",
                          "--out", tmp_path / "c"], capsys)
    assert rc == 1 and "MEAN has 3 values" in err and "2 channels" in err


def test_regression_all_modes_prints_mae_and_plots(files, tmp_path: Path, capsys) -> None:
    rc, out, err = _export([files["reg"], "--data", files["reg_npz"], "--task", "regression", "--all-modes",
                            "--out", tmp_path / "all"], capsys)
    assert rc == 0, err
    assert "MAE" in out and "Keras RMSE" in out and "accuracy" not in out
    rows = json.loads((tmp_path / "all" / "export-report.json").read_text())["modes"]
    assert [r["mode"] for r in rows] == ["float32", "float16", "dynamic", "int8"]
    assert all(r["passed"] and r["task"] == "regression" and r["keras_mae"] < 0.1 for r in rows)
    assert (tmp_path / "all" / "export-report.png").stat().st_size > 0
