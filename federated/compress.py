"""Update compression a client applies before upload: 8-bit quantization and top-k sparsification.

Both act on the delta ``client - global`` and return what the server reconstructs together with
the bytes on the wire, so a simulation can report the effect on bytes and on accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.weights import Weights, flatten, num_bytes, unflatten

METHODS = ("none", "int8", "topk")


def quantize_8bit(delta: Sequence[np.ndarray]) -> tuple[Weights, int]:
    """Per-array affine 8-bit quantization (min/max range, round to nearest).

    Wire size: one byte per value plus two float32 (min, scale) per array. The reconstruction
    error per value is at most half a step, ``(max - min) / 510``.
    """
    out: Weights = []
    nbytes = 0
    for d in delta:
        lo, hi = (float(d.min()), float(d.max())) if d.size else (0.0, 0.0)
        step = (hi - lo) / 255.0
        if step > 0:
            q = np.clip(np.rint((d.astype(np.float64) - lo) / step), 0, 255).astype(np.uint8)
            out.append((lo + q.astype(np.float64) * step).astype(d.dtype))
        else:
            out.append(np.full_like(d, lo))
        nbytes += d.size + 8
    return out, nbytes


def top_k(delta: Sequence[np.ndarray], fraction: float) -> tuple[Weights, int]:
    """Keep the ``ceil(fraction * size)`` largest-magnitude values of the whole delta, zero the rest.

    Wire size: a 4-byte index and a 4-byte float32 value per kept entry.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}")
    flat = flatten(delta)
    k = int(np.ceil(fraction * flat.size))
    if k < flat.size:
        keep = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
        sparse = np.zeros_like(flat)
        sparse[keep] = flat[keep]
    else:
        sparse = flat
    return unflatten(sparse, delta), 8 * k


def compress(delta: Sequence[np.ndarray], method: str, topk_fraction: float = 0.1) -> tuple[Weights, int]:
    """The reconstructed delta and its wire size in bytes for ``method`` (none | int8 | topk)."""
    if method == "none":
        return [np.array(d, copy=True) for d in delta], num_bytes(delta)
    if method == "int8":
        return quantize_8bit(delta)
    if method == "topk":
        return top_k(delta, topk_fraction)
    raise ValueError(f"unknown compression {method!r}; choose one of {', '.join(METHODS)}")
