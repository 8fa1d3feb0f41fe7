"""Client training in TensorFlow: a whole round of local SGD in one compiled graph call.

The only module of the package that imports TensorFlow. :class:`ClientTrainer` traces one
``tf.function`` per model (fixed input signature, so it never retraces) and runs the model
functionally (``model.stateless_call``), so there is no per-client Python, ``fit`` or variable
assignment. Two engines compute the same thing:

- ``vmap`` (dense models): the K clients' weights are stacked along a new leading axis and all
  clients take their s-th step at once: ``tf.vectorized_map`` turns the forward pass into
  batched matmuls, and the gradient of the sum of the clients' losses with respect to the
  stacked weights is every client's own gradient. One step costs about what one client's does.
- ``loop`` (any model, e.g. convolutions, which ``vectorized_map`` cannot batch over filters):
  a graph ``while`` loop over clients, and inside it over that client's steps.

A round's batches arrive as a padded index plan ``idx[K, S, B]`` into the training set with a
0/1 ``mask`` for the padding, so clients with different sizes, epochs and a last partial batch
share one graph; a client with fewer steps than ``S`` stops moving after its last one.

Client objective per batch: the mean sparse categorical cross-entropy from logits over the
batch's real samples, plus ``mu/2 ||w - w_global||²`` (FedProx); the update is plain SGD,
``w ← w - lr ∇``. :func:`train_client_naive` is the same thing written the obvious way (eager
Keras, one client at a time), kept as the oracle the fast path is tested against.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int) -> Any:
    """A registry model with weights initialised from ``seed`` (same seed, same bits)."""
    import keras

    from models.registry import get_model

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    model = get_model(name).build(tuple(input_shape), num_classes)
    if model.non_trainable_weights:
        from federated.errors import ConfigError

        raise ConfigError(f"model {name!r} has non-trainable weights (e.g. BatchNorm statistics); "
                          "the simulator averages trainable weights only")
    return model


ENGINES = ("auto", "vmap", "loop")
_DENSE_LAYERS = ("InputLayer", "Flatten", "Dense", "Reshape", "Activation", "ReLU", "Softmax")


def pick_engine(model: Any, engine: str = "auto") -> str:
    """``auto`` → ``vmap`` for models made only of dense-type layers, else ``loop``."""
    if engine not in ENGINES:
        from federated.errors import ConfigError

        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    return "vmap" if all(type(layer).__name__ in _DENSE_LAYERS for layer in model.layers) else "loop"


class ClientTrainer:
    """Runs local SGD for many clients per call; holds the training set as one tensor."""

    def __init__(self, model: Any, x_train: np.ndarray, y_train: np.ndarray, lr: float, mu: float = 0.0,
                 engine: str = "auto") -> None:
        self.model = model
        self.engine = pick_engine(model, engine)
        self.lr = float(lr)
        self.mu = float(mu)
        self.x = tf.constant(x_train, dtype=tf.float32)
        self.y = tf.constant(y_train, dtype=tf.int64)
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        w_spec = [tf.TensorSpec(s, tf.float32) for s in shapes]
        self._round = tf.function(
            self._round_impl if self.engine == "loop" else self._round_vmap,
            input_signature=[
                w_spec,
                tf.TensorSpec([None, None, None], tf.int32),
                tf.TensorSpec([None, None, None], tf.float32),
                tf.TensorSpec([None], tf.int32),
            ],
        )
        self._eval = tf.function(
            self._eval_impl,
            input_signature=[w_spec, tf.TensorSpec([None, *x_train.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int64)],
        )

    def _loss(self, weights: list[Any], xb: Any, yb: Any, mb: Any) -> Any:
        logits, _ = self.model.stateless_call(weights, [], xb, training=True)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
        return tf.reduce_sum(ce * mb) / tf.maximum(tf.reduce_sum(mb), 1.0)

    def _round_impl(self, global_w: list[Any], idx: Any, mask: Any, steps: Any) -> tuple[list[Any], Any]:
        k_clients = tf.shape(idx)[0]
        outs = [tf.TensorArray(tf.float32, size=k_clients, element_shape=w.shape) for w in global_w]
        losses = tf.TensorArray(tf.float32, size=k_clients)
        lr = tf.constant(self.lr, tf.float32)
        mu = tf.constant(self.mu, tf.float32)
        for k in tf.range(k_clients):
            w = [tf.identity(g) for g in global_w]
            loss_sum = tf.constant(0.0, tf.float32)
            for s in tf.range(steps[k]):
                xb = tf.gather(self.x, idx[k, s])
                yb = tf.gather(self.y, idx[k, s])
                with tf.GradientTape() as tape:
                    tape.watch(w)
                    loss = self._loss(w, xb, yb, mask[k, s])
                grads = tape.gradient(loss, w)
                if self.mu > 0:
                    grads = [gr + mu * (wi - g0) for gr, wi, g0 in zip(grads, w, global_w)]
                w = [wi - lr * gr for wi, gr in zip(w, grads)]
                loss_sum += loss
            outs = [ta.write(k, wi) for ta, wi in zip(outs, w)]
            losses = losses.write(k, loss_sum / tf.cast(tf.maximum(steps[k], 1), tf.float32))
        return [ta.stack() for ta in outs], losses.stack()

    def _round_vmap(self, global_w: list[Any], idx: Any, mask: Any, steps: Any) -> tuple[list[Any], Any]:
        k_clients = tf.shape(idx)[0]
        lr = tf.constant(self.lr, tf.float32)
        mu = tf.constant(self.mu, tf.float32)
        stacked = [tf.repeat(g[None], k_clients, axis=0) for g in global_w]
        loss_sum = tf.zeros([k_clients], tf.float32)

        def client_loss(args: tuple[Any, ...]) -> Any:
            *w, i, m = args
            return self._loss(list(w), tf.gather(self.x, i), tf.gather(self.y, i), m)

        for s in tf.range(tf.shape(idx)[1]):
            active = tf.cast(steps > s, tf.float32)
            with tf.GradientTape() as tape:
                tape.watch(stacked)
                losses = tf.vectorized_map(client_loss, (*stacked, idx[:, s], mask[:, s]))
                total = tf.reduce_sum(losses)
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, stacked)]
            if self.mu > 0:
                grads = [gr + mu * tf.reshape(active, [-1] + [1] * (len(g0.shape))) * (w - g0[None])
                         for gr, w, g0 in zip(grads, stacked, global_w)]
            stacked = [w - lr * gr for w, gr in zip(stacked, grads)]
            loss_sum += losses * active
        return stacked, loss_sum / tf.cast(tf.maximum(steps, 1), tf.float32)

    def train_round(self, global_weights: Sequence[np.ndarray], idx: np.ndarray, mask: np.ndarray,
                    steps: np.ndarray) -> tuple[list[list[np.ndarray]], np.ndarray]:
        """Local training of ``K`` clients from ``global_weights``.

        ``idx`` (K, S, B) int32 indexes the training set, ``mask`` (K, S, B) marks real samples,
        ``steps`` (K,) is each client's number of local steps. Returns each client's weights and
        its mean training loss over its steps.
        """
        if idx.shape[0] == 0:
            return [], np.zeros(0, np.float32)
        stacked, losses = self._round([tf.constant(w) for w in global_weights], tf.constant(idx, tf.int32),
                                      tf.constant(mask, tf.float32), tf.constant(steps, tf.int32))
        arrays = [s.numpy() for s in stacked]
        return [[a[k] for a in arrays] for k in range(idx.shape[0])], losses.numpy()

    def _eval_impl(self, weights: list[Any], x: Any, y: Any) -> tuple[Any, Any]:
        logits, _ = self.model.stateless_call(weights, [], x, training=False)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int64), y), tf.float32))
        return loss, correct

    def evaluate(self, weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 1000) -> tuple[float, float]:
        """(mean loss, accuracy) of ``weights`` on ``x``, ``y``."""
        w = [tf.constant(a) for a in weights]
        loss = correct = 0.0
        for i in range(0, len(x), batch):
            lo, co = self._eval(w, tf.constant(x[i : i + batch], tf.float32), tf.constant(y[i : i + batch], tf.int64))
            loss += float(lo)
            correct += float(co)
        return loss / len(x), correct / len(x)


def train_client_naive(model: Any, global_weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray,
                       batches: Sequence[np.ndarray], lr: float, mu: float = 0.0) -> list[np.ndarray]:
    """One client's local SGD the plain way: eager Keras, one batch (an index array into x) at a time."""
    import keras

    for var, w in zip(model.trainable_variables, global_weights):
        var.assign(w)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    anchor = [tf.constant(w) for w in global_weights]
    for b in batches:
        with tf.GradientTape() as tape:
            loss = loss_fn(y[b], model(x[b], training=True))
            if mu > 0:
                loss += mu / 2 * tf.add_n([tf.reduce_sum(tf.square(v - a)) for v, a in zip(model.trainable_variables, anchor)])
        grads = tape.gradient(loss, model.trainable_variables)
        for var, g in zip(model.trainable_variables, grads):
            var.assign_sub(lr * g)
    return [v.numpy() for v in model.trainable_variables]


def compile_sgd(model: Any, lr: float) -> Any:
    """Compile ``model`` once for :func:`train_client_keras_fit` (plain SGD, cross-entropy from logits)."""
    import keras

    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def train_client_keras_fit(model: Any, global_weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray,
                           epoch_orders: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """One client trained with ``model.fit`` on a model from :func:`compile_sgd` (the naive baseline).

    One ``fit`` epoch per entry of ``epoch_orders`` (sample order), with Keras's own shuffling off.
    """
    model.set_weights(list(global_weights))
    for order in epoch_orders:
        model.fit(x[order], y[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return [w.numpy() for w in model.trainable_weights]
