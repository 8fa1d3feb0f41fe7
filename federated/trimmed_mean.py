"""Coordinate-wise trimmed mean: drop the ``floor(beta * n)`` largest and smallest values per coordinate.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.weights import Weights


def trimmed_mean(updates: Sequence[Sequence[np.ndarray]], beta: float) -> Weights:
    """Mean over clients of each coordinate after trimming ``k = floor(beta * n)`` values at each end."""
    n = len(updates)
    if n == 0:
        raise ValueError("trimmed_mean needs at least one update")
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    k = int(np.floor(beta * n))
    out: Weights = []
    for layer in zip(*updates):
        stacked = np.sort(np.stack(layer).astype(np.float64), axis=0)
        out.append(stacked[k : n - k].mean(axis=0).astype(layer[0].dtype))
    return out
