"""Coordinate-wise median: each coordinate of the aggregate is the median over clients.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
Sample counts are ignored: a Byzantine client could otherwise claim a huge count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.weights import Weights


def coordinate_median(updates: Sequence[Sequence[np.ndarray]]) -> Weights:
    if not updates:
        raise ValueError("coordinate_median needs at least one update")
    return [np.median(np.stack(layer).astype(np.float64), axis=0).astype(layer[0].dtype) for layer in zip(*updates)]
