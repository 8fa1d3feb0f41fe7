"""Canary inputs for a bundle: a few real inputs and the probabilities LiteRT gives on them.

They travel in the bundle (``canary.npz``), signed, so a device can check after an update
that the model it loaded behaves as it did in the cloud.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device.agent.verify_signature import CANARY_NAME
from device.runtime.bundle import read_manifest
from device.runtime.runtime import Runtime


def canary_inputs(shape: tuple[int, ...], raw_dtype: str, raw_range: tuple[float, float], n: int, seed: int) -> np.ndarray:
    """``n`` raw inputs: real digits when the shape is MNIST's or sklearn digits', else uniform noise in range."""
    from cloud.train.data import load_dataset

    source = {(28, 28, 1): "mnist5k", (8, 8, 1): "digits"}.get(tuple(shape))
    if source is not None:
        try:
            ds = load_dataset(source, seed=seed)
            return ds.x[:n].astype(raw_dtype)
        except Exception:  # noqa: BLE001 - no data here: fall back to noise, which still checks the numerics
            pass
    rng = np.random.default_rng(seed)
    lo, hi = raw_range
    return rng.uniform(lo, hi, size=(n, *shape)).astype(raw_dtype)


def write_canary(bundle_dir: Path | str, n: int = 16, seed: int = 0, x: np.ndarray | None = None) -> Path:
    """Run the bundle on canary inputs in LiteRT and store inputs and probabilities as ``canary.npz``."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    if x is None:
        x = canary_inputs(manifest.input.shape, manifest.input.raw_dtype, manifest.input.raw_range, n, seed)
    probs = np.atleast_2d(Runtime(root).predict(x)).astype(np.float32)
    path = root / CANARY_NAME
    with open(path, "wb") as fh:
        np.savez(fh, x=x, expected=probs)
    return path
