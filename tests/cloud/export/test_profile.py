"""The reference profile recorded at export: the data the bundle was verified on, summarised."""

from __future__ import annotations

import numpy as np
import pytest

from device.runtime.bundle import read_manifest
from device.runtime.runtime import Runtime


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_export_records_the_profile_of_its_verification_data(exported, loaded_run, mode: str) -> None:
    bundle = exported[mode].bundle
    profile = read_manifest(bundle).profile
    test = loaded_run.splits.test
    probs = Runtime(bundle).predict(test.x)  # the oracle: LiteRT on the same test split
    assert profile["format"] == "edgeloop-profile/1" and profile["measure"] == "psi"
    assert profile["samples"] == len(test.x) and profile["channels"] == 1 and profile["input_range"] == [0.0, 255.0]
    assert profile["mean_confidence"] == pytest.approx(float(probs.max(1).mean()), abs=1e-5)
    assert profile["confidence_hist"] == pytest.approx(
        (np.histogram(probs.max(1), bins=10, range=(0, 1))[0] / len(test.x)).tolist(), abs=1e-6)
    assert profile["input_mean"][0] == pytest.approx(float(test.x.mean()), rel=1e-5)
    assert sum(profile["input_hist"][0]) == pytest.approx(1.0, abs=1e-4)
