"""Pure array math between what a user has and what the model takes.

Raw values (uint8 pixels, or an array in the same units) are normalized with the
bundle's ``(raw - mean) / std`` and, for an int8/uint8 input tensor, quantized with that
tensor's own ``scale`` and ``zero_point``. The two affine steps are fused into one, and a
uint8 input becomes a single 256-entry table lookup, so preprocessing stays a small
fraction of an invoke.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device.errors import InputError
from device.runtime.bundle import Normalization, Quantization

_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def as_batch(x: object, sample_shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """Return ``(batch, was_single)`` with ``batch.shape == (N, *sample_shape)``.

    Accepts one sample or a batch; a trailing channel of size 1 may be left out, as a
    greyscale image read from a file has none.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "uif":
        raise InputError(
            f"input dtype {arr.dtype} is not numeric; expected uint8 pixels or an int/float array"
        )
    shape = tuple(arr.shape)
    squeezed = sample_shape[:-1] if len(sample_shape) > 1 and sample_shape[-1] == 1 else None
    if shape == sample_shape:
        return arr.reshape((1, *sample_shape)), True
    if squeezed is not None and shape == squeezed:
        return arr.reshape((1, *sample_shape)), True
    if len(shape) >= 1 and shape[0] > 0 and (shape[1:] == sample_shape or (squeezed is not None and shape[1:] == squeezed)):
        return arr.reshape((shape[0], *sample_shape)), False
    expected = f"{sample_shape} or (N, {', '.join(map(str, sample_shape))})"
    if squeezed is not None:
        expected += f", or without the channel: {squeezed}"
    raise InputError(f"input has shape {shape} (rank {arr.ndim}); expected {expected}")


def check_values(batch: np.ndarray, raw_range: tuple[float, float] | None) -> None:
    """Reject non-finite values and values outside the raw range the model was trained on (``None``: any)."""
    if batch.dtype.kind == "f" and not np.isfinite(batch).all():
        bad = int(np.size(batch) - np.count_nonzero(np.isfinite(batch)))
        raise InputError(f"input holds {bad} non-finite value(s) (NaN or inf)")
    if raw_range is None or (batch.dtype == np.uint8 and raw_range == (0.0, 255.0)):
        return
    lo, hi = float(batch.min()), float(batch.max())
    if lo < raw_range[0] or hi > raw_range[1]:
        raise InputError(
            f"input values span [{lo:g}, {hi:g}] but this model takes raw values in "
            f"[{raw_range[0]:g}, {raw_range[1]:g}] (the bundle applies its own normalization)"
        )


@dataclass(frozen=True)
class InputTransform:
    """``raw -> model tensor`` as one affine map ``raw * a + b``, then round and clip if quantized.

    ``a`` and ``b`` are per channel (the last axis): arrays of length 1 or C.
    """

    a: np.ndarray
    b: np.ndarray
    dtype: np.dtype
    lut: np.ndarray | None  # uint8 raw input: 256 entries (one channel), or (256, C)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.lut is not None and raw.dtype == np.uint8:
            if self.lut.ndim == 1:
                return self.lut[raw]
            return self.lut[raw, np.arange(self.lut.shape[1])]
        y = raw.astype(np.float32) * self.a + self.b
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            y = np.clip(np.rint(y), info.min, info.max)
        return y.astype(self.dtype, copy=False)


def input_transform(
    normalization: Normalization, tensor_dtype: str, quantization: Quantization | None
) -> InputTransform:
    """Fuse normalization and the input tensor's quantization into one affine map."""
    mean = np.asarray(normalization.mean, dtype=np.float64)
    std = np.asarray(normalization.std, dtype=np.float64)
    a = 1.0 / std
    b = -mean / std
    if tensor_dtype in _QRANGE or tensor_dtype == "int16":
        if quantization is None:
            raise InputError(f"the model's {tensor_dtype} input has no quantization parameters")
        a, b = a / quantization.scale, b / quantization.scale + quantization.zero_point
    elif tensor_dtype not in ("float32", "float16"):
        raise InputError(f"unsupported input tensor dtype {tensor_dtype}")
    a, b = np.broadcast_arrays(a.astype(np.float32), b.astype(np.float32))
    dtype = np.dtype(tensor_dtype)
    transform = InputTransform(a, b, dtype, None)
    codes = np.arange(256, dtype=np.float32)
    lut = transform(codes if a.size == 1 else codes[:, None])
    return InputTransform(a, b, dtype, lut)


def dequantize(q: np.ndarray, quantization: Quantization | None) -> np.ndarray:
    """``scale * (q - zero_point)`` as float32; float tensors pass through."""
    if quantization is None or q.dtype.kind == "f":
        return q.astype(np.float32, copy=False)
    return (q.astype(np.float32) - np.float32(quantization.zero_point)) * np.float32(quantization.scale)


def output_dequantizer(tensor_dtype: str, quantization: Quantization | None) -> Callable[[np.ndarray], np.ndarray]:
    """``q -> float32`` for an output tensor: a 256-entry table for int8/uint8, identity for float32.

    The table holds exactly :func:`dequantize`'s values, one indexing op instead of three.
    """
    if tensor_dtype not in _QRANGE or quantization is None:
        return lambda out: out
    codes = np.arange(256, dtype=np.uint8)
    table = dequantize(codes.view(np.int8) if tensor_dtype == "int8" else codes, quantization)
    if tensor_dtype == "int8":
        return lambda q: table[q.view(np.uint8)]
    return lambda q: table[q]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    if logits.ndim == 1:
        z = np.exp(logits - logits.max())
        z /= z.sum()
        return z
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    z /= z.sum(axis=-1, keepdims=True)
    return z
