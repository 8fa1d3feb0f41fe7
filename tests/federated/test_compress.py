"""Update compression: reconstruction error bounds and wire sizes."""

from __future__ import annotations

import numpy as np
import pytest

from federated.compress import compress, quantize_8bit, top_k


def test_8bit_quantization_error_is_half_a_step_and_bytes_are_a_quarter() -> None:
    rng = np.random.default_rng(0)
    delta = [rng.normal(size=(50, 20)).astype(np.float32), rng.normal(size=7).astype(np.float32)]
    rec, nbytes = quantize_8bit(delta)
    for d, r in zip(delta, rec):
        step = (d.max() - d.min()) / 255
        assert np.max(np.abs(d - r)) <= step / 2 + 1e-6
    assert nbytes == 1000 + 8 + 7 + 8
    assert compress(delta, "none")[1] == 4 * 1007


def test_top_k_keeps_the_largest_magnitudes() -> None:
    delta = [np.array([0.1, -5.0, 0.2], np.float32), np.array([[3.0, -0.05]], np.float32)]
    rec, nbytes = top_k(delta, 0.4)  # ceil(0.4 * 5) = 2 entries
    np.testing.assert_array_equal(rec[0], [0, -5.0, 0])
    np.testing.assert_array_equal(rec[1], [[3.0, 0]])
    assert nbytes == 16
    with pytest.raises(ValueError):
        top_k(delta, 0.0)
