"""Fit a trainable bundle on the device's own data, with LiteRT alone.

The bundle's ``train`` signature takes a fixed batch; the last, partial batch of an epoch is
padded and masked (``mask`` 0 on padding), so every sample counts once and padding counts
never. Data comes from an ``.npz`` (``x``, ``y``), an image folder (one subfolder per class,
named by label), the device agent's collected-data store (``store:PATH``, its labelled samples),
or any other source registered in :data:`DATA_SOURCES` under a ``scheme:`` prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.errors import BundleError, InputError
from device.fl.reweight import check_weights, trainable_spec
from device.runtime.bundle import Manifest, TrainableSpec, read_manifest, read_model_bytes
from device.runtime.images import IMAGE_SUFFIXES, read_image
from device.runtime.interpreter import load_interpreter_class


@dataclass(frozen=True)
class LocalData:
    """Raw samples ``x`` (N, *input shape) in the bundle's raw units, and class indices ``y`` (N,)."""

    x: np.ndarray
    y: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        if self.x.shape[:1] != self.y.shape or self.y.ndim != 1:
            raise InputError(f"{self.source}: x has {self.x.shape[0]} samples but y has shape {self.y.shape}")

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _load_store(path: str, manifest: Manifest) -> LocalData:
    """The labelled samples in the device agent's collected-data queue (:mod:`device.agent.collector`), read-only:
    training on them neither uploads nor drops them."""
    import json
    import sqlite3

    from device.agent.collector import decode_input

    if not Path(path).is_file():
        raise InputError(f"store:{path}: no collected-data store (the device agent's SQLite queue) there")
    try:
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM samples ORDER BY seq")]
        finally:
            db.close()
    except (sqlite3.Error, ValueError) as exc:
        raise InputError(f"store:{path}: cannot read the collected-data store ({exc})") from None
    labelled = [b for b in bodies if b.get("label") is not None]
    if not labelled:
        raise InputError(f"store:{path}: {len(bodies)} collected sample(s), none labelled; training needs labels")
    x = np.stack([decode_input(b["input"]).reshape(manifest.input.shape) for b in labelled])
    return LocalData(x, np.asarray([b["label"] for b in labelled], np.int32), f"store:{path}")


# scheme -> loader(path, manifest); "store:PATH" is the device agent's collected-data queue
DATA_SOURCES: dict[str, Callable[[str, Manifest], LocalData]] = {"store": _load_store}


def load_local_data(source: str | Path, manifest: Manifest) -> LocalData:
    """Read ``source`` (.npz, image folder, or ``scheme:...``) for ``manifest``'s input and labels."""
    text = str(source)
    scheme, sep, rest = text.partition(":")
    if sep and scheme in DATA_SOURCES:
        return DATA_SOURCES[scheme](rest, manifest)
    if sep and len(scheme) > 1 and not Path(text).exists():
        known = ", ".join(sorted(DATA_SOURCES)) or "none registered"
        raise InputError(f"{text}: unknown data source scheme {scheme!r} ({known}); give an .npz or an image folder")
    path = Path(text)
    if path.suffix == ".npz":
        return _load_npz(path, manifest)
    if path.is_dir():
        return _load_folder(path, manifest)
    raise InputError(f"{path}: no such .npz file or image folder")


def _load_npz(path: Path, manifest: Manifest) -> LocalData:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise InputError(f"{path}: needs arrays 'x' and 'y', found {', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
    except FileNotFoundError:
        raise InputError(f"{path}: no such .npz file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    shape = manifest.input.shape
    if x.shape[1:] != shape:
        if shape[-1] == 1 and x.shape[1:] == shape[:-1]:
            x = x[..., None]
        else:
            raise InputError(f"{path}: x has samples of shape {list(x.shape[1:])}, the bundle takes {list(shape)}")
    if y.dtype.kind not in "iu":
        raise InputError(f"{path}: y must hold integer class indices, got dtype {y.dtype}")
    return LocalData(x, y.astype(np.int32), str(path))


def _load_folder(root: Path, manifest: Manifest) -> LocalData:
    labels = {label: i for i, label in enumerate(manifest.output.labels)}
    xs, ys = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in labels:
            raise InputError(f"{sub}: folder name is not one of the bundle's labels ({', '.join(labels)})")
        for file in sorted(f for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            xs.append(read_image(file, manifest.input.shape))
            ys.append(labels[sub.name])
    if not xs:
        raise InputError(f"{root}: no images in class subfolders")
    return LocalData(np.stack(xs), np.asarray(ys, np.int32), str(root))


@dataclass(frozen=True)
class FitConfig:
    """Local training: epochs over the local data, shuffled by ``seed``."""

    epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class FitResult:
    """The locally trained weights (not a delta), how many samples trained them, and the mean loss."""

    weights: list[np.ndarray]
    num_samples: int
    steps: int
    loss: float


class DeviceTrainer:
    """A trainable bundle loaded in LiteRT: set weights, fit on local data, read weights back."""

    def __init__(self, bundle: Path | str, num_threads: int | None = 1) -> None:
        self.path = Path(bundle)
        self.manifest = read_manifest(self.path)
        self.spec: TrainableSpec = trainable_spec(self.manifest, self.path)
        content = read_model_bytes(self.path, self.manifest)
        interpreter_cls, self.backend = load_interpreter_class()
        try:
            self._interpreter = interpreter_cls(model_content=content, num_threads=num_threads)
            signatures = self._interpreter.get_signature_list()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{self.path}: the interpreter cannot load this model ({str(exc).strip()})") from None
        missing = [s for s in ("train", "get_weights", "set_weights") if s not in signatures]
        if missing:
            raise BundleError(f"{self.path}: the .tflite lacks the signature(s) {', '.join(missing)} its manifest promises")
        self._train = self._interpreter.get_signature_runner("train")
        self._evaluate = self._interpreter.get_signature_runner("evaluate") if "evaluate" in signatures else None
        self._names = [v.name for v in self.spec.variables]
        mean, std = self.manifest.input.normalization.mean, self.manifest.input.normalization.std
        self._mean, self._std = np.float32(mean), np.float32(std)

    @property
    def batch(self) -> int:
        return self.spec.train_batch

    def get_weights(self) -> list[np.ndarray]:
        out = self._interpreter.get_signature_runner("get_weights")()
        return [np.array(out[n]) for n in self._names]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Load ``weights`` (variable order); also resets the optimizer state."""
        arrays = check_weights(self.spec, weights)
        self._interpreter.get_signature_runner("set_weights")(**dict(zip(self._names, arrays)))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.manifest.input.raw_range
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InputError("local data holds non-finite values")
        if x.size and (float(x.min()) < lo or float(x.max()) > hi):
            raise InputError(f"local data spans [{x.min():g}, {x.max():g}]; the bundle takes raw values in [{lo:g}, {hi:g}]")
        return ((x.astype(np.float32) - self._mean) / self._std).astype(np.float32)

    def _batches(self, n: int, order: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Index and mask of each fixed-size batch; the last one padded (index 0, mask 0)."""
        b = self.batch
        out = []
        for start in range(0, n, b):
            idx = order[start : start + b]
            mask = np.ones(b, np.float32)
            if len(idx) < b:
                mask[len(idx) :] = 0.0
                idx = np.concatenate([idx, np.zeros(b - len(idx), idx.dtype)])
            out.append((idx, mask))
        return out

    def fit(self, data: LocalData, config: FitConfig = FitConfig()) -> FitResult:
        """Train ``config.epochs`` epochs from the current weights; returns the new weights."""
        if len(data) == 0:
            raise InputError(f"{data.source}: no local samples to train on")
        x, y = self.normalize(data.x), data.y.astype(np.int32)
        total, steps = 0.0, 0
        for epoch in range(config.epochs):
            order = np.random.default_rng([config.seed, epoch]).permutation(len(data))
            epoch_loss = 0.0
            for idx, mask in self._batches(len(data), order):
                loss = float(self._train(x=x[idx], y=y[idx], mask=mask)["loss"])
                epoch_loss += loss * float(mask.sum())
                steps += 1
            total = epoch_loss / len(data)
        return FitResult(self.get_weights(), len(data), steps, total)

    def evaluate(self, data: LocalData) -> tuple[float, float]:
        """``(mean loss, accuracy)`` of the current weights on ``data``."""
        if self._evaluate is None:
            raise BundleError(f"{self.path}: this trainable bundle has no 'evaluate' signature")
        if len(data) == 0:
            raise InputError(f"{data.source}: no samples to evaluate")
        x, y = self.normalize(data.x), data.y.astype(np.int32)
        loss, correct = 0.0, 0.0
        for idx, mask in self._batches(len(data), np.arange(len(data))):
            out = self._evaluate(x=x[idx], y=y[idx], mask=mask)
            loss += float(out["loss_sum"])
            correct += float(out["correct"])
        return loss / len(data), correct / len(data)
