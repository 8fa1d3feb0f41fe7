"""The data's targets, fitted to the task an export is verified for: class indices for
``classification``, multi-hot rows for ``multilabel``, float values for ``regression``, one
column per model output.

Pure: a dataset in, a dataset out. A target that does not fit the task or the model's outputs is
refused with the flag to change (``--task``, ``--data``, ``--label-column``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cloud.errors import DataError
from cloud.train.data import Dataset

TASK_TARGETS = {"classification": "classes", "multilabel": "multihot", "regression": "values"}
HOW_TO_GIVE = {
    "multihot": "an .npz y of shape (N, {k}) of 0/1, or {k} CSV columns in --label-column a,b,…",
    "values": "an .npz y of shape (N,) or (N, {k}) of floats, or CSV --label-column with float values",
}


def has_targets(ds: Dataset, task: str) -> bool:
    """Whether ``ds.y`` holds the targets ``task`` is verified against (after :func:`fit_targets`)."""
    return ds.targets == TASK_TARGETS[task]


def _example(y: np.ndarray, multihot: bool = False) -> str:
    """A value of ``y`` that is not a class index (or, ``multihot``, not 0/1), for an error message."""
    flat = y.reshape(-1).astype(np.float64)
    odd = flat[~np.isin(flat, (0, 1))] if multihot else flat[(flat != np.round(flat)) | (flat < 0)]
    return f"{(odd if odd.size else flat)[0]:g}"


def _numeric(labels: tuple[str, ...]) -> np.ndarray | None:
    try:
        return np.asarray([float(v) for v in labels], dtype=np.float32)
    except ValueError:
        return None


def fit_targets(ds: Dataset, task: str, outputs: int, where: str) -> tuple[Dataset, str | None]:
    """``ds`` with ``y`` as ``task`` needs it for a model with ``outputs`` outputs, and a note saying
    what was converted or left out (None: nothing).

    ``classification``: class indices as they are. ``multilabel``: multi-hot rows with one column
    per output; class indices are taken as rows with one label each. ``regression``: float
    ``(N, outputs)``; 0/1 rows are values too, and class labels that are numbers (``"3"``,
    ``"-1"``) are their values for a single-output model. Class names for a regression model leave
    the data without targets: the export is then checked against Keras only, and the note says so.
    """
    if task not in TASK_TARGETS:
        raise ValueError(f"--task must be one of {', '.join(TASK_TARGETS)}, got {task!r}")
    data = f"--data {where}"
    pick = " (--label-column names the target columns)" if where.lower().endswith(".csv") else ""
    k = ds.target_width
    if task == "classification":
        if ds.targets == "multihot":
            raise DataError(f"{data}: holds multi-hot targets (N, {k}), not class labels: for a multi-label "
                            "model use --task multilabel")
        if ds.targets == "values":
            raise DataError(f"{data}: holds {ds.describe_targets()}, numbers that are not class labels (e.g. "
                            f"{_example(ds.y)}, not an integer 0, 1, …): a classifier cannot be verified on them; "
                            f"for float targets use --task regression{pick}")
        return ds, None
    if task == "multilabel":
        if ds.targets == "values":
            raise DataError(f"{data}: --task multilabel needs 0/1 targets, but they hold other values (e.g. "
                            f"{_example(ds.y, multihot=True)}); for float targets use --task regression")
        if ds.targets == "multihot":
            if k != outputs:
                raise DataError(f"{data}: holds {ds.describe_targets()}, but the model has {outputs} outputs "
                                f"(output i is checked against column i){pick}")
            return ds, None
        if int(ds.y.max(initial=0)) >= outputs:
            raise DataError(f"{data}: {len(ds.labels)} classes but the model has {outputs} outputs; give multi-hot "
                            f"targets: {HOW_TO_GIVE['multihot'].format(k=outputs)}")
        labels = ds.labels[:outputs] + tuple(str(i) for i in range(len(ds.labels), outputs))
        multihot = np.eye(outputs, dtype=np.int64)[ds.y]
        return (replace(ds, y=multihot, labels=labels, targets="multihot"),
                "targets: class labels, as multi-hot rows with one label each")
    # regression
    if ds.targets in ("values", "multihot"):
        if k != outputs:
            raise DataError(f"{data}: {k} regression target{'s' if k > 1 else ''} per sample "
                            f"({ds.describe_targets()}) but the model has {outputs} output{'s' if outputs > 1 else ''} "
                            f"(output i is checked against target column i){pick}")
        return replace(ds, y=ds.y.astype(np.float32).reshape(len(ds), k), targets="values"), None
    numbers = _numeric(ds.labels)
    if numbers is not None and outputs == 1:
        return (replace(ds, y=numbers[ds.y].reshape(-1, 1), targets="values"),
                "targets: the class labels' numbers, as regression values")
    why = "class names" if numbers is None else f"class labels, and the model has {outputs} outputs"
    return ds, (f"targets: none for regression (the data holds {why}): the export is checked against Keras only; "
                f"give float targets as {HOW_TO_GIVE['values'].format(k=outputs)}")
