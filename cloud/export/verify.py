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


def compare(keras_logits: np.ndarray, tflite_logits: np.ndarray, y: np.ndarray, mode: str,
            tolerance: Tolerance, task: str = "classification") -> Verification:
    """Agreement metrics of two ``(N, outputs)`` arrays, and the tolerance failures.

    ``classification``: top-1 agreement and accuracy against ``y``; ``multilabel``: agreement of
    the per-label decisions (score > 0.5, or logit > 0); ``regression``: the output difference only.
    """
    if task not in ("classification", "multilabel"):
        tolerance = replace(tolerance, min_top1_agreement=None, max_rel_logit_diff=tolerance.max_rel_logit_diff or 0.1)
    failures: list[str] = []
    if keras_logits.shape != tflite_logits.shape:
        raise ValueError(f"logit shapes differ: Keras {keras_logits.shape}, TFLite {tflite_logits.shape}")
    finite = np.isfinite(tflite_logits)
    max_abs = float("inf")
    if finite.all():
        max_abs = float(np.abs(keras_logits.astype(np.float64) - tflite_logits.astype(np.float64)).max())
    else:
        failures.append(
            f"TFLite outputs hold {int(finite.size - finite.sum())} non-finite values of {finite.size} "
            "(a silent NaN export?)"
        )
    scale = max(1.0, float(np.abs(keras_logits).max()))
    n = int(len(keras_logits))
    keras_correct = tflite_correct = 0
    if task == "classification":
        keras_top = keras_logits.argmax(axis=-1)
        tflite_top = np.where(finite.all(axis=-1), tflite_logits.argmax(axis=-1), -1)  # a non-finite row counts as wrong
        keras_correct, tflite_correct = int((keras_top == y).sum()), int((tflite_top == y).sum())
        agreement = float((keras_top == tflite_top).mean())
        keras_acc, tflite_acc = keras_correct / n, tflite_correct / n
    else:
        cut = 0.5 if float(keras_logits.min()) >= 0.0 and float(keras_logits.max()) <= 1.0 else 0.0
        agreement = float(((keras_logits > cut) == (tflite_logits > cut)).mean()) if task == "multilabel" else float("nan")
        keras_acc = tflite_acc = float("nan")
    result = dict(
        mode=mode,
        samples=n,
        keras_accuracy=keras_acc,
        tflite_accuracy=tflite_acc,
        max_abs_logit_diff=max_abs,
        max_rel_logit_diff=max_abs / scale,
        top1_agreement=agreement,
    )
    t = tolerance
    if t.max_rel_logit_diff is not None and not result["max_rel_logit_diff"] <= t.max_rel_logit_diff:
        failures.append(
            f"max |Δ logit| {max_abs:.3g} is {result['max_rel_logit_diff']:.3g} of the logit scale {scale:.3g}; "
            f"tolerance {t.max_rel_logit_diff:g}"
        )
    if t.min_top1_agreement is not None and result["top1_agreement"] < t.min_top1_agreement:
        failures.append(f"top-1 agreement {result['top1_agreement']:.4f} is below {t.min_top1_agreement:g}")
    lost, allowed = keras_correct - tflite_correct, allowed_drop(n, t.max_accuracy_drop)
    if task == "classification" and lost > allowed:
        failures.append(
            f"accuracy {100 * result['tflite_accuracy']:.2f}% is {100 * lost / n:.2f} points below Keras "
            f"({100 * result['keras_accuracy']:.2f}%): {lost} of {n} samples; tolerance at most "
            f"{t.max_accuracy_drop:g} points ({allowed} sample{'' if allowed == 1 else 's'} on {n})")
    return Verification(tolerance=tolerance, failures=tuple(failures), task=task, **result)


def verify_bundle(bundle_dir: Path | str, keras_logits: np.ndarray, x_raw: np.ndarray, y: np.ndarray, mode: str,
                  tolerance: Tolerance | None = None, latency_runs: int = 100,
                  task: str = "classification") -> Verification:
    """Run the bundle in LiteRT on raw test inputs and compare with Keras' outputs for them.

    Compares the dequantized outputs as they are (``Runtime.logits``): logits with logits,
    probabilities with probabilities, so a wrongly declared output kind cannot hide.
    """
    tolerance = tolerance or TOLERANCES[mode]
    runtime = Runtime(bundle_dir, num_threads=1)
    tflite_logits = runtime.logits(x_raw, check_finite=False)
    result = compare(keras_logits, tflite_logits, y, mode, tolerance, task)
    latency = float("nan")
    if result.passed:
        try:
            latency = latency_summary(time_calls(runtime.predict, x_raw[0], runs=latency_runs, warmup=10))["median_ms"]
        except BundleError as exc:  # pragma: no cover - the batch run above succeeded
            result = replace(result, failures=(*result.failures, str(exc)))
    size = runtime.model_path.stat().st_size
    return replace(result, size_bytes=size, median_latency_ms=latency, backend=runtime.backend)
