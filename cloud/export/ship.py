"""Regenerate the pretrained bundles shipped in ``models/bundles`` (``make bundles``).

Training is deterministic for a seed, and the manifests carry a fixed ``created`` stamp,
so the same seed regenerates the same bundles on the same platform. Ten real MNIST test
digits are written to ``models/examples`` for the device demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.export.exporter import ExportConfig, export_bundle, load_run
from cloud.train.training import TrainConfig, train

BUNDLES_DIR = Path(__file__).resolve().parent.parent / "models" / "bundles"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "models" / "examples"
CREATED = "2026-01-01T00:00:00Z"
MAX_BUNDLE_BYTES = 1_000_000


@dataclass(frozen=True)
class ShipConfig:
    epochs: int = 8
    seed: int = 0
    modes: tuple[str, ...] = ("int8", "float32")


def ship_bundles(config: ShipConfig, run_dir: Path, bundles_dir: Path = BUNDLES_DIR,
                 examples_dir: Path = EXAMPLES_DIR) -> list[Path]:
    train_config = TrainConfig(model="cnn", data="mnist5k", optimizer="adam", epochs=config.epochs,
                               patience=None, seed=config.seed)
    resume = (run_dir / "config.json").is_file() and not (run_dir / "model.keras").is_file()
    if not (run_dir / "model.keras").is_file():
        train(train_config, run_dir, resume=resume)
    run = load_run(run_dir)
    written = []
    for mode in config.modes:
        target = bundles_dir / f"mnist-cnn-{mode}"
        v = export_bundle(run, target, ExportConfig(mode=mode, name=f"mnist-cnn-{mode}", version="1", created=CREATED))
        size = (target / "model.tflite").stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise ValueError(f"{target}: {size} bytes is over the 1 MB limit for shipped bundles")
        print(f"{target}: {size / 1024:.1f} KiB, accuracy {100 * v.tflite_accuracy:.2f}%")
        written.append(target)
    write_examples(run.splits.test.x, run.splits.test.y, examples_dir)
    return written


def write_examples(x: np.ndarray, y: np.ndarray, out: Path) -> None:
    """The first test image of each digit as ``digit-<label>.png`` (28×28 grey, ~300 bytes each)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for label in range(10):
        i = int(np.flatnonzero(y == label)[0])
        Image.fromarray(x[i, :, :, 0]).save(out / f"digit-{label}.png", optimize=True)
