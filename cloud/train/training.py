"""Train a registry model on a data source, with checkpoints that make ``--resume`` exact.

The loop is a small custom one rather than ``model.fit`` because it must (1) accumulate
gradients over micro-batches, and (2) resume from a checkpoint to exactly the weights an
uninterrupted run reaches. Each epoch's shuffle is derived from ``(seed, epoch)``, and a
checkpoint holds the weights, the optimizer's variables and the early-stopping state, so
nothing else is carried between epochs.

Run directory layout::

    RUN/config.json              the TrainConfig
    RUN/checkpoints/last.npz     after the last finished epoch: weights, optimizer variables,
                                 and (as JSON) the epoch count, history and early-stopping state
    RUN/checkpoints/best.npz     weights with the best validation loss so far
    RUN/model.keras              the final model (best weights when early stopping is on)
    RUN/metrics.json             history and test accuracy
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from cloud.errors import CheckpointError
from cloud.train.data import BUILTIN_SOURCES, DataOptions, Dataset, load_dataset, stratified_split

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop", "adagrad")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 1e-3, "rmsprop": 1e-3, "adagrad": 0.05}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; two runs with equal configs give equal weights."""

    model: str = "cnn"
    data: str = "mnist5k"
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: the optimizer's default in DEFAULT_LR
    batch_size: int = 32
    accumulate: int = 1  # effective batch = accumulate * batch_size
    epochs: int = 5
    patience: int | None = 3  # early stopping on validation loss; None turns it off
    min_delta: float = 0.0
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    image_size: tuple[int, int] | None = None  # image folders: None = the images' own size
    color: str | None = None  # image folders: rgb | grayscale; None = RGB if any image has colour
    label_column: str | None = None  # CSV: the label column(s), comma-separated; None = "label" or the last column

    def __post_init__(self) -> None:
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        _ = self.data_options  # validates image_size and color
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("batch_size", "accumulate", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")

    @property
    def data_options(self) -> DataOptions:
        return DataOptions(self.image_size, self.color, self.label_column)

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.optimizer]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Splits:
    train: Dataset
    validation: Dataset
    test: Dataset


def absolute_data(data: str, base: Path | None = None) -> str:
    """A data path as an absolute path (relative to ``base`` or the working directory); names stay names."""
    if data in BUILTIN_SOURCES:
        return data
    return str(((base or Path.cwd()) / Path(data).expanduser()).resolve())


def make_splits(config: TrainConfig) -> Splits:
    """Load ``config.data`` and split it: test first, then validation from the rest, all by seed."""
    ds = load_dataset(config.data, seed=config.seed, options=config.data_options)
    rest, test = stratified_split(ds, config.test_fraction, seed=config.seed)
    train, validation = stratified_split(rest, config.validation_fraction, seed=config.seed + 1)
    return Splits(train, validation, test)


def make_optimizer(name: str, lr: float) -> Any:
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(lr)
    if name == "momentum":
        return keras.optimizers.SGD(lr, momentum=0.9)
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.Adagrad(lr)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) only, so resume replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class Trainer:
    """Holds a model and its optimizer; ``fit`` runs epochs from the checkpoint state onwards."""

    def __init__(self, config: TrainConfig, splits: Splits) -> None:
        import keras
        import tensorflow as tf

        from models.registry import get_model

        tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(config.seed)
        self.config = config
        self.splits = splits
        self.spec = get_model(config.model)
        self.model = self.spec.build(splits.train.sample_shape, len(splits.train.labels))
        self.optimizer = make_optimizer(config.optimizer, config.lr)
        self.optimizer.build(self.model.trainable_variables)
        self.model.compile(optimizer=self.optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        self._x = {name: getattr(splits, name).normalized() for name in ("train", "validation", "test")}
        self._grad = tf.function(self._grad_impl, reduce_retracing=True)
        self._eval = tf.function(self._eval_impl, reduce_retracing=True)

    def _grad_impl(self, x: Any, y: Any) -> tuple[Any, Any, Any]:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, self.model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int64), y), tf.float32))
        return loss, grads, correct

    def _eval_impl(self, x: Any, y: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        logits = self.model(x, training=False)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int64), y), tf.float32))
        return loss, correct

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> dict[str, np.ndarray]:
        arrays = {f"w{i}": w for i, w in enumerate(self.model.get_weights())}
        arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)})
        return arrays

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        n_w = sum(1 for k in arrays if k.startswith("w"))
        n_o = sum(1 for k in arrays if k.startswith("o"))
        if n_w != len(self.model.weights) or n_o != len(self.optimizer.variables):
            raise CheckpointError(
                f"checkpoint holds {n_w} weights and {n_o} optimizer variables; "
                f"the model has {len(self.model.weights)} and {len(self.optimizer.variables)}"
            )
        self.model.set_weights([arrays[f"w{i}"] for i in range(n_w)])
        for i, var in enumerate(self.optimizer.variables):
            var.assign(arrays[f"o{i}"])

    # -- loops -------------------------------------------------------------------------------

    def train_epoch(self, epoch: int, on_batch: Callable[[int, float, float], None] | None = None) -> tuple[float, float]:
        """One epoch; returns (mean train loss, train accuracy)."""
        import tensorflow as tf

        cfg = self.config
        x, y = self._x["train"], self.splits.train.y
        order = epoch_order(len(y), cfg.seed, epoch)
        eff = cfg.batch_size * cfg.accumulate
        total_loss = total_correct = 0.0
        variables = self.model.trainable_variables
        for step, start in enumerate(range(0, len(order), eff)):
            idx = order[start : start + eff]
            acc: list[Any] | None = None
            for micro in range(0, len(idx), cfg.batch_size):
                mi = idx[micro : micro + cfg.batch_size]
                loss, grads, correct = self._grad(tf.constant(x[mi]), tf.constant(y[mi]))
                weight = len(mi) / len(idx)  # mean over the effective batch, whatever its micro-batch sizes
                scaled = grads if weight == 1.0 else [g * weight for g in grads]
                acc = scaled if acc is None else [a + s for a, s in zip(acc, scaled)]
                total_loss += float(loss) * len(mi)
                total_correct += float(correct)
            self.optimizer.apply_gradients(zip(acc, variables))
            if on_batch is not None:
                seen = min(start + eff, len(order))
                on_batch(step, total_loss / seen, total_correct / seen)
        return total_loss / len(order), total_correct / len(order)

    def evaluate(self, split: str, batch: int = 500) -> tuple[float, float]:
        """(mean loss, accuracy) on ``split``."""
        import tensorflow as tf

        x, y = self._x[split], getattr(self.splits, split).y
        loss = correct = 0.0
        for s in range(0, len(y), batch):
            lo, co = self._eval(tf.constant(x[s : s + batch]), tf.constant(y[s : s + batch]))
            loss += float(lo)
            correct += float(co)
        return loss / len(y), correct / len(y)


# -- run directory I/O ---------------------------------------------------------------------------


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_config(run_dir: Path | str) -> TrainConfig:
    """The run's config. A relative data path (runs made before paths were stored absolute) is
    resolved against the working directory, or else against the run directory."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).exists():
        raise CheckpointError(f"{run_dir}: no such file or directory")
    try:
        config = TrainConfig.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a training run directory (no config.json)") from None
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable config ({exc})") from None
    data = Path(config.data)
    relative = config.data not in BUILTIN_SOURCES and not data.is_absolute() and not data.exists()
    if relative and (Path(run_dir) / data).exists():
        config = replace(config, data=absolute_data(config.data, Path(run_dir)))
    return config


def check_model_fits(model: str, splits: Splits) -> None:
    """Raise ValueError (naming the model and the data's layout) when a registry model cannot take the
    data, or the data has no class labels to train a classifier on."""
    from models.registry import get_model

    if splits.train.targets != "classes":
        task = "multilabel" if splits.train.targets == "multihot" else "regression"
        raise ValueError(f"--data {splits.train.name} holds {splits.train.describe_targets()}; train fits classifiers "
                         f"on class labels: train your own model and export it with --data and --task {task}")
    spec = get_model(model)
    layout = splits.train.layout
    if spec.layouts and layout not in spec.layouts:
        raise ValueError(f"model {model!r} takes {' or '.join(spec.layouts)} data; {splits.train.name} holds "
                         f"{layout}s of shape {splits.train.sample_shape}")


@dataclass
class _State:
    epoch: int = 0  # epochs finished
    history: list[dict[str, float]] | None = None
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    wait: int = 0
    stopped_early: bool = False


def train(
    config: TrainConfig,
    run_dir: Path | str,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    announce: Callable[[Splits], None] | None = None,
) -> dict[str, Any]:
    """Train into ``run_dir`` and return the metrics; ``resume`` continues from its checkpoint.

    The model name and the data are checked before anything is written: a bad input leaves no
    directory behind. ``announce(splits)`` is called once they are. ``stop_after`` ends the
    process's work after that many epochs (as a kill would, but cleanly); the run can then be resumed.
    """
    from models.registry import get_model

    config = replace(config, data=absolute_data(config.data))
    get_model(config.model)  # KeyError naming the known models
    run = Path(run_dir)
    ckpt = run / "checkpoints"
    state = _State(history=[])
    if resume:
        if not (run / "config.json").is_file():
            raise CheckpointError(f"{run}: nothing to resume (not a training run directory: no config.json)")
        saved = read_config(run)
        saved = replace(saved, data=absolute_data(saved.data, run))
        if saved != config:
            diff = {k: (getattr(saved, k), getattr(config, k)) for k in asdict(config) if getattr(saved, k) != getattr(config, k)}
            raise CheckpointError(f"{run}: cannot resume with a different config; changed (saved, given): {diff}")
        if not (ckpt / "last.npz").is_file():
            raise CheckpointError(f"{run}: nothing to resume (no finished epoch in {ckpt})")
        last = _load_npz(ckpt / "last.npz")
        state = _State(**json.loads(str(last.pop("state"))))
    elif (ckpt / "last.npz").exists():
        raise CheckpointError(f"{run}: already holds a training run; pass --resume to continue it, or use a new --out")
    splits = make_splits(config)
    check_model_fits(config.model, splits)
    if announce is not None:
        announce(splits)
    ckpt.mkdir(parents=True, exist_ok=True)
    _atomic_json(run / "config.json", asdict(config))

    trainer = Trainer(config, splits)
    if resume:
        trainer.set_state(last)

    reporter = _Progress(config, progress, len(splits.train))
    with reporter:
        for epoch in range(state.epoch, config.epochs):
            if state.stopped_early or (stop_after is not None and epoch >= stop_after):
                break
            t0 = time.perf_counter()
            loss, acc = trainer.train_epoch(epoch, reporter.batch_callback(epoch))
            val_loss, val_acc = trainer.evaluate("validation")
            row = {"epoch": epoch + 1, "loss": loss, "accuracy": acc, "val_loss": val_loss,
                   "val_accuracy": val_acc, "seconds": time.perf_counter() - t0}
            state.history.append(row)
            state.epoch = epoch + 1
            if val_loss < state.best_val_loss - config.min_delta:
                state.best_val_loss, state.best_epoch, state.wait = val_loss, epoch + 1, 0
                _atomic_npz(ckpt / "best.npz", {f"w{i}": w for i, w in enumerate(trainer.model.get_weights())})
            else:
                state.wait += 1
                if config.patience is not None and state.wait >= config.patience:
                    state.stopped_early = True
            # one file, replaced atomically: a kill leaves either the previous epoch or this one
            _atomic_npz(ckpt / "last.npz", {**trainer.get_state(), "state": np.array(json.dumps(asdict(state)))})
            reporter.epoch_done(row, state)

    finished = state.stopped_early or state.epoch >= config.epochs
    if not finished:
        return {"finished": False, "epochs_done": state.epoch, "history": state.history}
    if config.patience is not None and (ckpt / "best.npz").is_file():
        best = _load_npz(ckpt / "best.npz")
        trainer.model.set_weights([best[f"w{i}"] for i in range(len(best))])
    test_loss, test_acc = trainer.evaluate("test")
    metrics = {
        "finished": True,
        "epochs_done": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "history": state.history,
        "samples": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        "params": int(trainer.model.count_params()),
    }
    tmp = run / "model.tmp.keras"
    trainer.model.save(tmp)
    os.replace(tmp, run / "model.keras")
    _atomic_json(run / "metrics.json", metrics)
    reporter.finished(metrics)
    return metrics


class _Progress:
    """A rich progress bar with loss/accuracy per batch, and one line per epoch."""

    def __init__(self, config: TrainConfig, enabled: bool, n_train: int) -> None:
        self.config = config
        self.enabled = enabled
        self.steps = -(-n_train // (config.batch_size * config.accumulate))
        self._progress: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def batch_callback(self, epoch: int) -> Callable[[int, float, float], None] | None:
        if self._progress is None:
            return None
        task = self._progress.add_task("train", total=self.steps, epoch=epoch + 1, epochs=self.config.epochs,
                                       loss=0.0, acc=0.0)

        def update(step: int, loss: float, acc: float) -> None:
            self._progress.update(task, completed=step + 1, loss=loss, acc=acc)
            if step + 1 == self.steps:
                self._progress.remove_task(task)

        return update

    def epoch_done(self, row: dict[str, float], state: _State) -> None:
        if not self.enabled:
            return
        note = "  (early stop)" if state.stopped_early else ""
        self._progress.console.print(
            f"epoch {row['epoch']:>3}/{self.config.epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  {row['seconds']:.1f}s{note}"
        )

    def finished(self, metrics: dict[str, Any]) -> None:
        if self.enabled:
            print(f"test accuracy {metrics['test_accuracy']:.4f} (best epoch {metrics['best_epoch']}, "
                  f"{metrics['params']:,} params)")
