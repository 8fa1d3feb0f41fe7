"""Fine-tune the current model on the samples devices collected and labelled, plus the base data.

The new model is exported and verified like any other (:func:`cloud.export.exporter.export_bundle`),
then compared with the current version in LiteRT on one held-out set: the base test split
plus a held-out share of the collected samples. It is published (to ``canary``) only if
its accuracy there is not lower.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from cloud.errors import DataError
from cloud.service.db import Sample
from cloud.service.registry import Registry, RegistryError
from cloud.train.data import Dataset


@dataclass(frozen=True)
class RetrainConfig:
    channel: str = "stable"
    target_channel: str = "canary"
    epochs: int = 3
    learning_rate: float = 5e-4
    batch_size: int = 32
    holdout_fraction: float = 0.3
    oversample: int = 3  # collected samples are few: repeat them so an epoch sees them this often
    min_labelled: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.oversample < 1 or self.min_labelled < 2:
            raise ValueError("epochs, batch_size and oversample must be >= 1, min_labelled >= 2")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")


@dataclass(frozen=True)
class RetrainResult:
    base_version: int
    labelled_samples: int
    holdout_samples: int
    old_accuracy: float
    new_accuracy: float
    old_collected_accuracy: float
    new_collected_accuracy: float
    published: int | None
    bundle: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = (f"published as v{self.published}" if self.published is not None
                   else "NOT published (held-out accuracy would drop)")
        return (f"fine-tuned v{self.base_version} on {self.labelled_samples} collected labelled samples; held-out "
                f"accuracy {100 * self.old_accuracy:.2f}% → {100 * self.new_accuracy:.2f}% (collected share: "
                f"{100 * self.old_collected_accuracy:.2f}% → {100 * self.new_collected_accuracy:.2f}% on "
                f"{self.holdout_samples}); {verdict}")


def collected_dataset(sessions: sessionmaker, shape: tuple[int, ...], labels: tuple[str, ...],
                      normalization: tuple[float, float], raw_range: tuple[float, float]) -> Dataset:
    """Every labelled sample whose input has ``shape`` and dtype uint8, as a :class:`Dataset`."""
    xs, ys = [], []
    with sessions() as s:
        for data, dtype, _shape, label in s.execute(select(Sample.data, Sample.dtype, Sample.shape, Sample.label)
                                                 .where(Sample.label.is_not(None)).order_by(Sample.id)):
            if dtype != "uint8" or label >= len(labels):
                continue
            x = np.frombuffer(data, dtype=np.uint8)
            if x.size != int(np.prod(shape)):
                continue
            xs.append(x.reshape(shape))
            ys.append(label)
    if not xs:
        return Dataset("collected", np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64), labels, normalization,
                       raw_range)
    return Dataset("collected", np.stack(xs), np.asarray(ys, np.int64), labels, normalization, raw_range)


def _concat(a: Dataset, b: Dataset, name: str) -> Dataset:
    return replace(a, name=name, x=np.concatenate([a.x, b.x]), y=np.concatenate([a.y, b.y]))


def _accuracy(bundle: Path, data: Dataset) -> float:
    from device.runtime.runtime import Runtime

    if len(data) == 0:
        return float("nan")
    probs = Runtime(bundle).predict(data.x)
    return float(np.mean(np.argmax(probs, axis=-1) == data.y))


def retrain(config: RetrainConfig, sessions: sessionmaker, registry: Registry, signing_key: Any, out: Path) -> RetrainResult:
    import keras

    from cloud.export.exporter import ExportConfig, TrainedRun, export_bundle, keras_logits
    from cloud.train.training import Splits, TrainConfig, make_splits
    from device.runtime.bundle import read_manifest

    current = registry.current(config.channel)
    if current is None:
        raise RegistryError(f"nothing is published on channel {config.channel!r}")
    source = registry.source_run(current.version)
    base_config = TrainConfig.from_json(json.loads((source / "config.json").read_text()))
    splits = make_splits(base_config)
    base = splits.train
    collected = collected_dataset(sessions, base.sample_shape, base.labels, base.normalization, base.raw_range)
    if len(collected) < config.min_labelled:
        raise DataError(f"only {len(collected)} labelled samples collected; retraining needs at least {config.min_labelled}")
    order = np.random.default_rng(config.seed).permutation(len(collected))
    n_hold = max(1, int(round(config.holdout_fraction * len(collected))))
    collected_hold, collected_train = collected.subset(order[:n_hold]), collected.subset(order[n_hold:])
    heldout = _concat(splits.test, collected_hold, "heldout")
    train_set = base
    for _ in range(config.oversample):
        train_set = _concat(train_set, collected_train, "base+collected")

    keras.utils.set_random_seed(config.seed)
    model = keras.models.load_model(source / "model.keras", compile=False)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_set.normalized(), train_set.y, batch_size=config.batch_size, epochs=config.epochs,
              shuffle=True, verbose=0)

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model.save(out / "model.keras")
    (out / "config.json").write_text(json.dumps(asdict(base_config), indent=2))
    run = TrainedRun(out, model, base_config, Splits(train_set, splits.validation, heldout),
                     keras_logits(model, heldout))
    current_dir = registry.version_dir(current.version)
    manifest = read_manifest(current_dir)
    bundle = out / "bundle"
    export_bundle(run, bundle, ExportConfig(mode=manifest.mode, name=manifest.name, version="retrained",
                                            compat=manifest.compat))
    old_acc, new_acc = _accuracy(current_dir, heldout), _accuracy(bundle, heldout)
    old_c, new_c = _accuracy(current_dir, collected_hold), _accuracy(bundle, collected_hold)
    published = None
    if new_acc >= old_acc:
        release = registry.publish(bundle, config.target_channel, signing_key, accuracy=new_acc, source_run=out,
                                   parent=current.version,
                                   note=f"fine-tuned v{current.version} on {len(collected_train)} collected samples")
        published = release.version
    return RetrainResult(current.version, len(collected), n_hold, old_acc, new_acc, old_c, new_c, published, str(bundle))
