"""Server optimizers: how the global model moves toward the clients' aggregate.

Every strategy sees the pseudo-gradient ``g = global - aggregate`` (Reddi et al., "Adaptive
Federated Optimization", ICLR 2021, writes ``Δ = -g``):

- fedsgd / fedavg / fedprox: ``x ← x - η g`` (with η = 1 the new model *is* the aggregate;
  FedSGD and FedProx differ from FedAvg on the clients, not here);
- fedavgm (Hsu et al. 2019): ``v ← μ v + g``, ``x ← x - η v``;
- fedadagrad / fedadam / fedyogi (Reddi et al. 2021, Algorithm 2, no bias correction):
  ``m ← β1 m + (1-β1) Δ``, then ``v ← v + Δ²`` (Adagrad), ``v ← β2 v + (1-β2) Δ²`` (Adam),
  ``v ← v - (1-β2) Δ² sign(v - Δ²)`` (Yogi), ``x ← x + η m / (√v + τ)``, with ``v`` started at τ².
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from federated.weights import Weights

PLAIN = ("fedsgd", "fedavg", "fedprox")
ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")
STRATEGIES = (*PLAIN, "fedavgm", *ADAPTIVE)


@dataclass(frozen=True)
class ServerOptParams:
    strategy: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


def init_state(params: ServerOptParams, weights: Sequence[np.ndarray]) -> dict[str, Weights]:
    """The optimizer's slots for ``weights``: none, ``v`` (momentum) or ``m`` and ``v`` (adaptive)."""
    if params.strategy == "fedavgm":
        return {"v": [np.zeros_like(w) for w in weights]}
    if params.strategy in ADAPTIVE:
        return {"m": [np.zeros_like(w) for w in weights],
                "v": [np.full_like(w, params.tau**2) for w in weights]}
    return {}


def server_step(params: ServerOptParams, weights: Sequence[np.ndarray], aggregate: Sequence[np.ndarray],
                state: Mapping[str, Sequence[np.ndarray]]) -> tuple[Weights, dict[str, Weights]]:
    """One server update; returns new weights and new slots. Inputs are not modified."""
    s = params.strategy
    if s in PLAIN:
        return [(w - params.lr * (w - a)).astype(w.dtype) for w, a in zip(weights, aggregate)], {}
    if s == "fedavgm":
        v = [(params.momentum * v0 + (w - a)).astype(w.dtype) for v0, w, a in zip(state["v"], weights, aggregate)]
        return [(w - params.lr * vi).astype(w.dtype) for w, vi in zip(weights, v)], {"v": v}
    if s in ADAPTIVE:
        new_w: Weights = []
        new_m: Weights = []
        new_v: Weights = []
        for w, a, m0, v0 in zip(weights, aggregate, state["m"], state["v"]):
            delta = a - w
            m = params.beta1 * m0 + (1.0 - params.beta1) * delta
            d2 = delta * delta
            if s == "fedadagrad":
                v = v0 + d2
            elif s == "fedadam":
                v = params.beta2 * v0 + (1.0 - params.beta2) * d2
            else:
                v = v0 - (1.0 - params.beta2) * d2 * np.sign(v0 - d2)
            new_m.append(m.astype(w.dtype))
            new_v.append(v.astype(w.dtype))
            new_w.append((w + params.lr * m / (np.sqrt(v) + params.tau)).astype(w.dtype))
        return new_w, {"m": new_m, "v": new_v}
    raise ValueError(f"unknown strategy {s!r}; choose one of {', '.join(STRATEGIES)}")
