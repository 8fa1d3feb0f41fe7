"""Check an exported bundle against the Keras model it came from, on the test set, in LiteRT.

The bundle runs through :class:`device.Runtime`, the same code path a device uses,
raw pixels in, so preprocessing and (de)quantization are verified too. The comparison
itself (:func:`compare`) is pure numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import BundleError
from device.runtime.bench import latency_summary, time_calls
from device.runtime.runtime import Runtime


@dataclass(frozen=True)
class Tolerance:
    """How far a mode may stray from Keras. ``rel`` Δ is max|Δ logit| / max(1, max|Keras logit|)."""

    max_rel_logit_diff: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float = 1.0  # percentage points below Keras

    def __post_init__(self) -> None:
        if self.max_accuracy_drop < 0:
            raise ValueError("max_accuracy_drop must be >= 0")


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(max_rel_logit_diff=1e-4, min_top1_agreement=0.999),
    "float16": Tolerance(max_rel_logit_diff=1e-2, min_top1_agreement=0.99),
    "dynamic": Tolerance(max_rel_logit_diff=0.1, min_top1_agreement=0.98),
    "int8": Tolerance(min_top1_agreement=0.97),
}


@dataclass(frozen=True)
class Verification:
    """The measured agreement of one export with its Keras model."""

    mode: str
    samples: int
    keras_accuracy: float
    tflite_accuracy: float
    max_abs_logit_diff: float
    max_rel_logit_diff: float
    top1_agreement: float
    size_bytes: int = 0
    median_latency_ms: float = float("nan")
    backend: str = ""
    tolerance: Tolerance = field(default_factory=Tolerance)
    failures: tuple[str, ...] = ()
    task: str = "classification"
    # against the targets, NaN where the task has no such measure or the data no targets:
    keras_exact_match: float = float("nan")  # multilabel: share of samples with every label right
    tflite_exact_match: float = float("nan")
    keras_mae: float = float("nan")  # regression: mean |output - target|
    tflite_mae: float = float("nan")
    keras_rmse: float = float("nan")
    tflite_rmse: float = float("nan")
    target_values: int = 0  # how many targets the accuracy or error rests on (N, or N x K)
    mean_abs_logit_diff: float = float("nan")  # mean |Keras - TFLite| over every output
    rms_logit_diff: float = float("nan")

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = list(self.failures)
        data["passed"] = self.passed
        return data


def allowed_drop(samples: int, max_points: float) -> int:
    """How many of ``samples`` predictions may be lost under "at most ``max_points`` points below", inclusive.

    Counted in whole samples, so that 1.00 point on 100 samples is exactly 1 sample, not a float
    a hair above 1.0.
    """
    return int(np.floor(max_points * samples / 100.0 + 1e-9))


def _errors(outputs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """``(MAE, RMSE)`` of ``outputs`` against ``targets``, in float64."""
    d = outputs.astype(np.float64) - targets.astype(np.float64)
    return float(np.abs(d).mean()), float(np.sqrt((d * d).mean()))


def compare(keras_logits: np.ndarray, tflite_logits: np.ndarray, y: np.ndarray | None, mode: str,
            tolerance: Tolerance, task: str = "classification", kind: str | None = None) -> Verification:
    """Agreement metrics of two ``(N, outputs)`` arrays, their metrics against the targets ``y``, and
    the tolerance failures.

    ``classification``: ``y`` class indices ``(N,)``; top-1 agreement, and accuracy with the "at most
    N points below Keras" rule counted in samples. ``multilabel``: ``y`` multi-hot ``(N, outputs)``;
    agreement of the per-label decisions (score > 0.5 for ``kind`` scores, logit > 0 for logits),
    per-label accuracy (the rule counted in label decisions) and exact match. ``regression``: ``y``
    float ``(N, outputs)``; MAE and RMSE of both models against it. The pass rule is the output
    difference, which bounds the change in MAE (|MAE_TFLite - MAE_Keras| <= max |Δ output|).
    ``y`` None, or not of that shape, for multilabel or regression: the comparison with Keras only.
    """
    if task not in ("classification", "multilabel"):
        tolerance = replace(tolerance, min_top1_agreement=None, max_rel_logit_diff=tolerance.max_rel_logit_diff or 0.1)
    failures: list[str] = []
    if keras_logits.shape != tflite_logits.shape:
        raise ValueError(f"logit shapes differ: Keras {keras_logits.shape}, TFLite {tflite_logits.shape}")
    finite = np.isfinite(tflite_logits)
    max_abs = mean_abs = rms = float("inf")
    if finite.all():
        diff = np.abs(keras_logits.astype(np.float64) - tflite_logits.astype(np.float64))
        max_abs, mean_abs, rms = float(diff.max()), float(diff.mean()), float(np.sqrt((diff * diff).mean()))
    else:
        failures.append(
            f"TFLite outputs hold {int(finite.size - finite.sum())} non-finite values of {finite.size} "
            "(a silent NaN export?)"
        )
    scale = max(1.0, float(np.abs(keras_logits).max()))
    n = int(len(keras_logits))
    targets = y is not None and (task == "classification" or y.shape == keras_logits.shape)
    extra: dict[str, Any] = {"target_values": int(y.size) if targets else 0}
    keras_correct = tflite_correct = 0
    keras_acc = tflite_acc = float("nan")
    if task == "classification":
        keras_top = keras_logits.argmax(axis=-1)
        tflite_top = np.where(finite.all(axis=-1), tflite_logits.argmax(axis=-1), -1)  # a non-finite row counts as wrong
        keras_correct, tflite_correct = int((keras_top == y).sum()), int((tflite_top == y).sum())
        agreement = float((keras_top == tflite_top).mean())
        keras_acc, tflite_acc = keras_correct / n, tflite_correct / n
    elif task == "multilabel":
        if kind in ("scores", "logits"):
            cut = 0.5 if kind == "scores" else 0.0
        else:
            cut = 0.5 if float(keras_logits.min()) >= 0.0 and float(keras_logits.max()) <= 1.0 else 0.0
        keras_on, tflite_on = keras_logits > cut, tflite_logits > cut
        agreement = float((keras_on == tflite_on).mean())
        if targets:
            truth = y.astype(bool)
            keras_right = keras_on == truth
            tflite_right = np.where(finite, tflite_on == truth, False)  # a non-finite score counts as wrong
            keras_correct, tflite_correct = int(keras_right.sum()), int(tflite_right.sum())
            keras_acc, tflite_acc = keras_correct / y.size, tflite_correct / y.size
            extra.update(keras_exact_match=float(keras_right.all(axis=1).mean()),
                         tflite_exact_match=float(tflite_right.all(axis=1).mean()))
    else:
        agreement = float("nan")
        if targets:
            keras_mae, keras_rmse = _errors(keras_logits, y)
            tflite_mae, tflite_rmse = _errors(tflite_logits, y) if finite.all() else (float("inf"), float("inf"))
            extra.update(keras_mae=keras_mae, keras_rmse=keras_rmse, tflite_mae=tflite_mae, tflite_rmse=tflite_rmse)
    result = dict(
        mode=mode,
        samples=n,
        keras_accuracy=keras_acc,
        tflite_accuracy=tflite_acc,
        max_abs_logit_diff=max_abs,
        max_rel_logit_diff=max_abs / scale,
        top1_agreement=agreement,
        mean_abs_logit_diff=mean_abs,
        rms_logit_diff=rms,
        **extra,
    )
    t = tolerance
    if t.max_rel_logit_diff is not None and not result["max_rel_logit_diff"] <= t.max_rel_logit_diff:
        failures.append(
            f"max |Δ logit| {max_abs:.3g} is {result['max_rel_logit_diff']:.3g} of the logit scale {scale:.3g}; "
            f"tolerance {t.max_rel_logit_diff:g}"
        )
    if t.min_top1_agreement is not None and result["top1_agreement"] < t.min_top1_agreement:
        what = "top-1" if task == "classification" else "per-label decision"
        failures.append(f"{what} agreement {result['top1_agreement']:.4f} is below {t.min_top1_agreement:g}")
    counted = n if task == "classification" else extra["target_values"]
    lost, allowed = keras_correct - tflite_correct, allowed_drop(counted, t.max_accuracy_drop)
    if task in ("classification", "multilabel") and targets and lost > allowed:
        what, unit = ("accuracy", "samples") if task == "classification" else ("per-label accuracy", "label decisions")
        one = unit[:-1] if allowed == 1 else unit
        failures.append(
            f"{what} {100 * result['tflite_accuracy']:.2f}% is {100 * lost / counted:.2f} points below Keras "
            f"({100 * result['keras_accuracy']:.2f}%): {lost} of {counted} {unit}; tolerance at most "
            f"{t.max_accuracy_drop:g} points ({allowed} {one} on {counted})")
    return Verification(tolerance=tolerance, failures=tuple(failures), task=task, **result)


def verify_bundle(bundle_dir: Path | str, keras_logits: np.ndarray, x_raw: np.ndarray, y: np.ndarray | None,
                  mode: str, tolerance: Tolerance | None = None, latency_runs: int = 100,
                  task: str = "classification", kind: str | None = None) -> Verification:
    """Run the bundle in LiteRT on raw test inputs and compare with Keras' outputs for them.

    Compares the dequantized outputs as they are (``Runtime.logits``): logits with logits,
    probabilities with probabilities, so a wrongly declared output kind cannot hide.
    """
    tolerance = tolerance or TOLERANCES[mode]
    runtime = Runtime(bundle_dir, num_threads=1)
    tflite_logits = runtime.logits(x_raw, check_finite=False)
    result = compare(keras_logits, tflite_logits, y, mode, tolerance, task, kind)
    latency = float("nan")
    if result.passed:
        try:
            latency = latency_summary(time_calls(runtime.predict, x_raw[0], runs=latency_runs, warmup=10))["median_ms"]
        except BundleError as exc:  # pragma: no cover - the batch run above succeeded
            result = replace(result, failures=(*result.failures, str(exc)))
    size = runtime.model_path.stat().st_size
    return replace(result, size_bytes=size, median_latency_ms=latency, backend=runtime.backend)
