"""FedAvg's aggregate: the mean of client weights weighted by their sample counts.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.weights import Weights


def weighted_mean(updates: Sequence[Sequence[np.ndarray]], num_samples: Sequence[int]) -> Weights:
    """``sum_k n_k w_k / sum_k n_k`` per array, in each array's dtype (one BLAS matrix-vector product per array)."""
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    counts = np.asarray(num_samples, dtype=np.float64)
    if counts.shape != (len(updates),) or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"num_samples must be {len(updates)} non-negative counts with a positive sum, got {num_samples}")
    coef = counts / counts.sum()
    out: Weights = []
    for layer in zip(*updates):
        stacked = np.stack(layer)
        c = coef.astype(stacked.dtype) if stacked.dtype.kind == "f" else coef
        out.append((c @ stacked.reshape(len(layer), -1)).reshape(layer[0].shape).astype(layer[0].dtype))
    return out
