"""A server's complete state, and its atomic ``.npz`` checkpoint.

The state holds everything the next round depends on: global weights, server optimizer slots,
the noise RNG's bit-generator state, the round count and the DP accounting history, plus an
``extra`` JSON dict for the caller (the simulator keeps its metrics history there) and optional
named ``extra_arrays`` (the buffered server's buffer, the asynchronous simulator's in-flight
updates; absent in older checkpoints). Restoring it and running the same rounds gives
bit-identical weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federated.errors import StateError
from federated.weights import Weights

FORMAT = 1


@dataclass(frozen=True)
class ServerState:
    weights: Weights
    optimizer: Mapping[str, Weights]
    rng_state: Mapping[str, Any]
    round: int
    dp_sampling_rates: tuple[float, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    extra_arrays: Mapping[str, Weights] = field(default_factory=dict)


def save_state(path: Path | str, state: ServerState) -> None:
    """Write ``state`` to ``path`` (.npz) through a temporary file and ``os.replace``: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {f"w{i}": w for i, w in enumerate(state.weights)}
    for slot, values in state.optimizer.items():
        arrays.update({f"opt_{slot}_{i}": v for i, v in enumerate(values)})
    names = list(state.extra_arrays)
    for j, name in enumerate(names):
        arrays.update({f"xa{j}_{i}": v for i, v in enumerate(state.extra_arrays[name])})
    meta = {
        "format": FORMAT,
        "num_weights": len(state.weights),
        "slots": sorted(state.optimizer),
        "rng_state": state.rng_state,
        "round": state.round,
        "dp_sampling_rates": list(state.dp_sampling_rates),
        "extra": state.extra,
        "extra_arrays": [[name, len(state.extra_arrays[name])] for name in names],
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: Path | str) -> ServerState:
    """Read a checkpoint written by :func:`save_state`; :class:`StateError` names what is wrong."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise StateError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT}")
            weights = [data[f"w{i}"] for i in range(meta["num_weights"])]
            optimizer = {s: [data[f"opt_{s}_{i}"] for i in range(meta["num_weights"])] for s in meta["slots"]}
            extra_arrays = {name: [data[f"xa{j}_{i}"] for i in range(count)]
                            for j, (name, count) in enumerate(meta.get("extra_arrays", []))}
    except FileNotFoundError:
        raise StateError(f"{path}: no checkpoint") from None
    except (OSError, ValueError, KeyError) as exc:
        raise StateError(f"{path}: unreadable checkpoint ({exc})") from None
    return ServerState(weights, optimizer, meta["rng_state"], int(meta["round"]),
                       tuple(float(q) for q in meta["dp_sampling_rates"]), meta["extra"], extra_arrays)
