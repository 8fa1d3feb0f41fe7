"""The reference data profile a bundle carries for drift monitoring (the manifest's ``profile``).

Computed at export from the inputs the bundle was verified on and the probabilities LiteRT
gave on them, with the same binning devices use for their interval summaries
(:mod:`device.agent.summary`), so the service can compare the two with the population
stability index (:mod:`cloud.service.drift`). ``edgeloop cloud profile`` adds one to a bundle
exported before profiles existed, by running its own .tflite on the data it names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from device.agent.summary import Binning, SummaryAccumulator, profile_from_summary
from device.agent.verify_signature import SIGNATURE_NAME
from device.errors import BundleError
from device.runtime.bundle import parse_manifest, read_manifest_json, write_manifest_json

SPLITS = ("all", "test")


@dataclass(frozen=True)
class ProfileConfig:
    """What ``edgeloop cloud profile`` runs a bundle on: a data source, all of it or the test split that
    the bundle's training run held out (its manifest's ``source.train_config``: fractions and seed)."""

    data: str
    split: str = "all"

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("--data is required: mnist5k, digits, an .npz or .csv file, or an image folder")
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")


def reference_profile(manifest: Any, x_raw: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The profile of raw inputs ``x_raw`` (N, *input shape) on which the model gave ``probs`` (N, classes)."""
    if len(x_raw) == 0 or len(x_raw) != len(probs):
        raise ValueError(f"a profile needs N >= 1 inputs and as many outputs, got {len(x_raw)} and {len(probs)}")
    binning = Binning.for_manifest(replace(manifest, profile={}))  # a new profile owes nothing to an old one
    if binning.input_range is None:  # no declared range: bin over what the reference set spans
        lo, hi = float(np.min(x_raw)), float(np.max(x_raw))
        binning = replace(binning, input_range=(lo, hi if hi > lo else lo + 1.0))
    acc = SummaryAccumulator("reference", binning)
    acc.add_batch(np.asarray(x_raw), np.atleast_2d(np.asarray(probs, dtype=np.float64)))
    return profile_from_summary(acc.take(), binning)


def add_profile(bundle_dir: Path | str, x_raw: np.ndarray) -> dict[str, Any]:
    """Run the bundle on ``x_raw`` in LiteRT and record the profile in its manifest.

    Only the manifest's ``profile`` changes: the .tflite and every other field stay as they are
    (a v1 manifest stays v1). A signed bundle is refused, since its signature covers the manifest bytes.
    """
    from device.runtime.runtime import Runtime

    root = Path(bundle_dir)
    if (root / SIGNATURE_NAME).exists():
        raise BundleError(f"{root}: a signed bundle ({SIGNATURE_NAME}); its manifest cannot change without breaking "
                          "the signature: add the profile to the unsigned bundle and publish that")
    data = read_manifest_json(root)
    manifest = parse_manifest(data)
    probs = np.atleast_2d(Runtime(root).predict(x_raw))
    profile = reference_profile(manifest, x_raw, probs)
    write_manifest_json(root, {**data, "profile": profile})
    return profile


def reference_inputs(manifest: Any, config: ProfileConfig) -> np.ndarray:
    """The raw inputs ``config`` names, checked against the bundle's input shape; ``--data`` and
    ``--split`` are named in any error."""
    from cloud.errors import DataError
    from cloud.train.data import DataOptions, load_dataset
    from cloud.train.training import TrainConfig, make_splits

    shape = tuple(int(d) for d in manifest.input.shape)
    options = DataOptions(image_size=shape[:2], color="rgb" if shape[2] == 3 else "grayscale") \
        if len(shape) == 3 and shape[2] in (1, 3) else DataOptions()  # an image folder is read at the model's size
    try:
        if config.split == "all":
            x = load_dataset(config.data, options=options).x
        else:
            train_config = (manifest.source or {}).get("train_config")
            if not isinstance(train_config, dict):
                raise DataError("--split test needs the manifest's source.train_config (the test fraction and seed "
                                "of the training run); this bundle has none: use --split all")
            run = TrainConfig.from_json(train_config)
            x = make_splits(replace(run, data=config.data, image_size=options.image_size or run.image_size,
                                    color=options.color or run.color)).test.x
    except DataError as exc:
        message = str(exc)
        raise DataError(message if message.startswith("--") else f"--data {message}") from None
    if tuple(x.shape[1:]) != shape:
        raise DataError(f"--data {config.data}: inputs of shape {list(x.shape[1:])} do not fit the bundle's input "
                        f"shape {list(shape)}")
    return x
