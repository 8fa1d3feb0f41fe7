"""PNG plots of simulations and partitions (matplotlib, loaded only here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path | str, target: float | None = None,
              x: str = "auto") -> Path:
    """Test accuracy against rounds, one line per run (``{label: history}``).

    ``x="time"`` (or ``"auto"`` when every run was timed) draws two panels instead: accuracy
    against simulated seconds and against client updates received (:mod:`federated.async_sim`).
    """
    timed = all(any("sim_seconds" in r for r in h) for h in runs.values()) and bool(runs)
    if x == "time" or (x == "auto" and timed):
        return _plot_timed(runs, path, target)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, history in runs.items():
        pts = [(r["round"], r["test_accuracy"]) for r in history if r.get("test_accuracy") is not None]
        if pts:
            ax.plot(*zip(*pts), label=label, linewidth=1.4)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8, label=f"target {target:.0%}")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _plot_timed(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path | str, target: float | None) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for (key, label), ax in zip((("sim_seconds", "simulated seconds"), ("client_updates", "client updates received")), axes):
        for name, history in runs.items():
            pts = [(r[key], r["test_accuracy"]) for r in history
                   if r.get("test_accuracy") is not None and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=name, linewidth=1.4)
        if target is not None:
            ax.axhline(target, color="grey", linestyle="--", linewidth=0.8, label=f"target {target:.0%}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    return _save(plt, fig, path)


def plot_partition(histogram: np.ndarray, path: Path | str, title: str = "") -> Path:
    """Stacked bars: samples per client, coloured by label."""
    plt = _pyplot()
    hist = np.asarray(histogram)
    fig, ax = plt.subplots(figsize=(min(2 + 0.12 * hist.shape[0], 16), 4))
    bottom = np.zeros(hist.shape[0])
    cmap = plt.get_cmap("tab10")
    for c in range(hist.shape[1]):
        ax.bar(np.arange(hist.shape[0]), hist[:, c], bottom=bottom, color=cmap(c % 10), width=0.9, label=str(c))
        bottom += hist[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend(title="label", fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(plt, fig, path)


def _save(plt, fig, path: Path | str) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
