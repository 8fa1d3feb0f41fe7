"""The simulated fleet's clock: how fast each client trains, when it is online, how long an update takes.

A client's speed is a multiplier of ``steps_per_second`` drawn once per run from ``seed``:
``lognormal:SIGMA`` gives ``exp(N(0, σ²))`` (median 1), and ``slow_fraction`` F makes exactly
``round(F · clients)`` clients, chosen at random, ``slow_factor`` times slower (the two compose).
One update takes ``steps / (steps_per_second · speed)`` seconds of training plus the network time
of the model download and the update upload at ``bandwidth`` bytes/s, plus ``2 · latency_s``.

Availability is ``always`` or ``onoff:ON:OFF``: each client is online ``ON`` seconds, then offline
``OFF`` seconds, periodically, from a random phase of its own. A client is only picked while
online, and an update whose client goes offline before it is sent is lost. Everything is a pure
function of ``(seed, client, time)``, so a resumed run sees the same fleet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from federated.errors import ConfigError

_SPEED, _SLOW, _PHASE = 0x5BEED, 0x510, 0xFA5E


@dataclass(frozen=True)
class ClockConfig:
    """Device speeds, network and availability of a simulated fleet (units: steps, seconds, bytes)."""

    steps_per_second: float = 10.0
    speed: str = "equal"  # "equal" or "lognormal:SIGMA"
    slow_fraction: float = 0.0
    slow_factor: float = 10.0
    bandwidth: float = 1e6  # bytes per second, each way
    latency_s: float = 0.0
    availability: str = "always"  # or "onoff:ON_SECONDS:OFF_SECONDS"

    def __post_init__(self) -> None:
        if not (self.steps_per_second > 0 and math.isfinite(self.steps_per_second)):
            raise ConfigError(f"steps_per_second must be > 0, got {self.steps_per_second}")
        self.sigma  # noqa: B018 - parses --speed
        if not 0 <= self.slow_fraction <= 1:
            raise ConfigError(f"slow_fraction (--slow-fraction) must be in [0, 1], got {self.slow_fraction}")
        if not (self.slow_factor >= 1 and math.isfinite(self.slow_factor)):
            raise ConfigError(f"slow_factor (--slow-factor) must be >= 1, got {self.slow_factor}")
        if not self.bandwidth > 0:
            raise ConfigError(f"bandwidth (--bandwidth) must be > 0 bytes/s, got {self.bandwidth}")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ConfigError(f"latency_s must be >= 0, got {self.latency_s}")
        self.on_off  # noqa: B018 - parses --availability

    @property
    def sigma(self) -> float:
        if self.speed == "equal":
            return 0.0
        kind, _, value = self.speed.partition(":")
        try:
            sigma = float(value)
        except ValueError:
            sigma = -1.0
        if kind != "lognormal" or not (sigma >= 0 and math.isfinite(sigma)):
            raise ConfigError(f"speed (--speed) must be 'equal' or 'lognormal:SIGMA' with SIGMA >= 0, got {self.speed!r}")
        return sigma

    @property
    def on_off(self) -> tuple[float, float] | None:
        if self.availability == "always":
            return None
        parts = self.availability.split(":")
        try:
            on, off = float(parts[1]), float(parts[2])
            ok = parts[0] == "onoff" and len(parts) == 3 and on > 0 and off >= 0 and math.isfinite(on + off)
        except (IndexError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"availability (--availability) must be 'always' or 'onoff:ON:OFF' (seconds, ON > 0), "
                              f"got {self.availability!r}")
        return on, off


class Fleet:
    """The per-client speeds and availability phases of one run."""

    def __init__(self, config: ClockConfig, clients: int, seed: int) -> None:
        self.config = config
        speed = np.ones(clients)
        if config.sigma > 0:
            speed *= np.exp(np.random.default_rng([seed, _SPEED]).normal(0.0, config.sigma, size=clients))
        slow = int(round(config.slow_fraction * clients))
        self.slow = np.zeros(clients, bool)
        if slow:
            self.slow[np.random.default_rng([seed, _SLOW]).choice(clients, size=slow, replace=False)] = True
            speed[self.slow] /= config.slow_factor
        self.speed = speed
        period = config.on_off
        self.phase = (np.random.default_rng([seed, _PHASE]).uniform(0.0, sum(period), size=clients)
                      if period else np.zeros(clients))

    def duration(self, client: int, steps: int, bytes_down: int, bytes_up: int) -> float:
        """Seconds from handing ``client`` the model to receiving its update."""
        c = self.config
        return steps / (c.steps_per_second * self.speed[client]) + (bytes_down + bytes_up) / c.bandwidth + 2 * c.latency_s

    def online(self, client: int, t: float) -> bool:
        period = self.config.on_off
        if period is None:
            return True
        on, off = period
        return (t - self.phase[client]) % (on + off) < on

    def online_throughout(self, client: int, start: float, end: float) -> bool:
        """Online for the whole of ``[start, end]`` (it must not drop off mid-update)."""
        period = self.config.on_off
        if period is None:
            return True
        on, off = period
        if off == 0:
            return True
        into = (start - self.phase[client]) % (on + off)
        return into < on and end - start <= on - into

    def next_online(self, t: float, clients: np.ndarray | None = None) -> float:
        """The earliest time ``>= t`` at which one of ``clients`` (default: any) is online."""
        period = self.config.on_off
        if period is None:
            return t
        on, off = period
        cycle = on + off
        phase = self.phase if clients is None else self.phase[np.asarray(clients, dtype=int)]
        if phase.size == 0:
            return math.inf
        into = (t - phase) % cycle
        wait = float(np.where(into < on, 0.0, cycle - into).min())
        return t if wait == 0 else t + wait + 1e-9 * cycle  # just past the edge, whatever the rounding
