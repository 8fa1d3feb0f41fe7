"""FedAvg's aggregate: the mean of client weights weighted by their sample counts.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.weights import Weights


def weighted_mean(updates: Sequence[Sequence[np.ndarray]], num_samples: Sequence[int]) -> Weights:
    """``sum_k n_k w_k / sum_k n_k`` per array, accumulated in float64, returned in each array's dtype."""
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    counts = np.asarray(num_samples, dtype=np.float64)
    if counts.shape != (len(updates),) or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"num_samples must be {len(updates)} non-negative counts with a positive sum, got {num_samples}")
    coef = counts / counts.sum()
    out: Weights = []
    for layer in zip(*updates):
        acc = np.zeros(layer[0].shape, dtype=np.float64)
        for c, w in zip(coef, layer):
            acc += c * w
        out.append(acc.astype(layer[0].dtype))
    return out
