"""What to export, loaded: a training run directory, a ``.keras`` file or an ``.h5`` file, plus
the data to calibrate and verify on, and what the model says about itself.

The defaults come from the model where it can say: ``Rescaling``/``Normalization`` layers mean it
takes raw values; a final softmax gives class probabilities, a sigmoid multi-label scores, a linear
layer logits (or regression values with ``--task regression``). Where it cannot, a flag says
(``--preprocess``, ``--task``, ``--labels``), and the choice is recorded in the manifest. A
declaration that makes the model's own accuracy fall to chance is refused with a hint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cloud.errors import CheckpointError, DataError, ExportVerificationError
from cloud.export.targets import fit_targets
from cloud.train.data import Dataset, load_dataset
from cloud.train.training import Splits, TrainConfig, absolute_data, make_splits, read_config

PREPROCESS_KINDS = ("none", "scale", "standardize")
TASKS = ("classification", "multilabel", "regression")
MODEL_SUFFIXES = (".keras", ".h5")
PREPROCESSING_LAYERS = ("Rescaling", "Normalization")


@dataclass(frozen=True)
class Preprocess:
    """``none`` (raw values), ``scale`` (``raw / 255``) or ``standardize`` (``(raw - mean) / std``,
    per channel where several values are given)."""

    kind: str
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.kind not in PREPROCESS_KINDS:
            raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESS_KINDS)}, got {self.kind!r}")
        if not self.mean or not self.std or not all(math.isfinite(v) for v in self.mean) or not all(
                math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"--preprocess standardize needs finite MEAN and STD > 0, got {self.mean} {self.std}")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(f"--preprocess standardize: MEAN has {len(self.mean)} channels, STD {len(self.std)}")

    @property
    def normalization(self) -> tuple[Any, Any]:
        """``(mean, std)`` as :class:`cloud.train.data.Dataset` holds it."""
        if self.kind == "none":
            return (0.0, 1.0)
        if self.kind == "scale":
            return (0.0, 255.0)
        mean = self.mean[0] if len(self.mean) == 1 else self.mean
        std = self.std[0] if len(self.std) == 1 else self.std
        return (mean, std)

    def describe(self) -> str:
        """One line for people, the values to 4 significant digits (the manifest keeps them all)."""
        if self.kind == "standardize":
            return f"standardize {describe_normalization(self.normalization)}"
        return {"none": "none (raw values)", "scale": "scale (raw / 255)"}[self.kind]


def _round(value: Any) -> str:
    """A number, or a per-channel list of them, to 4 significant digits: ``[0.1307, 0.3081]``."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return "[" + ", ".join(f"{float(v):.4g}" for v in value) + "]"
    return f"{float(value):.4g}"


def describe_normalization(normalization: tuple[Any, Any]) -> str:
    """``(raw - mean) / std`` for people, rounded to 4 significant digits."""
    mean, std = normalization
    return f"(raw - {_round(mean)}) / {_round(std)}"


def parse_preprocess(values: Sequence[str]) -> Preprocess:
    """``["none"]``, ``["scale"]`` or ``["standardize", MEAN, STD]`` with comma-separated per-channel values."""
    if not values:
        raise ValueError("--preprocess needs none, scale, or standardize MEAN STD")
    kind, rest = values[0], list(values[1:])
    if kind not in PREPROCESS_KINDS:
        raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESS_KINDS)}, got {kind!r}")
    if kind != "standardize":
        if rest:
            raise ValueError(f"--preprocess {kind} takes no values, got {' '.join(rest)}")
        return Preprocess(kind)
    if len(rest) != 2:
        raise ValueError("--preprocess standardize needs MEAN and STD (comma-separated per channel, "
                         "e.g. standardize 127.5 127.5 or standardize 123.7,116.3,103.5 58.4,57.1,57.4)")
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in rest)
    except ValueError:
        raise ValueError(f"--preprocess standardize: MEAN and STD must be numbers, got {rest[0]!r} {rest[1]!r}") from None
    return Preprocess("standardize", mean, std)


@dataclass(frozen=True)
class SourceOptions:
    """What the user says about a model to export; ``None`` everywhere: what the model and data say."""

    data: str | None = None
    labels: str | None = None  # a text file, one label per line
    preprocess: Preprocess | None = None
    task: str | None = None
    image_size: tuple[int, int] | None = None
    color: str | None = None
    label_column: str | None = None

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")


@dataclass(frozen=True)
class TrainedRun:
    """A model to export, loaded: the Keras model, a config naming its data, the data splits (with
    the declared preprocessing), and Keras' outputs on the test split.

    ``task`` and ``kind`` say what the first output means (see :mod:`device.runtime.bundle`);
    ``notes`` are the choices made on the user's behalf, one line each.
    """

    run_dir: Path
    model: Any
    config: TrainConfig
    splits: Splits
    keras_test_logits: np.ndarray
    task: str = "classification"
    kind: str = "logits"
    checkpoint_path: Path | None = None
    notes: tuple[str, ...] = ()

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_path or self.run_dir / "model.keras"


def keras_logits(model: Any, data: Dataset, batch: int = 500) -> np.ndarray:
    """The model's first output on ``data`` (normalized as the dataset says), ``(N, outputs)`` float32."""
    x = data.normalized()
    out = [model(x[i : i + batch], training=False) for i in range(0, len(x), batch)]
    return np.concatenate([np.asarray(o[0] if isinstance(o, (list, tuple)) else o) for o in out])


# -- what the model says about itself ------------------------------------------------------------


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found


def preprocessing_layers(model: Any) -> list[str]:
    """``"name (Kind)"`` of each Rescaling/Normalization layer: the model normalizes its own input."""
    return [f"{layer.name} ({type(layer).__name__})" for layer in _all_layers(model)
            if type(layer).__name__ in PREPROCESSING_LAYERS]


def _output_layer(model: Any) -> Any:
    outputs = getattr(model, "outputs", None) or []
    history = getattr(outputs[0], "_keras_history", None) if outputs else None
    layer = history[0] if history else model.layers[-1]
    if hasattr(layer, "layers") and layer.layers:  # a nested model: its own last layer
        return _output_layer(layer)
    return layer


def output_activation(model: Any) -> str:
    """The final activation: ``softmax``, ``sigmoid``, ``linear``, or another name."""
    layer = _output_layer(model)
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def task_and_kind(activation: str, task: str | None) -> tuple[str, str]:
    """What the output means: ``(task, kind)`` from the final activation and ``--task``."""
    if task is None:
        task = {"softmax": "classification", "sigmoid": "multilabel"}.get(activation, "classification")
    if task == "classification":
        if activation == "sigmoid":
            raise ValueError("the model ends in a sigmoid (independent per-label scores): use --task multilabel")
        return task, "probabilities" if activation == "softmax" else "logits"
    if task == "multilabel":
        if activation == "softmax":
            raise ValueError("the model ends in a softmax (class probabilities): use --task classification")
        return task, "scores" if activation == "sigmoid" else "logits"
    return task, "values"


def chance_threshold(y: np.ndarray) -> tuple[float, float]:
    """``(chance, threshold)``: the majority class's share, and that plus two standard errors."""
    n = max(len(y), 1)
    chance = float(np.bincount(y).max() / n) if len(y) else 0.0
    return chance, chance + 2.0 * math.sqrt(chance * (1.0 - chance) / n)


def check_not_chance(accuracy: float, y: np.ndarray, preprocess: str, model: Any) -> None:
    """Refuse a declaration under which the Keras model itself is no better than chance."""
    chance, threshold = chance_threshold(y)
    if accuracy > threshold:
        return
    own = preprocessing_layers(model)
    if own and not preprocess.startswith("none"):
        hint = f"the model normalizes its own input ({', '.join(own)}): try --preprocess none"
    elif preprocess.startswith("none"):
        hint = "try --preprocess scale, or standardize MEAN STD as the model was trained"
    else:
        hint = "check --preprocess (none, scale, or standardize MEAN STD as the model was trained) and --labels"
    raise ExportVerificationError(
        f"the Keras model itself is at chance level on the verification data with preprocessing {preprocess}: "
        f"accuracy {100 * accuracy:.2f}% on {len(y)} samples, chance {100 * chance:.2f}%; {hint}. Nothing was written.")


# -- loading -------------------------------------------------------------------------------------


def read_labels(path: str | Path) -> tuple[str, ...]:
    """One label per line; blank lines are skipped."""
    path = Path(path)
    try:
        labels = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the labels ({exc})") from None
    if not labels:
        raise DataError(f"{path}: holds no labels (one per line)")
    return labels


def _load_keras(path: Path) -> Any:
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many kinds for a bad file
        raise CheckpointError(f"{path}: cannot load this Keras model ({type(exc).__name__}: {str(exc).strip()[:300]})") from None


def _run_normalization(run_dir: Path) -> tuple[Any, Any] | None:
    """The normalization a run's model was trained with (its own data's), or None if that data is gone.

    Exporting a run with new ``--data`` must feed the model inputs on the scale it learned, not the
    new data's own statistics or none at all (a float model then sits at chance and is refused)."""
    config = read_config(run_dir)
    try:
        return load_dataset(config.data, seed=config.seed, options=config.data_options).normalization
    except (DataError, OSError, ValueError):
        return None


def load_source(path: Path | str, options: SourceOptions | None = None) -> TrainedRun:
    """Load a run directory, a ``.keras`` or an ``.h5`` file, with its data split as training split it."""
    options = options or SourceOptions()
    path = Path(path)
    notes: list[str] = []
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory (export takes a training run directory, "
                              "a .keras or an .h5 file)")
    if path.is_dir():
        config = read_config(path)
        checkpoint = path / "model.keras"
        if not checkpoint.is_file():
            raise CheckpointError(f"{checkpoint}: the run has not finished (no model.keras); resume it with --resume")
        model = _load_keras(checkpoint)
        run_dir, from_run = path, True
        overrides = {k: v for k, v in (("image_size", options.image_size), ("color", options.color),
                                       ("label_column", options.label_column)) if v is not None}
        if options.data is not None:
            overrides["data"] = absolute_data(options.data)
        config = replace(config, **overrides)
    elif path.suffix.lower() in MODEL_SUFFIXES:
        if options.data is None:
            raise DataError(f"{path}: a model file needs --data (the samples to calibrate int8 and verify the "
                            "export on: an image folder, an .npz or a .csv file)")
        model = _load_keras(path)
        checkpoint, run_dir, from_run = path, path.parent, False
        image_size, color = options.image_size, options.color
        from_model = []
        shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else ()
        if len(shape) == 3 and Path(options.data).is_dir():  # an image folder read at the model's geometry
            if image_size is None and shape[0] and shape[1]:
                image_size = (int(shape[0]), int(shape[1]))
                from_model.append("--image-size")
            if color is None and shape[2] in (1, 3):
                color = "rgb" if shape[2] == 3 else "grayscale"
                from_model.append("--color")
        config = TrainConfig(model=path.stem, data=absolute_data(options.data), image_size=image_size, color=color,
                             label_column=options.label_column)
    else:
        raise CheckpointError(f"{path}: not a training run directory, a .keras or an .h5 file")
    if isinstance(model.input_shape, list) and len(model.input_shape) != 1:
        raise ValueError(f"{path}: the model has {len(model.input_shape)} inputs; export takes single-input models")
    splits = make_splits(config)
    if splits.train.note and (options.data is not None or not from_run):
        note = splits.train.note
        for flag in [] if from_run else from_model:
            note = note.replace(f"({flag})", "(the model's input)")
        notes.append(f"data {note}")
    expected = tuple(model.input_shape[1:])
    got = splits.train.sample_shape
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
        hint = " (use --image-size HxW and --color)" if len(got) == 3 else ""
        if config.data.lower().endswith(".csv"):
            hint = " (the features are every column but the label columns: --label-column names all of them, comma-separated)"
        raise DataError(f"{config.data}: samples have shape {got} but the model takes {expected}{hint}")

    labels = read_labels(options.labels) if options.labels else None
    outputs = int(model.output_shape[-1]) if not isinstance(model.output_shape, list) else int(model.output_shape[0][-1])
    activation = output_activation(model)
    task, kind = task_and_kind(activation, options.task)
    notes.append(f"output: final activation {activation} → {kind} (task {task})"
                 + ("" if options.task else "; --task overrides"))
    fitted = [fit_targets(ds, task, outputs, config.data) for ds in (splits.train, splits.validation, splits.test)]
    splits = Splits(*(ds for ds, _ in fitted))
    if fitted[0][1]:
        notes.append(fitted[0][1])
    if labels is not None and task in ("classification", "multilabel"):  # a regression has no labels
        if len(labels) != outputs:
            raise DataError(f"{options.labels}: {len(labels)} labels but the model has {outputs} outputs")
        if task == "classification" and len(labels) < len(splits.train.labels):
            raise DataError(f"{options.labels}: {len(labels)} labels but the data has {len(splits.train.labels)} classes")
        splits = Splits(*(replace(ds, labels=labels) for ds in (splits.train, splits.validation, splits.test)))
    elif task == "classification" and len(splits.train.labels) != outputs:
        if len(splits.train.labels) > outputs:
            raise DataError(f"{config.data}: {len(splits.train.labels)} classes but the model has {outputs} outputs")
        generic = splits.train.labels + tuple(str(i) for i in range(len(splits.train.labels), outputs))
        splits = Splits(*(replace(ds, labels=generic) for ds in (splits.train, splits.validation, splits.test)))

    own = preprocessing_layers(model)
    # new data for a run, with nothing else to go by: the model's old input scale (read only when needed)
    trained_with = (_run_normalization(path) if options.preprocess is None and not own and from_run
                    and options.data is not None else None)
    if options.preprocess is not None:
        pre, why = options.preprocess, "--preprocess"
    elif own:
        pre, why = Preprocess("none"), f"the model normalizes its own input: {', '.join(own)}"
    elif from_run and options.data is None:
        pre, why = None, "as the run was trained"
    elif trained_with is not None:  # new data, the model's old input scale: normalize as the run's training data was
        splits = Splits(*(replace(ds, normalization=trained_with) for ds in (splits.train, splits.validation, splits.test)))
        pre, why = None, "as the run was trained, from its training data; --preprocess overrides"
    elif splits.train.x.dtype == np.uint8:
        pre, why = Preprocess("scale"), "uint8 data and no normalization layer in the model; --preprocess overrides"
    else:
        pre, why = Preprocess("none"), "float data and no normalization layer in the model; --preprocess overrides"
    channels = splits.train.sample_shape[-1] if splits.train.sample_shape else 1
    if pre is not None and pre.kind == "standardize" and {len(pre.mean), len(pre.std)} - {1, channels}:
        raise ValueError(f"--preprocess standardize: MEAN has {len(pre.mean)} values and STD {len(pre.std)}; "
                         f"{config.data} has {channels} channels (the last axis): give 1 or {channels} of each")
    if pre is not None:
        splits = Splits(*(replace(ds, normalization=pre.normalization)
                          for ds in (splits.train, splits.validation, splits.test)))
        described = pre.describe()
    else:
        described = describe_normalization(splits.train.normalization)
    notes.append(f"preprocessing: {described} ({why})")

    logits = keras_logits(model, splits.test)
    if task == "classification":
        check_not_chance(float((logits.argmax(axis=-1) == splits.test.y).mean()), splits.test.y, described, model)
    return TrainedRun(run_dir, model, config, splits, logits, task=task, kind=kind, checkpoint_path=checkpoint,
                      notes=tuple(notes))

