"""Preprocessing math against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from device.errors import InputError
from device.runtime.bundle import Normalization, Quantization
from device.runtime.preprocess import as_batch, check_values, dequantize, input_transform, softmax


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.uint8, (4, 5)),
    st.floats(0, 200),
    st.floats(1, 300),
    st.floats(1e-3, 0.1),
    st.integers(-128, 127),
)
def test_fused_int8_transform_equals_normalize_then_quantize(raw, mean, std, scale, zero_point) -> None:
    t = input_transform(Normalization(mean, std), "int8", Quantization(scale, zero_point))
    direct = np.clip(np.rint((raw.astype(np.float64) - mean) / std / scale + zero_point), -128, 127)
    got = t(raw).astype(np.int64)
    assert t(raw).dtype == np.int8
    # float32 fusion may flip a value sitting exactly on a rounding boundary by one step
    assert np.abs(got - direct).max() <= 1
    assert (got == direct).mean() > 0.9
    # the uint8 lookup table and the float path agree exactly
    assert np.array_equal(t(raw), t(raw.astype(np.float32)))


def test_float_transform_is_normalization() -> None:
    t = input_transform(Normalization(0.0, 255.0), "float32", None)
    raw = np.array([[0, 51, 255]], dtype=np.uint8)
    np.testing.assert_allclose(t(raw), [[0.0, 0.2, 1.0]], rtol=1e-6)
    assert t(raw).dtype == np.float32


def test_dequantize_and_softmax() -> None:
    q = np.array([[-128, 0, 127]], dtype=np.int8)
    np.testing.assert_allclose(dequantize(q, Quantization(0.5, 2)), [[-65.0, -1.0, 62.5]])
    p = softmax(np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]], atol=1e-6)


@pytest.mark.parametrize(
    "shape, single, n",
    [((28, 28, 1), True, 1), ((28, 28), True, 1), ((5, 28, 28, 1), False, 5), ((5, 28, 28), False, 5)],
)
def test_as_batch_accepts_samples_and_batches(shape, single, n) -> None:
    batch, was_single = as_batch(np.zeros(shape, np.uint8), (28, 28, 1))
    assert batch.shape == (n, 28, 28, 1) and was_single is single


@pytest.mark.parametrize("shape", [(28,), (27, 28), (2, 28, 28, 3), (784,), (0, 28, 28, 1), (1, 1, 28, 28, 1)])
def test_as_batch_rejects_wrong_shapes(shape) -> None:
    with pytest.raises(InputError, match="shape"):
        as_batch(np.zeros(shape, np.uint8), (28, 28, 1))


@pytest.mark.parametrize("value", [np.array(["a"] * 4), np.zeros(4, dtype=bool), np.zeros(4, dtype=complex)])
def test_as_batch_rejects_non_numeric(value) -> None:
    with pytest.raises(InputError, match="dtype"):
        as_batch(value.reshape(2, 2), (2, 2))


def test_check_values() -> None:
    with pytest.raises(InputError, match="non-finite"):
        check_values(np.array([[0.0, np.nan]]), (0.0, 255.0))
    with pytest.raises(InputError, match="raw values"):
        check_values(np.array([[0.0, 300.0]]), (0.0, 255.0))
    check_values(np.array([[0, 255]], dtype=np.uint8), (0.0, 255.0))
