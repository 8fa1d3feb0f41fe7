"""Split a labelled data set among clients: IID, Dirichlet(α) label skew, McMahan shards, quantity skew.

Every scheme is seeded and deterministic. The schemes of ``SCHEMES`` assign every sample to exactly
one client; ``resample`` makes more clients than there are samples: each client draws
``samples_per_client`` distinct samples at random, so different clients may share samples. A
partition is a tuple of sorted index arrays, one per client, into the label array it was made from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated.errors import ConfigError

SCHEMES = ("iid", "dirichlet", "shards", "quantity")  # every sample exactly once
RESAMPLE = "resample"  # samples repeat across clients
ALL_SCHEMES = (*SCHEMES, RESAMPLE)
Partition = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class PartitionConfig:
    """``scheme`` and its knobs: ``alpha`` (dirichlet, quantity), ``shards_per_client`` (shards),
    ``samples_per_client`` (resample; ``None``: ``max(1, samples // clients)``)."""

    scheme: str = "iid"
    num_clients: int = 100
    alpha: float = 0.5
    shards_per_client: int = 2
    seed: int = 0
    samples_per_client: int | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ALL_SCHEMES:
            raise ConfigError(f"partition scheme must be one of {', '.join(ALL_SCHEMES)}, got {self.scheme!r}")
        if self.samples_per_client is not None and self.samples_per_client < 1:
            raise ConfigError(f"samples_per_client must be >= 1 or None, got {self.samples_per_client}")
        if self.num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1, got {self.num_clients}")
        if not (self.alpha > 0 and np.isfinite(self.alpha)):
            raise ConfigError(f"alpha must be a positive number, got {self.alpha}")
        if self.shards_per_client < 1:
            raise ConfigError(f"shards_per_client must be >= 1, got {self.shards_per_client}")


def partition(labels: np.ndarray, config: PartitionConfig) -> Partition:
    """Index arrays (sorted, int64), one per client; together they cover ``range(len(labels))`` once
    (``resample``: each client's indices are distinct, clients may share indices)."""
    labels = np.asarray(labels)
    n, k = labels.shape[0], config.num_clients
    rng = np.random.default_rng([config.seed, ALL_SCHEMES.index(config.scheme)])
    if config.scheme == RESAMPLE:
        return _resample(n, k, config.samples_per_client or max(1, n // k), rng)
    if n < k:
        raise ConfigError(f"{n} samples cannot give each of {k} clients at least one (partition resample allows repeats)")
    if config.scheme == "iid":
        parts = np.array_split(rng.permutation(n), k)
    elif config.scheme == "dirichlet":
        parts = _dirichlet(labels, k, config.alpha, rng)
    elif config.scheme == "shards":
        parts = _shards(labels, k, config.shards_per_client, rng)
    else:
        parts = _quantity(n, k, config.alpha, rng)
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)


def _dirichlet(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator, tries: int = 100) -> list[np.ndarray]:
    """Each class is split among clients in proportions drawn from Dir(α); redrawn until no client is empty."""
    for _ in range(tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(k, alpha))) * idx.size).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(p.size for p in merged) > 0:
            return merged
    raise ConfigError(f"Dirichlet(alpha={alpha}) left some of {k} clients empty in {tries} draws; "
                      "use a larger alpha or fewer clients")


def _shards(labels: np.ndarray, k: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al. 2017: cut the label-sorted data into ``k * per_client`` shards, deal them out at random.

    Shards never straddle two classes (each class gets a share of the shards proportional to its
    size, largest remainder first), so a client with 2 shards holds at most 2 classes.
    """
    num_shards = k * per_client
    if labels.size < num_shards:
        raise ConfigError(f"{labels.size} samples are too few for {num_shards} shards")
    classes, counts = np.unique(labels, return_counts=True)
    if num_shards < classes.size:
        raise ConfigError(f"{num_shards} shards cannot cover {classes.size} classes; use more clients or shards per client")
    quota = counts * num_shards / counts.sum()
    per_class = np.maximum(np.floor(quota).astype(int), 1)
    while per_class.sum() > num_shards:  # the floor of 1 can overshoot: take back from the largest
        per_class[np.argmax(per_class - quota)] -= 1
    for c in np.argsort(-(quota - per_class), kind="stable")[: num_shards - per_class.sum()]:
        per_class[c] += 1
    shards: list[np.ndarray] = []
    for cls, n_shards in zip(classes, per_class):
        shards.extend(np.array_split(rng.permutation(np.flatnonzero(labels == cls)), n_shards))
    dealt = rng.permutation(num_shards).reshape(k, per_client)
    return [np.concatenate([shards[s] for s in row]) for row in dealt]


def _quantity(n: int, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """IID labels, client sizes ``1 + Multinomial(n - k, Dir(α))``: small α gives very unequal clients."""
    sizes = 1 + rng.multinomial(n - k, rng.dirichlet(np.full(k, alpha)))
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


def _resample(n: int, k: int, per_client: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Each client holds ``per_client`` distinct samples drawn uniformly; clients overlap (for K·m > n)."""
    if per_client > n:
        raise ConfigError(f"samples_per_client {per_client} exceeds the {n} samples to draw from")
    return tuple(np.sort(rng.choice(n, size=per_client, replace=False)).astype(np.int64) for _ in range(k))


def label_histogram(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """``(clients, classes)`` sample counts."""
    labels = np.asarray(labels)
    c = int(num_classes or labels.max() + 1)
    return np.stack([np.bincount(labels[p], minlength=c) for p in parts]) if parts else np.zeros((0, c), int)


def summary(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int | None = None) -> dict:
    """Samples per client (min/median/max), classes per client, and the full histogram, JSON-ready."""
    hist = label_histogram(labels, parts, num_classes)
    sizes = hist.sum(axis=1)
    classes = (hist > 0).sum(axis=1)
    return {
        "clients": int(hist.shape[0]),
        "samples": int(sizes.sum()),
        "samples_per_client": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
        "classes_per_client": {"min": int(classes.min()), "median": float(np.median(classes)), "max": int(classes.max())},
        "histogram": hist.tolist(),
    }
