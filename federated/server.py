"""The federated server: validate client updates, aggregate them, move the global model.

Numpy in, numpy out; no TensorFlow or Flower. A round either completes (the round count
advances) or raises :class:`RoundRefused` and leaves every piece of state untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from federated import dp as dp_lib
from federated.dp import DPConfig
from federated.errors import ConfigError, RoundRefused
from federated.fedavg import weighted_mean
from federated.krum import multi_krum
from federated.median import coordinate_median
from federated.server_opt import STRATEGIES, ServerOptParams, init_state, server_step
from federated.state import ServerState
from federated.trimmed_mean import trimmed_mean
from federated.validate import update_problem
from federated.weights import Weights, add, copy, subtract, update_norms

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum")


@dataclass(frozen=True)
class ClientUpdate:
    """A client's locally trained weights (not a delta), how many samples trained them, its metrics."""

    client_id: str
    weights: Weights
    num_samples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerConfig:
    """The strategy (server optimizer), the aggregator, validation bounds and optional DP."""

    strategy: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    proximal_mu: float = 0.0
    aggregator: str = "mean"
    trim_beta: float = 0.1
    krum_byzantine: int = 1
    multi_krum_m: int | None = None
    max_update_norm: float | None = None
    min_clients: int = 1
    dp: DPConfig | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(f"aggregator must be one of {', '.join(AGGREGATORS)}, got {self.aggregator!r}")
        if not (self.server_lr > 0 and np.isfinite(self.server_lr)):
            raise ConfigError(f"server_lr must be a positive number, got {self.server_lr}")
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"server_momentum must be in [0, 1), got {self.server_momentum}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.tau > 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")
        if self.proximal_mu < 0:
            raise ConfigError(f"proximal_mu must be >= 0, got {self.proximal_mu}")
        if not 0 <= self.trim_beta < 0.5:
            raise ConfigError(f"trim_beta must be in [0, 0.5), got {self.trim_beta}")
        if self.krum_byzantine < 0:
            raise ConfigError(f"krum_byzantine must be >= 0, got {self.krum_byzantine}")
        if self.multi_krum_m is not None and self.multi_krum_m < 1:
            raise ConfigError(f"multi_krum_m must be >= 1, got {self.multi_krum_m}")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ConfigError(f"max_update_norm must be > 0, got {self.max_update_norm}")
        if self.min_clients < 1:
            raise ConfigError(f"min_clients must be >= 1, got {self.min_clients}")
        if self.dp is not None and self.aggregator != "mean":
            raise ConfigError(f"DP-FedAvg clips and averages deltas: use aggregator 'mean', not {self.aggregator!r}")

    @property
    def optimizer_params(self) -> ServerOptParams:
        return ServerOptParams(self.strategy, self.server_lr, self.server_momentum, self.beta1, self.beta2, self.tau)


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    weights: Weights
    accepted: tuple[str, ...]
    rejected: Mapping[str, str]
    metrics: Mapping[str, float]


class Server:
    """Holds the global model; :meth:`aggregate` runs one round on the updates it is given."""

    def __init__(self, config: ServerConfig, initial: Weights, seed: int = 0) -> None:
        if not initial:
            raise ConfigError("the initial global model has no weights")
        self.config = config
        self._weights = [np.array(w, copy=True) for w in initial]
        for i, w in enumerate(self._weights):
            if not np.isfinite(w).all():
                raise ConfigError(f"initial weight array {i} holds non-finite values")
        self._opt = init_state(config.optimizer_params, self._weights)
        self._rng = np.random.default_rng(seed)
        self.round = 0
        self._dp_rates: list[float] = []

    @property
    def weights(self) -> Weights:
        return copy(self._weights)

    def validate(self, updates: Sequence[ClientUpdate]) -> tuple[list[ClientUpdate], dict[str, str]]:
        """Split ``updates`` into valid ones and ``{client_id: reason}`` for the rest."""
        valid: list[ClientUpdate] = []
        rejected: dict[str, str] = {}
        seen: set[str] = set()
        for u in updates:
            if u.client_id in seen:
                rejected[u.client_id] = "duplicate update in this round"
                continue
            seen.add(u.client_id)
            if not (isinstance(u.num_samples, int | np.integer) and u.num_samples > 0):
                rejected[u.client_id] = f"num_samples must be a positive integer, got {u.num_samples!r}"
                continue
            problem = update_problem(self._weights, u.weights, self.config.max_update_norm)
            if problem is not None:
                rejected[u.client_id] = problem
            else:
                valid.append(u)
        return valid, rejected

    def aggregate(self, updates: Sequence[ClientUpdate], *, sampling_rate: float | None = None) -> RoundOutcome:
        """Validate, aggregate with the configured aggregator (and DP), apply the server optimizer.

        ``sampling_rate`` is the probability each client took part (for DP accounting). Raises
        :class:`RoundRefused` with the rejection reasons, state unchanged, when fewer than
        ``min_clients`` updates are valid or the aggregator cannot run on so few.
        """
        cfg = self.config
        valid, rejected = self.validate(updates)
        if len(valid) < cfg.min_clients:
            raise RoundRefused(
                f"round {self.round + 1}: {len(valid)} valid update(s), at least {cfg.min_clients} needed; "
                f"{len(rejected)} rejected" + (f" ({'; '.join(f'{k}: {v}' for k, v in rejected.items())})" if rejected else ""),
                rejected,
            )
        if sampling_rate is not None and not 0 < sampling_rate <= 1:
            raise ConfigError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
        norms = update_norms([u.weights for u in valid], self._weights)
        metrics: dict[str, float] = {}
        rng_before = self._rng.bit_generator.state
        try:
            if cfg.dp is not None:
                clipped = [dp_lib.clip(subtract(u.weights, self._weights), cfg.dp.clip_norm)[0] for u in valid]
                aggregate = add(self._weights, dp_lib.noisy_mean(clipped, cfg.dp, self._rng))
                metrics["clients_clipped"] = float(sum(n > cfg.dp.clip_norm for n in norms))
            elif cfg.aggregator == "mean":
                aggregate = weighted_mean([u.weights for u in valid], [u.num_samples for u in valid])
            elif cfg.aggregator == "median":
                aggregate = coordinate_median([u.weights for u in valid])
            elif cfg.aggregator == "trimmed_mean":
                aggregate = trimmed_mean([u.weights for u in valid], cfg.trim_beta)
            else:
                m = 1 if cfg.aggregator == "krum" else cfg.multi_krum_m
                aggregate, chosen = multi_krum([u.weights for u in valid], cfg.krum_byzantine, m)
                metrics["krum_selected"] = float(len(chosen))
        except ValueError as exc:
            self._rng.bit_generator.state = rng_before
            raise RoundRefused(f"round {self.round + 1}: {exc}", rejected) from None
        new_weights, new_opt = server_step(cfg.optimizer_params, self._weights, aggregate, self._opt)
        bad = [i for i, w in enumerate(new_weights) if not np.isfinite(w).all()]
        if bad:
            self._rng.bit_generator.state = rng_before
            raise RoundRefused(f"round {self.round + 1}: the server step produced non-finite values in arrays {bad}", rejected)
        self._weights, self._opt = new_weights, new_opt
        self.round += 1
        if cfg.dp is not None:
            self._dp_rates.append(1.0 if sampling_rate is None else float(sampling_rate))
            metrics["epsilon"] = dp_lib.epsilon(cfg.dp.noise_multiplier, self._dp_rates, cfg.dp.delta)
            metrics["delta"] = cfg.dp.delta
        metrics.update(
            clients_accepted=float(len(valid)),
            clients_rejected=float(len(rejected)),
            update_norm_mean=float(np.mean(norms)),
            update_norm_max=float(np.max(norms)),
        )
        return RoundOutcome(self.round, self.weights, tuple(u.client_id for u in valid), rejected, metrics)

    def epsilon(self) -> float | None:
        """ε spent so far at the configured δ, or ``None`` without DP."""
        if self.config.dp is None:
            return None
        return dp_lib.epsilon(self.config.dp.noise_multiplier, self._dp_rates, self.config.dp.delta)

    def state(self, extra: Mapping | None = None) -> ServerState:
        return ServerState(self.weights, {k: copy(v) for k, v in self._opt.items()}, self._rng.bit_generator.state,
                           self.round, tuple(self._dp_rates), dict(extra or {}))

    @classmethod
    def from_state(cls, config: ServerConfig, state: ServerState) -> Server:
        """A server that continues exactly where ``state`` left off."""
        server = cls(config, state.weights)
        expected = init_state(config.optimizer_params, state.weights)
        if set(expected) != set(state.optimizer):
            raise ConfigError(f"checkpoint has optimizer slots {sorted(state.optimizer)}, strategy {config.strategy!r} "
                              f"needs {sorted(expected)}")
        server._opt = {k: copy(v) for k, v in state.optimizer.items()}
        server._rng.bit_generator.state = dict(state.rng_state)
        server.round = int(state.round)
        server._dp_rates = list(state.dp_sampling_rates)
        return server
