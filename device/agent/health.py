"""The health check a new model must pass before it serves: it loads, and on the canary
inputs stored in its bundle its outputs are finite and agree with what the cloud measured.

Pure apart from reading ``canary.npz``: ``check_health`` takes a loaded runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.agent.verify_signature import CANARY_NAME
from device.errors import UpdateRejected


class CanaryError(UpdateRejected):
    """A bundle's ``canary.npz`` cannot be read or lacks ``x``/``expected``: the bundle is unhealthy."""


@dataclass(frozen=True)
class Canary:
    """Raw canary inputs ``x`` (N, *input shape) and the probabilities ``expected`` (N, classes) the cloud saw."""

    x: np.ndarray
    expected: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.expected.ndim != 2 or len(self.x) != len(self.expected) or len(self.x) == 0:
            raise ValueError(f"canary needs x (N, ...) and expected (N, classes) with N >= 1; "
                             f"got {self.x.shape} and {self.expected.shape}")


@dataclass(frozen=True)
class HealthTolerance:
    max_abs_prob_diff: float = 0.05
    min_top1_agreement: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_abs_prob_diff <= 1 or not 0 <= self.min_top1_agreement <= 1:
            raise ValueError("health tolerances must lie in [0, 1]")


@dataclass(frozen=True)
class HealthReport:
    healthy: bool
    reason: str
    samples: int = 0
    max_abs_prob_diff: float = 0.0
    top1_agreement: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "reason": self.reason, "samples": self.samples,
                "max_abs_prob_diff": self.max_abs_prob_diff, "top1_agreement": self.top1_agreement}


def read_canary(bundle_dir: Path | str) -> Canary | None:
    """The bundle's canary, or None when it has none (the unsigned shipped defaults).

    Raises :class:`CanaryError` for a canary that exists but cannot be used.
    """
    path = Path(bundle_dir) / CANARY_NAME
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "expected") if k not in data.files]
            if missing:
                raise CanaryError(f"{path}: the canary has no {' or '.join(missing)}")
            return Canary(np.asarray(data["x"]), np.asarray(data["expected"], dtype=np.float32))
    except CanaryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a zip, a pickle or a shape np.load refuses: all mean "bad canary"
        raise CanaryError(f"{path}: unreadable canary ({type(exc).__name__}: {exc})") from None


def compare_canary(probs: np.ndarray, canary: Canary, tol: HealthTolerance = HealthTolerance()) -> HealthReport:
    """Judge a model's probabilities on the canary inputs against the expected ones."""
    n = len(canary.x)
    if probs.shape != canary.expected.shape:
        return HealthReport(False, f"canary outputs have shape {probs.shape}, expected {canary.expected.shape}", n)
    if not np.isfinite(probs).all():
        return HealthReport(False, "non-finite outputs on the canary inputs", n)
    diff = float(np.max(np.abs(probs - canary.expected)))
    agree = float(np.mean(probs.argmax(-1) == canary.expected.argmax(-1)))
    if agree < tol.min_top1_agreement or diff > tol.max_abs_prob_diff:
        return HealthReport(False, f"canary outputs disagree with the bundle's: top-1 agreement {agree:.2%} "
                                   f"(need {tol.min_top1_agreement:.0%}), max |Δp| {diff:.3g} "
                                   f"(limit {tol.max_abs_prob_diff})", n, diff, agree)
    return HealthReport(True, "ok", n, diff, agree)


def check_health(runtime: Any, canary: Canary | None, tol: HealthTolerance = HealthTolerance()) -> HealthReport:
    """Run ``runtime`` on the canary (or, without one, on an all-zero input) and judge it."""
    try:
        if canary is None:
            probs = np.atleast_2d(runtime.predict(np.zeros(runtime.input_spec.shape, dtype=runtime.input_spec.raw_dtype)))
            ok = bool(np.isfinite(probs).all())
            return HealthReport(ok, "ok (no canary in bundle)" if ok else "non-finite outputs", 1)
        probs = np.atleast_2d(runtime.predict(canary.x))
    except Exception as exc:  # any failure to run is a failed health check, never a crash of the agent
        return HealthReport(False, f"the model fails on the canary inputs: {exc}", 0)
    return compare_canary(probs, canary, tol)
