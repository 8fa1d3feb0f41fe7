"""DP-FedAvg: clip each client's update, add Gaussian noise to the mean, and account (ε, δ).

McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018. Each
client's delta is clipped to L2 norm ``C``; the mean of the ``n`` clipped deltas gets noise
``N(0, (z C / n)²)`` per coordinate, so one client moves the aggregate by at most ``C / n``
plus noise. The privacy loss is tracked by ``dp-accounting``'s RDP accountant, composing one
``PoissonSampled(q, Gaussian(z))`` event per round (``Gaussian(z)`` when ``q`` is 1 or unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated.weights import Weights, l2_norm, scale

# Integer RDP orders: the fractional ones make the accountant log convergence warnings.
RDP_ORDERS = tuple(range(2, 257))


@dataclass(frozen=True)
class DPConfig:
    """Clip norm ``C`` (L2, on each client's delta), noise multiplier ``z``, and the δ to report ε at."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        from federated.errors import ConfigError

        if not (self.clip_norm > 0 and np.isfinite(self.clip_norm)):
            raise ConfigError(f"dp.clip_norm must be a positive number, got {self.clip_norm}")
        if not (self.noise_multiplier >= 0 and np.isfinite(self.noise_multiplier)):
            raise ConfigError(f"dp.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"dp.delta must be in (0, 1), got {self.delta}")


def clip(delta: Sequence[np.ndarray], clip_norm: float) -> tuple[Weights, float]:
    """``delta`` scaled to L2 norm at most ``clip_norm``, and its norm before clipping."""
    norm = l2_norm(delta)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return scale(delta, factor), norm


def noisy_mean(clipped: Sequence[Sequence[np.ndarray]], config: DPConfig, rng: np.random.Generator) -> Weights:
    """The unweighted mean of clipped deltas plus Gaussian noise of std ``z C / n``."""
    n = len(clipped)
    std = config.noise_multiplier * config.clip_norm / n
    out: Weights = []
    for layer in zip(*clipped):
        mean = np.mean(np.stack(layer).astype(np.float64), axis=0)
        out.append((mean + rng.normal(0.0, std, size=mean.shape) if std > 0 else mean).astype(layer[0].dtype))
    return out


def epsilon(noise_multiplier: float, sampling_rates: Sequence[float], delta: float) -> float:
    """ε at ``delta`` after one round per entry of ``sampling_rates`` (RDP accountant)."""
    if not sampling_rates:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(orders=list(RDP_ORDERS))
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    rates, counts = np.unique(np.asarray(sampling_rates, dtype=np.float64), return_counts=True)
    for q, count in zip(rates, counts):
        event = gaussian if q >= 1.0 else dp_accounting.PoissonSampledDpEvent(float(q), gaussian)
        accountant.compose(event, int(count))
    return float(accountant.get_epsilon(delta))
