"""The export-modes report: a table on the terminal, JSON, and a PNG of accuracy against size."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def print_table(rows: Sequence[dict[str, Any]], title: str) -> None:
    """Mode, size, accuracy, Δ vs Keras, latency: one row per export mode; a failed mode's
    whole reason (with the sample counts it rests on) is printed under the table, not cut."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for col in ("mode", "size", "accuracy", "Keras acc.", "max |Δ logit|", "top-1 agree", "samples",
                "latency (median)", "status"):
        table.add_column(col, justify="left" if col in ("mode", "status") else "right")
    failed = []
    for r in rows:
        if not r["passed"]:
            table.add_row(r["mode"], "", "", "", "", "", "", "", "[red]FAILED[/red] (reason below)")
            failed.append(r)
            continue
        table.add_row(
            r["mode"],
            f"{r['size_bytes'] / 1024:.1f} KiB",
            f"{100 * r['accuracy']:.2f}%",
            f"{100 * r['keras_accuracy']:.2f}%",
            f"{r['max_abs_logit_diff']:.2e}",
            f"{100 * r['top1_agreement']:.2f}%",
            str(r.get("samples", "")),
            f"{r['median_latency_ms']:.3f} ms",
            "[green]verified[/green]",
        )
    console = Console(width=140)
    console.print(table)
    for r in failed:
        console.print(f"[red]{r['mode']} FAILED[/red]: {escape(r['error'])}")


def write_json(rows: Sequence[dict[str, Any]], path: Path, extra: dict[str, Any] | None = None) -> None:
    path.write_text(json.dumps({**(extra or {}), "modes": list(rows)}, indent=2) + "\n")


def plot_accuracy_vs_size(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """One point per verified mode, size on a log axis, with Keras' accuracy as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["passed"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    markers = {"float32": "o", "float16": "s", "dynamic": "^", "int8": "D"}
    for r in ok:
        label = f"{r['mode']}: {r['size_bytes'] / 1024:.0f} KiB, {100 * r['accuracy']:.2f}%, {r['median_latency_ms']:.3f} ms"
        ax.scatter(r["size_bytes"] / 1024, 100 * r["accuracy"], s=70, zorder=3, alpha=0.85,
                   marker=markers.get(r["mode"], "o"), label=label)
    if ok:
        ax.axhline(100 * ok[0]["keras_accuracy"], color="grey", linestyle="--", linewidth=1, label="Keras model")
        ax.legend(loc="lower right", fontsize=7.5, title="mode: size, accuracy, median latency", title_fontsize=7.5)
        lo = min(100 * r["accuracy"] for r in ok)
        ax.set_ylim(lo - 3.0, min(100.0, 100 * max(r["accuracy"] for r in ok) + 1.0))
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("model size (KiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
