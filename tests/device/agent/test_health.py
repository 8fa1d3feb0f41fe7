"""The post-update health check, against the canary outputs the cloud recorded."""

from __future__ import annotations

import numpy as np

from device.agent.health import Canary, HealthTolerance, check_health, compare_canary
from device.runtime.runtime import Runtime
from tests.conftest import SHIPPED


def _canary(rt: Runtime, n: int = 6) -> Canary:
    x = np.random.default_rng(0).integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
    return Canary(x, rt.predict(x).astype(np.float32))


def test_healthy_model_passes_and_a_different_model_fails() -> None:
    int8 = Runtime(SHIPPED / "mnist-cnn-int8")
    canary = _canary(int8)
    assert check_health(int8, canary).healthy
    # the expected outputs of one model, checked against another that scores the same inputs differently
    other = Canary(canary.x, np.roll(canary.expected, 1, axis=1))
    report = check_health(int8, other)
    assert not report.healthy and "disagree" in report.reason


def test_non_finite_and_wrong_shape_fail() -> None:
    expected = np.full((2, 10), 0.1, np.float32)
    canary = Canary(np.zeros((2, 28, 28, 1), np.uint8), expected)
    assert not compare_canary(np.full((2, 10), np.nan, np.float32), canary).healthy
    assert not compare_canary(np.zeros((2, 9), np.float32), canary).healthy
    assert compare_canary(expected + 0.01, canary, HealthTolerance(max_abs_prob_diff=0.05)).healthy
    assert not compare_canary(expected + 0.1, canary, HealthTolerance(max_abs_prob_diff=0.05)).healthy


def test_a_model_that_cannot_run_the_canary_fails() -> None:
    int8 = Runtime(SHIPPED / "mnist-cnn-int8")
    wrong = Canary(np.zeros((2, 8, 8, 1), np.uint8), np.full((2, 10), 0.1, np.float32))
    report = check_health(int8, wrong)
    assert not report.healthy and "fails on the canary" in report.reason
