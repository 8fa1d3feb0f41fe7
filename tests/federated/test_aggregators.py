"""Aggregators on hand-computed and crafted updates, and their properties (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from federated.fedavg import weighted_mean
from federated.krum import krum, krum_scores, multi_krum
from federated.median import coordinate_median
from federated.trimmed_mean import trimmed_mean


def _w(*values: float) -> list[np.ndarray]:
    return [np.array(values[:2], dtype=np.float32), np.array([[values[2]]], dtype=np.float32)]


def test_weighted_mean_by_hand() -> None:
    a, b = _w(1, 2, 3), _w(5, 10, -1)
    got = weighted_mean([a, b], [1, 3])  # (1*a + 3*b) / 4
    np.testing.assert_allclose(got[0], [4.0, 8.0])
    np.testing.assert_allclose(got[1], [[0.0]])
    assert got[0].dtype == np.float32


def test_weighted_mean_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        weighted_mean([_w(1, 2, 3)], [0])


HONEST = [_w(1.0, 1.0, 1.0), _w(1.1, 0.9, 1.0), _w(0.9, 1.1, 1.05), _w(1.05, 1.0, 0.95)]
BYZANTINE = _w(1000.0, -1000.0, 500.0)


def _dist_to_honest(w: list[np.ndarray]) -> float:
    centre = np.mean([np.concatenate([x.ravel() for x in h]) for h in HONEST], axis=0)
    return float(np.linalg.norm(np.concatenate([x.ravel() for x in w]) - centre))


def test_byzantine_client_drags_the_mean_but_not_robust_aggregators() -> None:
    updates = [*HONEST, BYZANTINE]
    assert _dist_to_honest(weighted_mean(updates, [1] * 5)) > 100
    assert _dist_to_honest(coordinate_median(updates)) < 0.2
    assert _dist_to_honest(trimmed_mean(updates, 0.2)) < 0.2
    w, idx = krum(updates, byzantine=1)
    assert idx != 4 and _dist_to_honest(w) < 0.2
    w, chosen = multi_krum(updates, byzantine=1, m=3)
    assert 4 not in chosen and _dist_to_honest(w) < 0.2


def test_median_and_trimmed_mean_by_hand() -> None:
    ups = [[np.array([v], dtype=np.float32)] for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    assert coordinate_median(ups)[0][0] == 3.0
    assert trimmed_mean(ups, 0.2)[0][0] == pytest.approx(3.0)  # drops 1 and 100
    assert trimmed_mean(ups, 0.0)[0][0] == pytest.approx(22.0)


def test_krum_scores_by_hand() -> None:
    ups = [[np.array([x], dtype=np.float32)] for x in (0.0, 1.0, 3.0, 10.0, 11.0)]
    # f = 1 -> n - f - 2 = 2 nearest neighbours, squared distances
    np.testing.assert_allclose(krum_scores(ups, 1), [1 + 9, 1 + 4, 4 + 9, 1 + 49, 1 + 64])
    with pytest.raises(ValueError, match="at least 5"):
        krum_scores(ups[:4], 1)


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def update_sets(draw):
    n = draw(st.integers(5, 9))
    shape = draw(st.sampled_from([(3,), (2, 2), (1,)]))
    ups = [[draw(arrays(np.float32, shape, elements=finite))] for _ in range(n)]
    counts = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    return ups, counts


@settings(max_examples=60, deadline=None)
@given(update_sets(), st.randoms())
def test_aggregators_are_permutation_invariant_and_within_bounds(data, rnd) -> None:
    ups, counts = data
    order = list(range(len(ups)))
    rnd.shuffle(order)
    lo = np.min(np.stack([u[0] for u in ups]), axis=0)
    hi = np.max(np.stack([u[0] for u in ups]), axis=0)
    for agg in (
        lambda u, c: weighted_mean(u, c),
        lambda u, c: coordinate_median(u),
        lambda u, c: trimmed_mean(u, 0.2),
    ):
        a = agg(ups, counts)[0]
        b = agg([ups[i] for i in order], [counts[i] for i in order])[0]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
        assert (a >= lo - 1e-3).all() and (a <= hi + 1e-3).all()


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (4,), elements=finite), st.integers(3, 8))
def test_identical_updates_aggregate_to_themselves(w, n) -> None:
    ups = [[w.copy()] for _ in range(n)]
    for got in (weighted_mean(ups, list(range(1, n + 1))), coordinate_median(ups), trimmed_mean(ups, 0.1)):
        np.testing.assert_allclose(got[0], w, rtol=1e-6, atol=1e-4)
    if n >= 5:
        np.testing.assert_array_equal(multi_krum(ups, 1)[0][0], w)


@settings(max_examples=40, deadline=None)
@given(update_sets())
def test_weighted_mean_equals_numpy_average(data) -> None:
    ups, counts = data
    expected = np.average(np.stack([u[0] for u in ups]).astype(np.float64), axis=0, weights=counts)
    np.testing.assert_allclose(weighted_mean(ups, counts)[0], expected, rtol=1e-5, atol=1e-3)
