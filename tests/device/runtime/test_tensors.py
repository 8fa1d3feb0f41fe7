"""Pure per-tensor helpers: batch fitting with open dimensions, casting, sigmoid, CSV and JSON reading."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from device.errors import InputError
from device.runtime.bundle import InputSpec, Normalization
from device.runtime.inputs import read_csv, read_input
from device.runtime.tensors import InputFeed, fit_batch, sigmoid


@pytest.mark.parametrize(
    "shape, sample, single, n",
    [((20,), (20,), True, 1), ((5, 20), (20,), False, 5), ((7, 3), (-1, 3), True, 1), ((2, 9, 3), (-1, 3), False, 2),
     ((28, 28), (28, 28, 1), True, 1), ((4, 28, 28), (28, 28, 1), False, 4)],
)
def test_fit_batch(shape, sample, single, n) -> None:
    batch, was_single = fit_batch(np.zeros(shape, np.float32), sample)
    assert was_single is single and batch.shape[0] == n and batch.ndim == len(sample) + 1


@pytest.mark.parametrize("shape", [(19,), (5, 21), (0, 20), (2, 3, 20)])
def test_fit_batch_rejects(shape) -> None:
    with pytest.raises(InputError, match="expected"):
        fit_batch(np.zeros(shape, np.float32), (20,))


def test_integer_tensor_cast_is_exact_or_refused() -> None:
    feed = InputFeed.build(InputSpec(shape=(4,), dtype="int32", raw_dtype="int32", raw_range=None, name="ids"), None,
                           raw_model=True)
    np.testing.assert_array_equal(feed(np.array([1.0, 2.0, 3.0, 4.0]))[0], [[1, 2, 3, 4]])
    with pytest.raises(InputError, match="non-integer"):
        feed(np.array([1.5, 2, 3, 4]))
    with pytest.raises(InputError, match="'ids'"):
        feed(np.zeros(5))


def test_int8_normalized_input_without_quantization_is_refused() -> None:
    spec = InputSpec(shape=(4,), dtype="int32", normalization=Normalization(1.0, 2.0), name="x")
    with pytest.raises(InputError, match="cannot be normalized"):
        InputFeed.build(spec, None, raw_model=False)


def test_sigmoid_is_stable_and_exact() -> None:
    z = np.array([-1000.0, -20.0, 0.0, 3.0, 1000.0], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        got = sigmoid(z)
    with np.errstate(over="ignore"):  # the oracle's exp(1000) is inf, and 1 / inf = 0 is right
        want = 1 / (1 + np.exp(-z.astype(np.float64)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)


def test_read_csv(tmp_path: Path) -> None:
    assert read_csv(tmp_path / "a.csv", text="a,b\n1,2\n3,4\n\n").tolist() == [[1, 2], [3, 4]]
    with pytest.raises(InputError, match="row 3"):
        read_csv(tmp_path / "a.csv", text="1,2\n3,4\n5,x\n")
    with pytest.raises(InputError, match="different numbers of columns"):
        read_csv(tmp_path / "a.csv", text="1,2\n3\n")
    with pytest.raises(InputError, match="no rows"):
        read_csv(tmp_path / "a.csv", text="a,b\n")


def test_read_input_json_and_unknown(tmp_path: Path) -> None:
    specs = (InputSpec(shape=(3,), dtype="float32", name="x"),)
    assert read_input("-", specs, stdin=io.StringIO("[1, 2, 3]")).tolist() == [1, 2, 3]
    assert read_input("-", specs, stdin=io.StringIO('{"x": [[1, 2, 3]]}')).shape == (1, 3)
    with pytest.raises(InputError, match="not a rectangular array"):
        read_input("-", specs, stdin=io.StringIO("[[1, 2], [3]]"))
    with pytest.raises(InputError, match="unknown input type"):
        read_input(tmp_path / "notes.txt", specs)
