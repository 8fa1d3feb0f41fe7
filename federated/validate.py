"""Check a client update against the global model before it may touch the aggregate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.weights import l2_norm, subtract


def update_problem(global_weights: Sequence[np.ndarray], update: Sequence[np.ndarray],
                   max_norm: float | None = None) -> str | None:
    """Why ``update`` must be rejected, or ``None`` when it is valid.

    Checks, in order: the number of arrays, each array's shape and dtype against the global
    model, that every value is finite, and that ``||update - global||_2 <= max_norm``.
    """
    if len(update) != len(global_weights):
        return f"shape mismatch: {len(update)} arrays, the global model has {len(global_weights)}"
    for i, (u, g) in enumerate(zip(update, global_weights)):
        if not isinstance(u, np.ndarray):
            return f"array {i} is {type(u).__name__}, expected numpy.ndarray"
        if u.shape != g.shape:
            return f"shape mismatch: array {i} has shape {u.shape}, expected {g.shape}"
        if u.dtype != g.dtype:
            return f"dtype mismatch: array {i} is {u.dtype}, expected {g.dtype}"
    for i, u in enumerate(update):
        if not np.isfinite(u).all():
            return f"non-finite values in array {i}"
    if max_norm is not None:
        norm = l2_norm(subtract(update, global_weights))
        if not np.isfinite(norm):
            return "non-finite update norm"
        if norm > max_norm:
            return f"norm {norm:.4g} > bound {max_norm:g}"
    return None
