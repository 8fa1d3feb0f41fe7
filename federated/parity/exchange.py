"""The exchange file between edgeloop and the TFF script: one ``.npz``, numpy only.

Keys (format ``edgeloop-tff-parity/1``): ``input_shape``, ``hidden``, ``num_classes``,
``client_lr``, ``server_lr``, ``epochs``, ``batch_size``; ``n_clients`` and per client ``x_K``
(float32, preprocessed) and ``y_K`` (int32); ``n_weights`` and ``w_I``, the initial global weights
in Keras ``trainable_weights`` order; ``schedule`` (rounds, clients per round), the client ids of
each round in order. ``tff_fedavg.py`` reads it with ``np.load`` alone and must stay in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federated.parity.errors import ParityError

FORMAT = "edgeloop-tff-parity/1"


def mlp_shapes(input_shape: tuple[int, ...], hidden: tuple[int, ...], num_classes: int) -> list[tuple[int, ...]]:
    """Shapes of a Flatten→Dense(ReLU)…→Dense MLP's weights, kernel then bias per layer."""
    sizes = [int(np.prod(input_shape)), *hidden, num_classes]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


@dataclass(frozen=True)
class ParityPlan:
    """One FedAvg run, exactly: client data, starting weights, who trains in which round, and how."""

    clients: tuple[tuple[np.ndarray, np.ndarray], ...]  # (x float32 (n, *input_shape), y int (n,))
    initial_weights: tuple[np.ndarray, ...]  # float32, Keras trainable_weights order
    schedule: np.ndarray  # int (rounds, clients_per_round)
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...]
    num_classes: int
    client_lr: float
    server_lr: float = 1.0
    epochs: int = 1
    batch_size: int = 20

    def __post_init__(self) -> None:
        if not self.clients:
            raise ParityError("clients: need at least one client dataset")
        for k, (x, y) in enumerate(self.clients):
            if x.dtype != np.float32 or x.shape[1:] != tuple(self.input_shape):
                raise ParityError(f"clients[{k}].x: expected float32 (n, {', '.join(map(str, self.input_shape))}), "
                                  f"got {x.dtype} {x.shape}")
            if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or x.shape[0] == 0:
                raise ParityError(f"clients[{k}].y: expected {x.shape[0]} (> 0) integer labels, got {y.dtype} {y.shape}")
            if y.min() < 0 or y.max() >= self.num_classes:
                raise ParityError(f"clients[{k}].y: labels must be in [0, {self.num_classes - 1}]")
        expected = mlp_shapes(tuple(self.input_shape), tuple(self.hidden), self.num_classes)
        got = [tuple(w.shape) for w in self.initial_weights]
        if got != expected or any(w.dtype != np.float32 for w in self.initial_weights):
            raise ParityError(f"initial_weights: expected float32 arrays shaped {expected}, got {got}")
        if self.schedule.ndim != 2 or self.schedule.size == 0 or not np.issubdtype(self.schedule.dtype, np.integer):
            raise ParityError(f"schedule: expected a non-empty integer (rounds, clients_per_round) array, got "
                              f"{self.schedule.dtype} {self.schedule.shape}")
        if self.schedule.min() < 0 or self.schedule.max() >= len(self.clients):
            raise ParityError(f"schedule: client ids must be in [0, {len(self.clients) - 1}]")
        if any(len(set(row.tolist())) != row.size for row in self.schedule):
            raise ParityError("schedule: a client appears twice in one round")
        if not (self.client_lr > 0 and self.server_lr > 0):
            raise ParityError(f"learning rates must be > 0, got client {self.client_lr}, server {self.server_lr}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ParityError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")

    @property
    def rounds(self) -> int:
        return int(self.schedule.shape[0])


def write_exchange(path: str | Path, plan: ParityPlan) -> Path:
    """Write ``plan`` as the TFF script's input; returns the path."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "input_shape": np.asarray(plan.input_shape, dtype=np.int64),
        "hidden": np.asarray(plan.hidden, dtype=np.int64),
        "num_classes": np.array(plan.num_classes, dtype=np.int64),
        "client_lr": np.array(plan.client_lr, dtype=np.float64),
        "server_lr": np.array(plan.server_lr, dtype=np.float64),
        "epochs": np.array(plan.epochs, dtype=np.int64),
        "batch_size": np.array(plan.batch_size, dtype=np.int64),
        "n_clients": np.array(len(plan.clients), dtype=np.int64),
        "n_weights": np.array(len(plan.initial_weights), dtype=np.int64),
        "schedule": plan.schedule.astype(np.int64),
    }
    for k, (x, y) in enumerate(plan.clients):
        arrays[f"x_{k}"], arrays[f"y_{k}"] = x, y.astype(np.int32)
    for i, w in enumerate(plan.initial_weights):
        arrays[f"w_{i}"] = w
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    return path


def read_exchange(path: str | Path) -> ParityPlan:
    """The plan stored at ``path`` (the inverse of :func:`write_exchange`)."""
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"]) != FORMAT:
            raise ParityError(f"{path}: not an exchange file of format {FORMAT}")
        n_clients, n_weights = int(z["n_clients"]), int(z["n_weights"])
        return ParityPlan(
            clients=tuple((z[f"x_{k}"], z[f"y_{k}"]) for k in range(n_clients)),
            initial_weights=tuple(z[f"w_{i}"] for i in range(n_weights)),
            schedule=z["schedule"],
            input_shape=tuple(int(d) for d in z["input_shape"]),
            hidden=tuple(int(d) for d in z["hidden"]),
            num_classes=int(z["num_classes"]),
            client_lr=float(z["client_lr"]),
            server_lr=float(z["server_lr"]),
            epochs=int(z["epochs"]),
            batch_size=int(z["batch_size"]),
        )


def read_weights(path: str | Path) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """A result file written by ``tff_fedavg.py``: the final weights ``w_I`` and its other arrays."""
    with np.load(path, allow_pickle=False) as z:
        n = int(z["n_weights"])
        weights = [z[f"w_{i}"] for i in range(n)]
        rest = {k: z[k] for k in z.files if not k.startswith("w_")}
    return weights, rest
