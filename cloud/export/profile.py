"""The reference data profile a bundle carries for drift monitoring (the manifest's ``profile``).

Computed at export from the inputs the bundle was verified on and the probabilities LiteRT
gave on them, with the same binning devices use for their interval summaries
(:mod:`device.agent.summary`), so the service can compare the two with the population
stability index (:mod:`cloud.service.drift`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from device.agent.summary import Binning, SummaryAccumulator, profile_from_summary
from device.runtime.bundle import read_manifest, write_bundle


def reference_profile(manifest: Any, x_raw: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The profile of raw inputs ``x_raw`` (N, *input shape) on which the model gave ``probs`` (N, classes)."""
    if len(x_raw) == 0 or len(x_raw) != len(probs):
        raise ValueError(f"a profile needs N >= 1 inputs and as many outputs, got {len(x_raw)} and {len(probs)}")
    binning = Binning.for_manifest(manifest)
    if binning.input_range is None:  # no declared range: bin over what the reference set spans
        lo, hi = float(np.min(x_raw)), float(np.max(x_raw))
        binning = replace(binning, input_range=(lo, hi if hi > lo else lo + 1.0))
    acc = SummaryAccumulator("reference", binning)
    acc.add_batch(np.asarray(x_raw), np.atleast_2d(np.asarray(probs, dtype=np.float64)))
    return profile_from_summary(acc.take(), binning)


def add_profile(bundle_dir: Path | str, x_raw: np.ndarray) -> dict[str, Any]:
    """Run the bundle on ``x_raw`` in LiteRT and record the profile in its manifest (the .tflite is untouched)."""
    from device.runtime.runtime import Runtime

    root = Path(bundle_dir)
    manifest = read_manifest(root)
    probs = np.atleast_2d(Runtime(root).predict(x_raw))
    profile = reference_profile(manifest, x_raw, probs)
    write_bundle(root, (root / manifest.model_file).read_bytes(), replace(manifest, profile=profile))
    return profile
