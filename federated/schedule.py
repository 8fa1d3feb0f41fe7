"""Who trains in each round and on which batches: pure, seeded functions of (seed, round, client).

Every random draw of a simulation comes from a generator seeded by ``(seed, purpose, round[,
client, epoch])``, never from a generator carried across rounds, so a resumed run draws exactly
what an uninterrupted one would, and turning one knob (say dropouts) leaves the others' draws alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_SAMPLE, _BATCH, _BYZANTINE = 0x5A, 0xB7, 0xBAD


@dataclass(frozen=True)
class RoundPlan:
    """Client indices of one round: selected (sorted), and of those the dropped, late and training ones."""

    round: int
    selected: tuple[int, ...]
    dropped: tuple[int, ...]
    late: tuple[int, ...]
    trained: tuple[int, ...]


def local_steps(num_samples: int, epochs: int, batch: int | None) -> int:
    """SGD steps a client takes: ``epochs * ceil(n / B)`` (one per epoch when ``batch`` is None: full batch)."""
    return epochs * (1 if batch is None else -(-num_samples // batch))


def round_plan(seed: int, round_: int, sizes: Sequence[int], fraction: float, *, epochs: int, batch: int | None,
               dropout: float = 0.0, straggler_prob: float = 0.0, straggler_slowdown: float = 1.0,
               deadline: float | None = None) -> RoundPlan:
    """Sample ``max(round(C K), 1)`` clients; drop each with ``dropout``; make each a straggler with
    ``straggler_prob`` (its local work takes ``straggler_slowdown`` times longer); a client whose
    simulated time (local steps, times the slowdown) exceeds ``deadline`` misses the round."""
    k = len(sizes)
    rng = np.random.default_rng([seed, _SAMPLE, round_])
    m = max(int(round(fraction * k)), 1)
    selected = np.sort(rng.choice(k, size=m, replace=False))
    drop_draw = rng.random(m)
    straggle_draw = rng.random(m)
    dropped, late, trained = [], [], []
    for i, c in enumerate(selected):
        if drop_draw[i] < dropout:
            dropped.append(int(c))
            continue
        work = local_steps(int(sizes[c]), epochs, batch) * (straggler_slowdown if straggle_draw[i] < straggler_prob else 1.0)
        (late if deadline is not None and work > deadline else trained).append(int(c))
    return RoundPlan(round_, tuple(int(c) for c in selected), tuple(dropped), tuple(late), tuple(trained))


def client_batches(seed: int, round_: int, client: int, num_samples: int, epochs: int, batch: int | None,
                   shuffle: bool = True) -> list[np.ndarray]:
    """The client's local batches in order, as positions ``0..n-1`` into its own data.

    Each epoch is a permutation (or data order when ``shuffle`` is False) cut into batches of
    ``batch``; the last, partial batch is kept as a smaller batch.
    """
    size = num_samples if batch is None else batch
    out: list[np.ndarray] = []
    for order in epoch_orders(seed, round_, client, num_samples, epochs, shuffle):
        out.extend(order[i : i + size] for i in range(0, num_samples, size))
    return out


def epoch_orders(seed: int, round_: int, client: int, num_samples: int, epochs: int, shuffle: bool = True) -> list[np.ndarray]:
    """The order a client visits its samples in each local epoch (a permutation, or data order)."""
    if not shuffle:
        return [np.arange(num_samples) for _ in range(epochs)]
    return [np.random.default_rng([seed, _BATCH, round_, client, e]).permutation(num_samples) for e in range(epochs)]


def padded_plan(batches_per_client: Sequence[Sequence[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack clients' batches (index arrays) into ``idx (K, S, B)`` int32, ``mask (K, S, B)`` float32, ``steps (K,)``."""
    k = len(batches_per_client)
    s = max((len(b) for b in batches_per_client), default=0)
    width = max((len(x) for b in batches_per_client for x in b), default=0)
    idx = np.zeros((k, max(s, 1), max(width, 1)), np.int32)
    mask = np.zeros_like(idx, dtype=np.float32)
    steps = np.zeros(k, np.int32)
    for c, batches in enumerate(batches_per_client):
        steps[c] = len(batches)
        for j, b in enumerate(batches):
            idx[c, j, : len(b)] = b
            mask[c, j, : len(b)] = 1.0
    return idx, mask, steps


def byzantine_weights(seed: int, round_: int, client: int, global_weights: Sequence[np.ndarray],
                      scale: float) -> list[np.ndarray]:
    """What a Byzantine client sends: the global model plus Gaussian noise of std ``scale``."""
    rng = np.random.default_rng([seed, _BYZANTINE, round_, client])
    return [(w + rng.normal(0.0, scale, size=w.shape)).astype(w.dtype) for w in global_weights]
