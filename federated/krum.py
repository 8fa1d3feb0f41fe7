"""Krum and Multi-Krum: keep the update(s) closest to their ``n - f - 2`` nearest neighbours.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.weights import Weights, flatten, unflatten


def krum_scores(updates: Sequence[Sequence[np.ndarray]], byzantine: int) -> np.ndarray:
    """Each update's sum of squared distances to its ``n - f - 2`` nearest other updates."""
    n = len(updates)
    if n < 2 * byzantine + 3:
        raise ValueError(f"Krum with f={byzantine} Byzantine clients needs at least {2 * byzantine + 3} updates, got {n}")
    flat = np.stack([flatten(u) for u in updates])
    sq = np.sum(flat**2, axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    neighbours = n - byzantine - 2
    scores = np.empty(n)
    for i in range(n):
        others = np.delete(dist[i], i)
        scores[i] = np.sort(others)[:neighbours].sum()
    return scores


def multi_krum(updates: Sequence[Sequence[np.ndarray]], byzantine: int, m: int | None = None) -> tuple[Weights, list[int]]:
    """The mean of the ``m`` best-scoring updates (``m = 1`` is Krum) and their indices, best first.

    ``m`` defaults to ``n - f``. Ties break by index, so the choice is deterministic.
    """
    n = len(updates)
    scores = krum_scores(updates, byzantine)
    m = n - byzantine if m is None else m
    if not 1 <= m <= n:
        raise ValueError(f"multi_krum m must be in [1, {n}], got {m}")
    chosen = [int(i) for i in np.argsort(scores, kind="stable")[:m]]
    mean = np.mean(np.stack([flatten(updates[i]) for i in chosen]), axis=0)
    return unflatten(mean, updates[0]), chosen


def krum(updates: Sequence[Sequence[np.ndarray]], byzantine: int) -> tuple[Weights, int]:
    """The single update with the lowest Krum score, and its index."""
    weights, chosen = multi_krum(updates, byzantine, m=1)
    return weights, chosen[0]
