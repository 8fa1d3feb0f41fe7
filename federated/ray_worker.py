"""What runs inside a Ray worker of :mod:`federated.ray_engine`: loading the clients' data, training a chunk.

Both are plain functions (the driver wraps them with ``ray.remote``), pure in their arguments, so
a task that Ray re-runs after its worker died returns exactly what the first run would have.

- :func:`load_blocks` loads, splits and partitions the data set exactly as the local engine does
  (:func:`federated.simulate._setup`) and returns the clients' samples in blocks of consecutive
  clients, which stay in Ray's object store.
- :func:`train_chunk` trains a chunk of one round's clients with the local vectorized engine
  (:class:`federated.tf_clients.ClientTrainer`), on the samples of the blocks it was given. Each
  worker process builds the model and traces its training graph once, then reuses them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from federated.schedule import padded_plan  # noqa: E402
from federated.simulate import SimulationConfig, _setup, local_batches  # noqa: E402
from federated.tf_clients import ClientTrainer, build_model  # noqa: E402

Block = tuple[np.ndarray, np.ndarray, np.ndarray]  # (offsets (n+1,) int64, x, y): client j is rows offsets[j]:offsets[j+1]


def load_blocks(config_json: dict[str, Any], block_clients: int) -> tuple[Any, ...]:
    """``(meta, block_0, block_1, …)``: ``meta`` holds the clients' ids and sizes, the test split, the
    sample shape and class count; block ``b`` holds clients ``b*block_clients`` to ``(b+1)*block_clients - 1``."""
    s = _setup(SimulationConfig.from_json(config_json))
    meta = {"ids": list(s.ids), "sizes": np.asarray([p.size for p in s.parts], np.int64), "x_test": s.x_test,
            "y_test": s.y_test, "sample_shape": tuple(s.sample_shape), "num_classes": int(s.num_classes)}
    blocks: list[Block] = []
    for start in range(0, len(s.parts), block_clients):
        parts = s.parts[start : start + block_clients]
        rows = np.concatenate(parts)
        offsets = np.concatenate([[0], np.cumsum([p.size for p in parts])]).astype(np.int64)
        blocks.append((offsets, s.x_train[rows], s.y_train[rows]))
    return (meta, *blocks)


class ChunkTrainer(ClientTrainer):
    """A :class:`ClientTrainer` whose training set changes with every task: the chunk's samples sit in
    variables of unknown length, so the training graph is traced once per worker, not per task."""

    def __init__(self, model: Any, sample_shape: tuple[int, ...], lr: float, mu: float, engine: str) -> None:
        super().__init__(model, np.zeros((0, *sample_shape), np.float32), np.zeros(0, np.int64), lr, mu, engine)
        self._x_var = tf.Variable(self.x, shape=tf.TensorShape([None, *sample_shape]), trainable=False)
        self._y_var = tf.Variable(self.y, shape=tf.TensorShape([None]), trainable=False)

    def _round_impl(self, *args: Any) -> Any:
        return self._reading_variables(super()._round_impl, *args)

    def _round_vmap(self, *args: Any) -> Any:
        return self._reading_variables(super()._round_vmap, *args)

    def _reading_variables(self, trace: Any, *args: Any) -> Any:
        # Read the variables once per call; the graph gathers from those tensors (vectorized_map
        # cannot gather from a variable directly).
        constant_x, constant_y = self.x, self.y
        self.x, self.y = self._x_var.read_value(), self._y_var.read_value()
        try:
            return trace(*args)
        finally:
            self.x, self.y = constant_x, constant_y

    def train_on(self, global_weights: list[np.ndarray], x: np.ndarray, y: np.ndarray,
                 batches: list[list[np.ndarray]]) -> tuple[list[np.ndarray], np.ndarray]:
        """Train the clients whose ``batches`` index rows of ``x``/``y``; weights stacked per layer (K, …), losses (K,)."""
        self._x_var.assign(x)
        self._y_var.assign(y)
        idx, mask, steps = padded_plan(batches)
        stacked, losses = self._round([tf.constant(w) for w in global_weights], tf.constant(idx, tf.int32),
                                      tf.constant(mask, tf.float32), tf.constant(steps, tf.int32))
        return [s.numpy() for s in stacked], losses.numpy()


_TRAINERS: dict[tuple[Any, ...], ChunkTrainer] = {}


def _trainer(config: SimulationConfig, sample_shape: tuple[int, ...], num_classes: int, threads: int) -> ChunkTrainer:
    key = (config.model, tuple(sample_shape), num_classes, config.lr, config.server.proximal_mu, config.engine, config.seed)
    if key not in _TRAINERS:
        if not _TRAINERS:
            try:  # as many threads as the task has CPUs; only possible before TensorFlow's first op
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:
                pass
        model = build_model(config.model, sample_shape, num_classes, config.seed)
        _TRAINERS[key] = ChunkTrainer(model, tuple(sample_shape), config.lr, config.server.proximal_mu, config.engine)
    return _TRAINERS[key]


def train_chunk(job: dict[str, Any], t: int, clients: list[int], block_ids: list[int], global_weights: list[np.ndarray],
                *blocks: Block) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Round ``t``'s local training of ``clients`` (indices, in order) from ``global_weights``.

    ``blocks`` are the blocks ``block_ids`` of :func:`load_blocks` that hold these clients. Returns
    their weights stacked per layer (K, …), their mean losses (K,) and the seconds the training took.
    """
    t0 = time.perf_counter()
    config = SimulationConfig.from_json(job["config"])
    per_block = job["block_clients"]
    by_id = dict(zip(block_ids, blocks))
    xs, ys, batches, start = [], [], [], 0
    for c in clients:
        offsets, bx, by = by_id[c // per_block]
        j = c % per_block
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        xs.append(bx[lo:hi])
        ys.append(by[lo:hi])
        batches.append([start + b for b in local_batches(config, t, c, hi - lo)])
        start += hi - lo
    trainer = _trainer(config, tuple(job["sample_shape"]), job["num_classes"], job["threads"])
    stacked, losses = trainer.train_on(global_weights, np.concatenate(xs), np.concatenate(ys), batches)
    return stacked, losses, time.perf_counter() - t0
