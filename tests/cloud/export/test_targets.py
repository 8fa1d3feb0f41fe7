"""Targets fitted to the export's task, and the task's own measures in verification: pure numpy,
checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.errors import DataError
from cloud.export.report import metrics_text
from cloud.export.source import Preprocess, describe_normalization
from cloud.export.targets import fit_targets, has_targets
from cloud.export.verify import TOLERANCES, compare
from cloud.train.data import Dataset

X = np.zeros((4, 3), np.float32)


def _ds(y: np.ndarray, targets: str, labels: tuple[str, ...] = ()) -> Dataset:
    return Dataset("d", X, y, labels, (0.0, 1.0), None, targets=targets)


CLASSES = _ds(np.array([0, 1, 1, 0]), "classes", ("cat", "dog"))
NUMBERED = _ds(np.array([0, 2, 1, 0]), "classes", ("-1", "0.5", "3"))
MULTIHOT = _ds(np.array([[0, 1], [1, 1], [0, 0], [1, 0]]), "multihot", ("a", "b"))
VALUES = _ds(np.array([0.5, 1.25, -2.0, 3.0], np.float32), "values", ("price",))


def test_classification_needs_class_labels_and_says_which_task_fits() -> None:
    assert fit_targets(CLASSES, "classification", 2, "d.npz") == (CLASSES, None)
    with pytest.raises(DataError, match=r"--data r\.csv: holds float targets \(N,\) \(price\).*e\.g\. 0\.5, .*"
                                        r"use --task regression \(--label-column names"):
        fit_targets(VALUES, "classification", 1, "r.csv")
    with pytest.raises(DataError, match=r"--data m\.npz: holds multi-hot .*use --task multilabel"):
        fit_targets(MULTIHOT, "classification", 2, "m.npz")


def test_multilabel_needs_one_0_1_column_per_output() -> None:
    assert fit_targets(MULTIHOT, "multilabel", 2, "m.npz") == (MULTIHOT, None)
    with pytest.raises(DataError, match=r"multi-hot targets over 2 labels \(a, b\), but the model has 3 outputs"):
        fit_targets(MULTIHOT, "multilabel", 3, "m.npz")
    with pytest.raises(DataError, match=r"--task multilabel needs 0/1 targets.*e\.g\. 0\.5.*--task regression"):
        fit_targets(VALUES, "multilabel", 1, "r.npz")
    # single-label data is multi-hot data with one label per sample
    onehot, note = fit_targets(CLASSES, "multilabel", 3, "folder")
    assert onehot.targets == "multihot" and onehot.y.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert onehot.labels == ("cat", "dog", "2") and "one label each" in note
    with pytest.raises(DataError, match=r"2 classes but the model has 1 outputs; give multi-hot targets: an \.npz y"):
        fit_targets(CLASSES, "multilabel", 1, "folder")


def test_regression_needs_one_value_per_output() -> None:
    fitted, note = fit_targets(VALUES, "regression", 1, "r.csv")
    assert note is None and fitted.y.shape == (4, 1) and fitted.y[:, 0].tolist() == VALUES.y.tolist()
    with pytest.raises(DataError, match=r"1 regression target per sample \(float targets \(N,\) \(price\)\) but the "
                                        r"model has 2 outputs .*--label-column names the target columns"):
        fit_targets(VALUES, "regression", 2, "r.csv")
    as_values, _ = fit_targets(MULTIHOT, "regression", 2, "m.npz")
    assert as_values.targets == "values" and as_values.y.dtype == np.float32
    numbers, note = fit_targets(NUMBERED, "regression", 1, "n.csv")
    assert numbers.y[:, 0].tolist() == [-1.0, 3.0, 0.5, -1.0] and "numbers" in note
    # class names have no values: the export is compared with Keras only, and the note says so
    names, note = fit_targets(CLASSES, "regression", 3, "folder")
    assert names is CLASSES and not has_targets(names, "regression") and "checked against Keras only" in note


def test_multilabel_verification_reports_per_label_accuracy_and_exact_match() -> None:
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    keras = np.array([[0.9, 0.2, 0.8], [0.1, 0.7, 0.3], [0.6, 0.4, 0.2], [0.3, 0.1, 0.2]], np.float32)  # 11/12 right
    tflite = keras.copy()
    tflite[0, 2] = 0.45  # one more wrong: 10/12
    v = compare(keras, tflite, y, "float32", TOLERANCES["int8"], "multilabel", "scores")
    assert v.target_values == 12 and v.keras_accuracy == 11 / 12 and v.tflite_accuracy == 10 / 12
    assert v.keras_exact_match == 3 / 4 and v.tflite_exact_match == 2 / 4 and v.top1_agreement == 11 / 12
    assert not v.passed and "1 of 12 label decisions" in " ".join(v.failures)  # 1 point of 12 allows 0
    assert np.isclose(v.max_abs_logit_diff, 0.35)
    text = metrics_text(v)
    assert "per-label accuracy 83.33% (Keras 91.67%) over 12 label decisions" in text
    assert "exact match 50.00% (Keras 75.00%)" in text
    # logits are cut at 0, not at 0.5
    logits = compare(keras - 0.5, keras - 0.5, y, "float32", TOLERANCES["float32"], "multilabel", "logits")
    assert logits.passed and logits.keras_accuracy == 11 / 12
    # no targets: agreement with Keras only
    bare = compare(keras, keras, None, "float32", TOLERANCES["float32"], "multilabel", "scores")
    assert bare.passed and bare.target_values == 0 and np.isnan(bare.keras_accuracy)


def test_regression_verification_reports_mae_and_rmse_against_targets_and_keras() -> None:
    y = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    keras = np.array([[1.5], [2.0], [2.0], [4.0]], np.float32)   # errors 0.5, 0, 1, 0
    tflite = np.array([[1.5], [2.5], [2.0], [4.0]], np.float32)  # errors 0.5, 0.5, 1, 0
    v = compare(keras, tflite, y, "int8", TOLERANCES["int8"], "regression")
    assert (v.keras_mae, v.tflite_mae) == (0.375, 0.5) and v.target_values == 4
    assert np.isclose(v.keras_rmse, np.sqrt(1.25 / 4)) and np.isclose(v.tflite_rmse, np.sqrt(1.5 / 4))
    assert v.mean_abs_logit_diff == 0.125 and v.max_abs_logit_diff == 0.5
    assert not v.passed and "0.125 of the logit scale" in v.failures[0]  # 0.5 / max(1, 4) > 0.1
    assert "MAE 0.5 (Keras 0.375), RMSE 0.6124 (Keras 0.559) over 4 target values" in metrics_text(v)
    nan = tflite.copy()
    nan[1] = np.nan
    bad = compare(keras, nan, y, "float32", TOLERANCES["float32"], "regression")
    assert not bad.passed and bad.tflite_mae == float("inf")


def test_printed_normalization_is_rounded() -> None:
    # Regression: export printed mean [0.13066048920154572, …] to the last digit.
    text = describe_normalization(((0.13066048920154572, 12.3456789), (0.30810780717887876, 1.0)))
    assert text == "(raw - [0.1307, 12.35]) / [0.3081, 1]"
    assert describe_normalization((0.0, 255.0)) == "(raw - 0) / 255"
    assert Preprocess("standardize", (0.13066048920154572,), (0.30810780717887876,)).describe() == \
        "standardize (raw - 0.1307) / 0.3081"
