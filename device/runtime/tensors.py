"""Per-tensor feeding: a user's array for one input tensor -> what that tensor takes, and back for outputs.

Pure numpy. One :class:`InputFeed` per input tensor holds the shape check, the raw-range check and
the fused normalization + quantization of :mod:`device.runtime.preprocess`; one :class:`OutputRead`
per output tensor holds its dequantization. ``Runtime`` strings them around one invoke.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device.errors import InputError
from device.runtime.bundle import InputSpec, OutputSpec, Quantization
from device.runtime.preprocess import check_values, dequantize, input_transform, output_dequantizer

_FLOAT_DTYPES = ("float32", "float16")


def fit_batch(arr: np.ndarray, sample_shape: tuple[int, ...], what: str = "input") -> tuple[np.ndarray, bool]:
    """``(batch, was_single)`` with ``batch.shape == (N, *sample_shape)``; -1 in ``sample_shape`` matches any size.

    One sample or a batch; a trailing channel of size 1 may be left out (a greyscale image read
    from a file has none), so ``(F,)`` and ``(N, F)`` both fit a vector model ``(F,)``.
    """
    shape = tuple(arr.shape)
    squeezed = sample_shape[:-1] if len(sample_shape) > 1 and sample_shape[-1] == 1 else None

    def matches(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
        return len(got) == len(want) and all(w == -1 or g == w for g, w in zip(got, want))

    def full(got: tuple[int, ...]) -> tuple[int, ...]:
        return got if len(got) == len(sample_shape) else (*got, 1)

    if matches(shape, sample_shape) or (squeezed is not None and matches(shape, squeezed)):
        return arr.reshape((1, *full(shape))), True
    if len(shape) >= 1 and shape[0] > 0 and (
        matches(shape[1:], sample_shape) or (squeezed is not None and matches(shape[1:], squeezed))
    ):
        return arr.reshape((shape[0], *full(shape[1:]))), False
    dims = ", ".join("?" if d == -1 else str(d) for d in sample_shape)
    expected = f"({dims}{',' if len(sample_shape) == 1 else ''}) or (N, {dims})"
    if squeezed is not None:
        expected += f", or without the channel: {squeezed}"
    raise InputError(f"{what} has shape {shape} (rank {arr.ndim}); expected {expected}")


@dataclass(frozen=True)
class InputFeed:
    """How a user's array becomes one input tensor.

    ``raw_model``: a .tflite without a manifest. An array already in the tensor's own dtype goes in
    untouched (so the result is exactly raw LiteRT's); any other numeric array is cast, or quantized
    with the tensor's own scale and zero point.
    """

    spec: InputSpec
    tensor_quantization: Quantization | None
    raw_model: bool
    transform: Callable[[np.ndarray], np.ndarray] | None  # None: a plain cast to the tensor dtype

    @classmethod
    def build(cls, spec: InputSpec, tensor_quantization: Quantization | None, raw_model: bool) -> InputFeed:
        quantized = tensor_quantization is not None and spec.dtype in ("int8", "uint8", "int16")
        transform = None
        if spec.dtype in _FLOAT_DTYPES or quantized:
            transform = input_transform(spec.normalization, spec.dtype, tensor_quantization)
        elif not raw_model and not spec.normalization.is_identity:
            raise InputError(f"input '{spec.name}': a {spec.dtype} tensor without quantization cannot be normalized")
        return cls(spec, tensor_quantization, raw_model, transform)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.spec.dtype)

    def __call__(self, x: object) -> tuple[np.ndarray, bool]:
        """Raw array -> ``(tensor-ready batch, was_single)``; raises :class:`InputError` naming the input."""
        arr = np.asarray(x)
        allowed = "uifb" if self.spec.dtype == "bool" else "uif"
        if arr.dtype.kind not in allowed:
            raise InputError(
                f"input '{self.spec.name}' has dtype {arr.dtype}, which is not numeric; expected an int or float array"
            )
        batch, single = fit_batch(arr, self.spec.shape, what=f"input '{self.spec.name}'")
        if self.raw_model and batch.dtype == self.dtype:
            return batch, single  # already what the tensor takes: exactly raw LiteRT
        check_values(batch, self.spec.raw_range)
        if self.transform is not None:
            return self.transform(batch), single
        return self._cast(batch), single

    def _cast(self, batch: np.ndarray) -> np.ndarray:
        """An integer (or bool) tensor without quantization: ids, lengths, masks. Values must fit exactly."""
        if self.dtype.kind == "b":
            return batch.astype(bool)
        if batch.dtype.kind == "f" and not np.array_equal(batch, np.rint(batch)):
            raise InputError(f"input '{self.spec.name}' is a {self.dtype.name} tensor; got non-integer values")
        info = np.iinfo(self.dtype)
        if batch.size and (batch.min() < info.min or batch.max() > info.max):
            raise InputError(f"input '{self.spec.name}' values span [{batch.min()}, {batch.max()}], outside "
                             f"{self.dtype.name} [{info.min}, {info.max}]")
        return batch.astype(self.dtype)


def output_reader(spec: OutputSpec, tensor_quantization: Quantization | None) -> Callable[[np.ndarray], np.ndarray]:
    """``tensor -> values`` for one output: dequantized with its own params if quantized, else as it is."""
    if tensor_quantization is None or spec.dtype not in ("int8", "uint8", "int16"):
        return lambda out: out
    if spec.dtype == "int16":
        return lambda out: dequantize(out, tensor_quantization)
    return output_dequantizer(spec.dtype, tensor_quantization)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, stable for large |x| (no overflow warnings)."""
    out = np.empty_like(x, dtype=np.float32)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out
