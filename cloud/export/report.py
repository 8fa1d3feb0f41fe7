"""The export-modes report: a table on the terminal, JSON, and a PNG of the task's measure against size.

What is measured depends on the task: accuracy for classification, per-label accuracy and exact
match for multi-label models, MAE and RMSE against the targets for regression, always beside Keras.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _pct(value: Any) -> str:
    return "" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def _num(value: Any) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _has(row: Row, key: str) -> bool:
    value = row.get(key)
    return value is not None and math.isfinite(value)


def metrics_text(v: Any) -> str:
    """The task's own measures of a :class:`cloud.export.verify.Verification`, beside Keras', for
    one line, ending in ``", "`` (empty where there is nothing to say)."""
    if v.task == "classification":
        return (f"accuracy {_pct(v.tflite_accuracy)} (Keras {_pct(v.keras_accuracy)}), "
                f"top-1 agreement {_pct(v.top1_agreement)}, ")
    if v.task == "multilabel":
        text = ""
        if math.isfinite(v.tflite_accuracy):
            text = (f"per-label accuracy {_pct(v.tflite_accuracy)} (Keras {_pct(v.keras_accuracy)}) over "
                    f"{v.target_values} label decisions, exact match {_pct(v.tflite_exact_match)} "
                    f"(Keras {_pct(v.keras_exact_match)}), ")
        return text + f"label agreement {_pct(v.top1_agreement)}, "
    if math.isfinite(v.keras_mae):
        return (f"MAE {_num(v.tflite_mae)} (Keras {_num(v.keras_mae)}), RMSE {_num(v.tflite_rmse)} "
                f"(Keras {_num(v.keras_rmse)}) over {v.target_values} target values, "
                f"mean |Δ output| {v.mean_abs_logit_diff:.2e}, ")
    return f"mean |Δ output| {v.mean_abs_logit_diff:.2e}, "


Column = tuple[str, Callable[[Row], str]]


def _columns(task: str) -> list[Column]:
    """The table's columns for ``task``: size, the task's measures beside Keras', Δ, samples, latency."""
    size: Column = ("size", lambda r: f"{r['size_bytes'] / 1024:.1f} KiB")
    tail: list[Column] = [("samples", lambda r: str(r.get("samples", ""))),
                          ("latency (median)", lambda r: f"{r['median_latency_ms']:.3f} ms")]
    if task == "multilabel":
        return [size, ("label acc.", lambda r: _pct(r["accuracy"])),
                ("Keras label acc.", lambda r: _pct(r["keras_accuracy"])),
                ("exact match", lambda r: _pct(r.get("tflite_exact_match"))),
                ("Keras exact", lambda r: _pct(r.get("keras_exact_match"))),
                ("max |Δ output|", lambda r: f"{r['max_abs_logit_diff']:.2e}"),
                ("label agree", lambda r: _pct(r["top1_agreement"])), *tail]
    if task == "regression":
        return [size, ("MAE", lambda r: _num(r.get("tflite_mae"))), ("Keras MAE", lambda r: _num(r.get("keras_mae"))),
                ("RMSE", lambda r: _num(r.get("tflite_rmse"))), ("Keras RMSE", lambda r: _num(r.get("keras_rmse"))),
                ("max |Δ output|", lambda r: f"{r['max_abs_logit_diff']:.2e}"), *tail]
    return [size, ("accuracy", lambda r: _pct(r["accuracy"])), ("Keras acc.", lambda r: _pct(r["keras_accuracy"])),
            ("max |Δ logit|", lambda r: f"{r['max_abs_logit_diff']:.2e}"),
            ("top-1 agree", lambda r: _pct(r["top1_agreement"])), *tail]


def print_table(rows: Sequence[Row], title: str, task: str | None = None) -> None:
    """Mode, size, the task's measures beside Keras', Δ vs Keras, latency: one row per export mode;
    a failed mode's whole reason (with the sample counts it rests on) is printed under the table, not cut."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    task = task or next((r["task"] for r in rows if r.get("task")), "classification")
    columns = _columns(task)
    table = Table(title=title)
    table.add_column("mode", justify="left")
    for name, _ in columns:
        table.add_column(name, justify="right")
    table.add_column("status", justify="left")
    failed = []
    for r in rows:
        if not r["passed"]:
            table.add_row(r["mode"], *[""] * len(columns), "[red]FAILED[/red] (reason below)")
            failed.append(r)
            continue
        table.add_row(r["mode"], *[cell(r) for _, cell in columns], "[green]verified[/green]")
    console = Console(width=160)
    console.print(table)
    for r in failed:
        console.print(f"[red]{r['mode']} FAILED[/red]: {escape(r['error'])}")


def write_json(rows: Sequence[Row], path: Path, extra: dict[str, Any] | None = None) -> None:
    path.write_text(json.dumps({**(extra or {}), "modes": list(rows)}, indent=2) + "\n")


def _measure(task: str, rows: Sequence[Row]) -> tuple[str, str, float, str]:
    """``(key, Keras' key, scale, axis label)`` of what to plot for ``task``: the task's measure where
    the rows have it, else the output difference from Keras."""
    if task == "regression" and any(_has(r, "keras_mae") for r in rows):
        return "tflite_mae", "keras_mae", 1.0, "MAE against the targets (lower is better)"
    if task != "regression" and any(_has(r, "accuracy") for r in rows):
        label = "per-label accuracy (%)" if task == "multilabel" else "test accuracy (%)"
        return "accuracy", "keras_accuracy", 100.0, label
    return "max_abs_logit_diff", "", 1.0, "max |Δ output| against Keras"


def plot_accuracy_vs_size(rows: Sequence[Row], path: Path, title: str) -> None:
    """One point per verified mode, size on a log axis, with Keras' value as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = next((r["task"] for r in rows if r.get("task")), "classification")
    key, keras_key, scale, ylabel = _measure(task, [r for r in rows if r["passed"]])
    ok = [r for r in rows if r["passed"] and _has(r, key)]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    markers = {"float32": "o", "float16": "s", "dynamic": "^", "int8": "D"}
    for r in ok:
        value = f"{100 * r[key]:.2f}%" if scale == 100.0 else f"{r[key]:.3g}"
        label = f"{r['mode']}: {r['size_bytes'] / 1024:.0f} KiB, {value}, {r['median_latency_ms']:.3f} ms"
        ax.scatter(r["size_bytes"] / 1024, scale * r[key], s=70, zorder=3, alpha=0.85,
                   marker=markers.get(r["mode"], "o"), label=label)
    if ok:
        if keras_key and _has(ok[0], keras_key):
            ax.axhline(scale * ok[0][keras_key], color="grey", linestyle="--", linewidth=1, label="Keras model")
        ax.legend(loc="lower right" if key == "accuracy" else "best", fontsize=7.5, title=f"mode: size, {ylabel.split(' (')[0]}, median latency",
                  title_fontsize=7.5)
        if key == "accuracy":
            lo = min(100 * r["accuracy"] for r in ok)
            ax.set_ylim(lo - 3.0, min(100.0, 100 * max(r["accuracy"] for r in ok) + 1.0))
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("model size (KiB, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
