"""Weights: one float32 array per trainable variable, in model order, and the arithmetic on them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Weights = list[np.ndarray]


def copy(weights: Sequence[np.ndarray]) -> Weights:
    return [np.array(w, copy=True) for w in weights]


def subtract(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> Weights:
    return [np.subtract(x, y) for x, y in zip(a, b)]


def add(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> Weights:
    return [np.add(x, y) for x, y in zip(a, b)]


def scale(a: Sequence[np.ndarray], factor: float) -> Weights:
    return [np.multiply(x, np.asarray(factor, dtype=x.dtype)) for x in a]


def l2_norm(weights: Sequence[np.ndarray]) -> float:
    """The L2 norm of all arrays taken together, accumulated in float64."""
    return float(np.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in weights)))


def flatten(weights: Sequence[np.ndarray]) -> np.ndarray:
    """All arrays as one float64 vector (for distances and coordinate-wise statistics)."""
    if not weights:
        return np.zeros(0)
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def unflatten(vector: np.ndarray, like: Sequence[np.ndarray]) -> Weights:
    """Split ``vector`` back into arrays shaped and typed like ``like``."""
    out: Weights = []
    offset = 0
    for w in like:
        out.append(vector[offset : offset + w.size].reshape(w.shape).astype(w.dtype))
        offset += w.size
    if offset != vector.size:
        raise ValueError(f"vector has {vector.size} values, the weights need {offset}")
    return out


def num_bytes(weights: Sequence[np.ndarray]) -> int:
    """Bytes to send these arrays uncompressed."""
    return int(sum(w.nbytes for w in weights))


def update_norms(updates: Sequence[Sequence[np.ndarray]], reference: Sequence[np.ndarray]) -> np.ndarray:
    """``||u - reference||_2`` for every update at once (one stacked array per layer)."""
    total = np.zeros(len(updates))
    for i, ref in enumerate(reference):
        d = (np.stack([u[i] for u in updates]) - ref).reshape(len(updates), -1)
        total += np.einsum("ij,ij->i", d, d, dtype=np.float64)
    return np.sqrt(total)
