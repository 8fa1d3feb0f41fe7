"""FedBuff: buffered asynchronous aggregation on the numpy server.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022. Clients
train from whatever model version they downloaded and send their update whenever they finish.
The server keeps each update's delta ``Δ_k = w_k - base_k`` (``base_k``: the version the client
trained from), weighted by a staleness function ``s(τ_k)`` (:mod:`federated.staleness`) of how
many versions passed meanwhile. Every ``buffer_size`` arrivals it applies the buffer through the
same :class:`federated.Server` a synchronous round uses, as if each client had sent
``w'_k = x + s(τ_k) Δ_k`` against the current model ``x``:

- ``mean`` gives ``x + Σ n_k s(τ_k) Δ_k / Σ n_k``: sample-weighted like FedAvg, and normalised by the
  sample counts, not by the staleness weights, so a buffer of stale updates really moves the model
  less (re-normalising would cancel ``s``). With every ``τ = 0`` this *is* FedAvg's weighted mean;
- ``median``, ``trimmed_mean``, ``krum``, ``multi_krum`` run on the scaled deltas (all are
  shift-invariant, so on ``w'_k`` is the same);
- DP-FedAvg clips each scaled delta ``s Δ`` to ``C`` (``s <= 1`` cannot raise a norm) and adds noise
  to the mean; validation (shape, dtype, finiteness, ``max_update_norm`` on ``||Δ||``) runs when an
  update arrives, against the version it was trained from;
- then the server optimizer (FedAvg, FedAvgM, FedAdam, …) takes its step.

A client holds at most one update in a buffer: that bounds one client's influence on an aggregate
(and DP's sensitivity to ``C / K``) however fast it is; the dispatchers do not send work to a
client whose update is waiting. Updates staler than ``max_staleness`` are refused and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from federated.errors import ConfigError, RoundRefused
from federated.server import ClientUpdate, RoundOutcome, Server, ServerConfig
from federated.staleness import DEFAULT, Staleness, parse
from federated.state import ServerState
from federated.validate import update_problem
from federated.weights import Weights, add, scale, subtract


@dataclass(frozen=True)
class BufferConfig:
    """FedBuff's knobs: ``buffer_size`` K (arrivals per server step), ``concurrency`` M (clients training
    at once; the dispatcher's), the staleness function, and the staleness beyond which updates are refused.

    ``dp_sampling_rate``: the per-step sampling probability DP accounting may assume; ``None`` accounts
    every server step without amplification by sampling (q = 1), which is what holds when who lands in
    a buffer depends on device speed and availability rather than on a random draw.
    """

    buffer_size: int = 10
    concurrency: int = 20
    staleness: str = DEFAULT
    max_staleness: int | None = None
    dp_sampling_rate: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.buffer_size, int | np.integer) and self.buffer_size >= 1):
            raise ConfigError(f"buffer_size (--buffer-size) must be an integer >= 1, got {self.buffer_size!r}")
        if not (isinstance(self.concurrency, int | np.integer) and self.concurrency >= 1):
            raise ConfigError(f"concurrency (--concurrency) must be an integer >= 1, got {self.concurrency!r}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ConfigError(f"max_staleness (--max-staleness) must be >= 0, got {self.max_staleness}")
        if self.dp_sampling_rate is not None and not 0 < self.dp_sampling_rate <= 1:
            raise ConfigError(f"dp_sampling_rate must be in (0, 1], got {self.dp_sampling_rate}")
        parse(self.staleness)

    @property
    def staleness_fn(self) -> Staleness:
        return parse(self.staleness)


@dataclass(frozen=True)
class Arrival:
    """What became of one submitted update, and the server step it completed (if any)."""

    client_id: str
    staleness: int
    weight: float
    accepted: bool
    reason: str | None = None  # why it was rejected or refused
    stale_refused: bool = False
    step: RoundOutcome | None = None  # the aggregation this arrival triggered
    step_refused: str | None = None  # the aggregation it triggered was refused (buffer dropped)


@dataclass
class _Buffered:
    client_id: str
    delta: Weights
    num_samples: int
    staleness: int
    weight: float
    metrics: Mapping[str, float] = field(default_factory=dict)


class BufferedServer:
    """A :class:`Server` that takes updates one at a time and steps every ``buffer_size`` of them."""

    def __init__(self, config: ServerConfig, buffer: BufferConfig, initial: Weights, seed: int = 0) -> None:
        if config.min_clients > buffer.buffer_size:
            raise ConfigError(f"min_clients ({config.min_clients}) cannot exceed buffer_size ({buffer.buffer_size}): "
                              "every server step would be refused")
        self.config, self.buffer_config = config, buffer
        self._server = Server(config, initial, seed=seed)
        self._staleness = buffer.staleness_fn
        self._buffer: list[_Buffered] = []
        self.counters = {"received": 0, "accepted": 0, "rejected": 0, "stale_refused": 0, "dropped_by_refused_step": 0}

    @property
    def version(self) -> int:
        """Server steps taken so far: the model version a client downloading now trains from."""
        return self._server.round

    @property
    def weights(self) -> Weights:
        return self._server.weights

    @property
    def buffered(self) -> tuple[str, ...]:
        """Clients whose update waits in the buffer, in arrival order."""
        return tuple(b.client_id for b in self._buffer)

    def epsilon(self) -> float | None:
        return self._server.epsilon()

    def submit(self, update: ClientUpdate, base_version: int, base: Sequence[np.ndarray]) -> Arrival:
        """An update of full weights trained from version ``base_version`` (whose weights are ``base``).

        Validated against ``base`` (shape, dtype, finite values, ``max_update_norm`` on ``||w - base||``).
        """
        early = self._precheck(update.client_id, update.num_samples, base_version)
        if early is not None:
            return early
        problem = update_problem(base, update.weights, self.config.max_update_norm)
        if problem is not None:
            return self._reject(update.client_id, base_version, problem)
        return self._accept(update.client_id, subtract(update.weights, base), int(update.num_samples),
                            base_version, update.metrics)

    def submit_delta(self, client_id: str, delta: Sequence[np.ndarray], num_samples: int, base_version: int,
                     metrics: Mapping[str, float] | None = None) -> Arrival:
        """An update given as its delta ``w - base`` (the simulator's form), validated the same way."""
        early = self._precheck(client_id, num_samples, base_version)
        if early is not None:
            return early
        zero = [np.zeros_like(w) for w in self._server._weights]
        problem = update_problem(zero, list(delta), self.config.max_update_norm)
        if problem is not None:
            return self._reject(client_id, base_version, problem)
        return self._accept(client_id, list(delta), int(num_samples), base_version, metrics or {})

    def _precheck(self, client_id: str, num_samples: Any, base_version: int) -> Arrival | None:
        self.counters["received"] += 1
        if not 0 <= base_version <= self.version:
            return self._reject(client_id, base_version, f"unknown model version {base_version} "
                                                         f"(the server is at {self.version})")
        if client_id in self.buffered:
            return self._reject(client_id, base_version, "already has an update waiting in this buffer")
        if not (isinstance(num_samples, int | np.integer) and num_samples > 0):
            return self._reject(client_id, base_version, f"num_samples must be a positive integer, got {num_samples!r}")
        tau = self.version - base_version
        limit = self.buffer_config.max_staleness
        if limit is not None and tau > limit:
            self.counters["stale_refused"] += 1
            return Arrival(client_id, tau, 0.0, False, f"staleness {tau} > max_staleness {limit}", stale_refused=True)
        return None

    def _reject(self, client_id: str, base_version: int, reason: str) -> Arrival:
        self.counters["rejected"] += 1
        return Arrival(client_id, max(self.version - base_version, 0), 0.0, False, reason)

    def _accept(self, client_id: str, delta: Weights, num_samples: int, base_version: int,
                metrics: Mapping[str, float]) -> Arrival:
        tau = self.version - base_version
        weight = self._staleness.weight(tau)
        self._buffer.append(_Buffered(client_id, delta, num_samples, tau, weight, dict(metrics)))
        self.counters["accepted"] += 1
        if len(self._buffer) < self.buffer_config.buffer_size:
            return Arrival(client_id, tau, weight, True)
        step, refused = self._step()
        return Arrival(client_id, tau, weight, True, step=step, step_refused=refused)

    def _step(self) -> tuple[RoundOutcome | None, str | None]:
        """Aggregate the buffer through the core server; the buffer is emptied either way."""
        current = self._server._weights
        buffer, self._buffer = self._buffer, []
        updates = [ClientUpdate(b.client_id, add(current, scale(b.delta, b.weight)), b.num_samples, b.metrics)
                   for b in buffer]
        try:
            outcome = self._server.aggregate(updates, sampling_rate=self.buffer_config.dp_sampling_rate)
        except RoundRefused as exc:
            self.counters["dropped_by_refused_step"] += len(buffer)
            return None, str(exc)
        taus = [b.staleness for b in buffer]
        metrics = {**outcome.metrics, "staleness_mean": float(np.mean(taus)), "staleness_max": float(max(taus)),
                   "staleness_weight_mean": float(np.mean([b.weight for b in buffer]))}
        return replace(outcome, metrics=metrics), None

    def state(self, extra: Mapping[str, Any] | None = None) -> ServerState:
        """The core server's state plus the buffer (deltas as ``extra_arrays``) and the counters."""
        meta = {"counters": dict(self.counters),
                "buffer": [{"client_id": b.client_id, "num_samples": b.num_samples, "staleness": b.staleness,
                            "weight": b.weight, "metrics": dict(b.metrics)} for b in self._buffer]}
        base = self._server.state(extra={**dict(extra or {}), "fedbuff": meta})
        return replace(base, extra_arrays={**dict(base.extra_arrays),
                                           **{f"fedbuff/{i}": b.delta for i, b in enumerate(self._buffer)}})

    @classmethod
    def from_state(cls, config: ServerConfig, buffer: BufferConfig, state: ServerState) -> BufferedServer:
        """A buffered server that continues exactly where ``state`` left off (buffer included)."""
        server = cls(config, buffer, state.weights)
        server._server = Server.from_state(config, state)
        meta = state.extra.get("fedbuff", {})
        server.counters.update(meta.get("counters", {}))
        server._buffer = [_Buffered(b["client_id"], state.extra_arrays[f"fedbuff/{i}"], int(b["num_samples"]),
                                    int(b["staleness"]), float(b["weight"]), b.get("metrics", {}))
                          for i, b in enumerate(meta.get("buffer", []))]
        return server
