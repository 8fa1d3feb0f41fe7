"""How much a stale update counts: a weight ``s(τ)`` in (0, 1] of its staleness ``τ``.

``τ`` is the number of server versions that passed while the client trained (0: it trained on
the current model). The three functions of Xie et al., "Asynchronous Federated Optimization"
(FedAsync, 2019), which FedBuff (Nguyen et al., AISTATS 2022) reuses:

- ``constant``: ``s(τ) = 1``;
- ``polynomial:a``: ``s(τ) = (1 + τ)^-a``;
- ``hinge:a:b``: ``s(τ) = 1`` for ``τ <= b``, else ``1 / (a (τ - b) + 1)``.

The default is ``polynomial:0.5``, ``1/√(1+τ)``: it is what the FedBuff paper runs in all its
experiments, it needs no break point tuned to the fleet (hinge's ``b`` depends on how many
versions a typical client sees pass), and it never drops an update to zero, so a slow device's
data still counts, only less. ``constant`` is for the equality check with FedAvg and for
fleets with no staleness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federated.errors import ConfigError

KINDS = ("constant", "polynomial", "hinge")
DEFAULT = "polynomial:0.5"


@dataclass(frozen=True)
class Staleness:
    """A staleness function: ``kind`` with its exponent or slope ``a`` and, for hinge, the break ``b``."""

    kind: str = "polynomial"
    a: float = 0.5
    b: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"staleness must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (self.a >= 0 and np.isfinite(self.a)):
            raise ConfigError(f"staleness parameter a must be a finite number >= 0, got {self.a}")
        if not (self.b >= 0 and np.isfinite(self.b)):
            raise ConfigError(f"staleness hinge break b must be a finite number >= 0, got {self.b}")

    def weight(self, staleness: int) -> float:
        """``s(τ)`` for ``τ = staleness >= 0`` versions."""
        if staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + staleness) ** -self.a)
        return 1.0 if staleness <= self.b else float(1.0 / (self.a * (staleness - self.b) + 1.0))

    def spec(self) -> str:
        """The string :func:`parse` reads back: ``constant``, ``polynomial:A`` or ``hinge:A:B``."""
        if self.kind == "constant":
            return "constant"
        if self.kind == "polynomial":
            return f"polynomial:{self.a:g}"
        return f"hinge:{self.a:g}:{self.b:g}"


def parse(spec: str) -> Staleness:
    """``constant`` | ``polynomial[:A]`` (default 0.5) | ``hinge[:A[:B]]`` (defaults 10, 4)."""
    kind, *params = str(spec).strip().split(":")
    if kind not in KINDS:
        raise ConfigError(f"--staleness must be constant, polynomial:A or hinge:A:B, got {spec!r}")
    limit = {"constant": 0, "polynomial": 1, "hinge": 2}[kind]
    if len(params) > limit:
        raise ConfigError(f"--staleness {kind} takes at most {limit} parameter(s), got {spec!r}")
    try:
        values = [float(p) for p in params]
    except ValueError:
        raise ConfigError(f"--staleness parameters must be numbers, got {spec!r}") from None
    if kind == "polynomial":
        return Staleness("polynomial", *(values or [0.5]))
    if kind == "hinge":
        a, b = (values + [10.0, 4.0][len(values):])[:2]
        return Staleness("hinge", a, b)
    return Staleness("constant")
