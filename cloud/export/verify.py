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

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = list(self.failures)
        data["passed"] = self.passed
        return data


def compare(keras_logits: np.ndarray, tflite_logits: np.ndarray, y: np.ndarray, mode: str,
            tolerance: Tolerance) -> Verification:
    """Agreement metrics of two ``(N, classes)`` logit arrays, and the tolerance failures."""
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
    keras_top = keras_logits.argmax(axis=-1)
    tflite_top = np.where(finite.all(axis=-1), tflite_logits.argmax(axis=-1), -1)  # a non-finite row counts as wrong
    result = dict(
        mode=mode,
        samples=int(len(y)),
        keras_accuracy=float((keras_top == y).mean()),
        tflite_accuracy=float((tflite_top == y).mean()),
        max_abs_logit_diff=max_abs,
        max_rel_logit_diff=max_abs / scale,
        top1_agreement=float((keras_top == tflite_top).mean()),
    )
    t = tolerance
    if t.max_rel_logit_diff is not None and not result["max_rel_logit_diff"] <= t.max_rel_logit_diff:
        failures.append(
            f"max |Δ logit| {max_abs:.3g} is {result['max_rel_logit_diff']:.3g} of the logit scale {scale:.3g}; "
            f"tolerance {t.max_rel_logit_diff:g}"
        )
    if t.min_top1_agreement is not None and result["top1_agreement"] < t.min_top1_agreement:
        failures.append(f"top-1 agreement {result['top1_agreement']:.4f} is below {t.min_top1_agreement:g}")
    drop = 100.0 * (result["keras_accuracy"] - result["tflite_accuracy"])
    if drop > t.max_accuracy_drop:
        failures.append(f"accuracy {100 * result['tflite_accuracy']:.2f}% is {drop:.2f} points below Keras "
                        f"({100 * result['keras_accuracy']:.2f}%); tolerance {t.max_accuracy_drop:g} points")
    return Verification(tolerance=tolerance, failures=tuple(failures), **result)


def verify_bundle(bundle_dir: Path | str, keras_logits: np.ndarray, x_raw: np.ndarray, y: np.ndarray, mode: str,
                  tolerance: Tolerance | None = None, latency_runs: int = 100) -> Verification:
    """Run the bundle in LiteRT on raw test inputs and compare with Keras' logits for them."""
    tolerance = tolerance or TOLERANCES[mode]
    runtime = Runtime(bundle_dir, num_threads=1)
    tflite_logits = runtime.logits(x_raw, check_finite=False)
    result = compare(keras_logits, tflite_logits, y, mode, tolerance)
    latency = float("nan")
    if result.passed:
        try:
            latency = latency_summary(time_calls(runtime.predict, x_raw[0], runs=latency_runs, warmup=10))["median_ms"]
        except BundleError as exc:  # pragma: no cover - the batch run above succeeded
            result = replace(result, failures=(*result.failures, str(exc)))
    size = runtime.model_path.stat().st_size
    return replace(result, size_bytes=size, median_latency_ms=latency, backend=runtime.backend)
