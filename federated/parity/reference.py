"""FedAvg of the MLP in plain numpy (float64): an oracle independent of TensorFlow, Keras and TFF.

Client: ``epochs`` passes of plain SGD over batches in data order (the last batch smaller), loss the
mean softmax cross-entropy from logits. Server: ``w + server_lr · Σ n_k (w_k − w) / Σ n_k``
(weighted FedAvg; with ``server_lr = 1`` that is the weighted mean of the client models).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.parity.exchange import ParityPlan


def logits(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Forward pass of Flatten→Dense(ReLU)…→Dense; ``x`` (n, …) → (n, num_classes)."""
    h = x.reshape(x.shape[0], -1).astype(np.float64)
    layers = len(weights) // 2
    for i in range(layers):
        h = h @ weights[2 * i] + weights[2 * i + 1]
        if i < layers - 1:
            h = np.maximum(h, 0.0)
    return h


def accuracy(weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits(weights, x), axis=1) == y))


def gradients(weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Gradient of the batch-mean cross-entropy w.r.t. every weight (ReLU'(0) = 0, as in TensorFlow)."""
    layers = len(weights) // 2
    acts = [x.reshape(x.shape[0], -1).astype(np.float64)]
    for i in range(layers):
        z = acts[-1] @ weights[2 * i] + weights[2 * i + 1]
        acts.append(np.maximum(z, 0.0) if i < layers - 1 else z)
    z = acts[-1] - acts[-1].max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p[np.arange(y.size), y] -= 1.0
    delta = p / y.size
    grads: list[np.ndarray] = [np.empty(0)] * len(weights)
    for i in reversed(range(layers)):
        grads[2 * i] = acts[i].T @ delta
        grads[2 * i + 1] = delta.sum(axis=0)
        if i:
            delta = (delta @ weights[2 * i].T) * (acts[i] > 0)
    return grads


def client_update(weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, lr: float, epochs: int,
                  batch_size: int) -> list[np.ndarray]:
    w = [np.array(a, dtype=np.float64) for a in weights]
    for _ in range(epochs):
        for start in range(0, y.size, batch_size):
            g = gradients(w, x[start:start + batch_size], y[start:start + batch_size])
            w = [a - lr * b for a, b in zip(w, g)]
    return w


def fedavg(plan: ParityPlan) -> list[np.ndarray]:
    """The plan's final global weights (float64), round by round in the plan's client order."""
    w = [np.array(a, dtype=np.float64) for a in plan.initial_weights]
    for ids in plan.schedule:
        total = 0.0
        step = [np.zeros_like(a) for a in w]
        for k in ids:
            x, y = plan.clients[int(k)]
            local = client_update(w, x, y, plan.client_lr, plan.epochs, plan.batch_size)
            n = float(y.size * plan.epochs)
            total += n
            step = [s + n * (a - b) for s, a, b in zip(step, local, w)]
        w = [a + plan.server_lr * s / total for a, s in zip(w, step)]
    return w
