"""Partitions: deterministic, every sample exactly once, and the skew each scheme promises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.errors import ConfigError
from federated.partition import SCHEMES, PartitionConfig, label_histogram, partition, summary

LABELS = np.repeat(np.arange(10), 100)[np.random.default_rng(1).permutation(1000)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_sample_exactly_once_and_deterministic(scheme: str) -> None:
    cfg = PartitionConfig(scheme, num_clients=20, alpha=0.3, seed=4)
    parts = partition(LABELS, cfg)
    assert len(parts) == 20 and min(p.size for p in parts) > 0
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    again = partition(LABELS, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, PartitionConfig(scheme, num_clients=20, alpha=0.3, seed=5))
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_shards_give_each_client_at_most_two_classes() -> None:
    parts = partition(LABELS, PartitionConfig("shards", num_clients=100))
    hist = label_histogram(LABELS, parts)
    assert ((hist > 0).sum(axis=1) <= 2).all()
    assert (hist.sum(axis=1) == 10).all()


def test_iid_is_balanced_and_dirichlet_is_skewed() -> None:
    iid = label_histogram(LABELS, partition(LABELS, PartitionConfig("iid", num_clients=10)))
    skew = label_histogram(LABELS, partition(LABELS, PartitionConfig("dirichlet", num_clients=10, alpha=0.1)))
    assert (iid.sum(axis=1) == 100).all()
    frac = lambda h: (h.max(axis=1) / h.sum(axis=1)).mean()  # noqa: E731 - share of the top class
    assert frac(iid) < 0.3 < 0.6 < frac(skew)


def test_quantity_skew_keeps_labels_iid_but_sizes_unequal() -> None:
    parts = partition(LABELS, PartitionConfig("quantity", num_clients=10, alpha=0.5))
    sizes = sorted(p.size for p in parts)
    assert sizes[-1] > 3 * sizes[0]
    s = summary(LABELS, parts)
    assert s["samples"] == 1000 and s["clients"] == 10


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(SCHEMES), st.integers(1, 30), st.integers(0, 10**6), st.floats(0.05, 10))
def test_cover_property(scheme, k, seed, alpha) -> None:
    labels = np.random.default_rng(seed).integers(0, 5, size=200)
    try:
        parts = partition(labels, PartitionConfig(scheme, num_clients=k, alpha=alpha, seed=seed))
    except ConfigError:
        # a very skewed Dirichlet draw may leave a client empty; too few shards cannot cover every class
        assert scheme == "dirichlet" or (scheme == "shards" and 2 * k < np.unique(labels).size)
        return
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(200))


def test_bad_configs() -> None:
    with pytest.raises(ConfigError):
        PartitionConfig("zipf")
    with pytest.raises(ConfigError, match="at least one"):
        partition(np.zeros(5, int), PartitionConfig(num_clients=6))


def test_resample_makes_more_clients_than_samples_with_distinct_samples_each() -> None:
    from federated.partition import RESAMPLE

    labels = np.arange(50) % 10
    cfg = PartitionConfig(RESAMPLE, num_clients=400, samples_per_client=7, seed=3)
    parts = partition(labels, cfg)
    assert len(parts) == 400 and all(p.size == 7 and np.unique(p).size == 7 for p in parts)
    assert all(np.all(np.diff(p) > 0) and p.min() >= 0 and p.max() < 50 for p in parts)
    used = np.concatenate(parts)
    assert np.unique(used).size == 50 and used.size == 2800  # every sample used, most of them many times
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(labels, cfg)))
    other = partition(labels, PartitionConfig(RESAMPLE, num_clients=400, samples_per_client=7, seed=4))
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))
    # draws are uniform: each sample lands in about 400 * 7 / 50 = 56 clients
    counts = np.bincount(used, minlength=50)
    assert counts.min() > 25 and counts.max() < 95
    assert [p.size for p in partition(labels, PartitionConfig(RESAMPLE, num_clients=5))] == [10] * 5  # default n // k
    with pytest.raises(ConfigError, match="samples_per_client"):
        partition(labels, PartitionConfig(RESAMPLE, num_clients=5, samples_per_client=51))
    with pytest.raises(ConfigError, match="samples_per_client"):
        PartitionConfig(RESAMPLE, samples_per_client=0)
