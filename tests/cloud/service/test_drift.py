"""Drift, the pure part: PSI against a hand computation, summaries that add up, the profile's binning,
and inverted digits scoring far above the digits a model was verified on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud.service.drift import add_summaries, drift_score, psi
from device.agent.summary import CONFIDENCE_BINS, INPUT_BINS, Binning, SummaryAccumulator, profile_from_summary


def test_psi_matches_a_hand_computation() -> None:
    e, a = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    hand = (0.2 - 0.5) * math.log(0.2 / 0.5) + 0 + (0.5 - 0.2) * math.log(0.5 / 0.2)
    assert psi(e, a) == pytest.approx(hand, rel=1e-12)
    assert psi([5, 3, 2], [2, 3, 5]) == pytest.approx(hand)  # counts are normalised
    assert psi(e, e) == 0.0
    assert math.isfinite(psi([1, 0], [0, 1])) and psi([1, 0], [0, 1]) > 5  # empty bins floored at EPS
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_an_accumulator_counts_what_numpy_counts() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 4, 4, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(5), size=50)
    labels = rng.integers(0, 5, size=50)
    acc = SummaryAccumulator("7", Binning(channels=3, classes=5, input_range=(0.0, 255.0)))
    acc.add_batch(x, probs, labels)
    acc.add_error()
    s = acc.take()
    assert s["predictions"] == 50 and s["errors"] == 1 and s["version"] == "7"
    assert s["correct"] == int((probs.argmax(1) == labels).sum()) and s["labelled"] == 50
    assert s["confidence_hist"] == np.histogram(probs.max(1), bins=CONFIDENCE_BINS, range=(0, 1))[0].tolist()
    assert s["prediction_hist"] == np.bincount(probs.argmax(1), minlength=5).tolist()
    flat = x.reshape(-1, 3).astype(np.float64)
    assert np.allclose(s["input_sum"], flat.sum(0)) and s["input_values"] == 50 * 16
    edges = np.linspace(0, 255, INPUT_BINS + 1)
    for ch in range(3):
        assert s["input_hist"][ch] == np.histogram(flat[:, ch], bins=edges)[0].tolist()
    assert acc.empty() and acc.take()["predictions"] == 0  # take() starts afresh


def test_summaries_add_up_to_the_summary_of_everything() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(40, 8, 8, 1), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(10), size=40)
    b = Binning(1, 10, (0.0, 255.0))
    whole, parts = SummaryAccumulator("1", b), []
    whole.add_batch(x, probs)
    for lo in range(0, 40, 10):
        acc = SummaryAccumulator("1", b)
        acc.add_batch(x[lo:lo + 10], probs[lo:lo + 10])
        parts.append(acc.take())
    total, ref = add_summaries(parts), whole.take()
    for k in ("predictions", "confidence_hist", "prediction_hist", "input_hist", "input_values"):
        assert total[k] == ref[k], k
    assert np.allclose(total["input_sum"], ref["input_sum"])


def test_inverted_digits_score_far_above_the_reference_digits() -> None:
    """Synthetic digits: dark backgrounds with a bright stroke; inverted, the pixel histogram flips."""
    rng = np.random.default_rng(2)
    x = np.zeros((200, 28, 28, 1), np.uint8)
    x[:, 10:18, 12:16] = rng.integers(180, 256, size=(200, 8, 4, 1), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(10) * 0.2, size=200)  # confident
    b = Binning(1, 10, (0.0, 255.0))
    ref = SummaryAccumulator("ref", b)
    ref.add_batch(x[:100], probs[:100])
    profile = profile_from_summary(ref.take(), b)
    same, inverted = SummaryAccumulator("1", b), SummaryAccumulator("1", b)
    same.add_batch(x[100:], probs[100:])
    inverted.add_batch(255 - x[100:], rng.dirichlet(np.ones(10) * 3, size=100))  # and unsure
    d_same, d_inv = drift_score(profile, same.take()), drift_score(profile, inverted.take())
    assert d_same.score < 0.1 and d_same.level == "none"
    assert d_inv.score > 2.5 and d_inv.level == "major" and d_inv.input_psi > 2.5 and d_inv.confidence_psi > 0.25
    assert drift_score(None, None).score is None and drift_score(profile, None).level == "unknown"
