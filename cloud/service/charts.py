"""Charts drawn on the server as inline SVG: no script, no CDN, nothing fetched by the browser.

Two shapes cover the dashboard: a line chart of several series over time (optionally as
steps, for rollout stages), and a bar chart. Both are pure functions from numbers to an SVG
string; every label is escaped. Each chart carries ``data-chart`` (its id) and each series
``data-series`` (its name), so a test can find them.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence

PALETTE = ("#0b5394", "#e69138", "#6aa84f", "#cc0000", "#674ea7", "#45818e", "#bf9000", "#a64d79")
WIDTH, HEIGHT = 560, 220
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 48, 120, 28, 30

Point = tuple[float, float]


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi <= lo:
        return (lo - 0.5, hi + 0.5) if lo else (0.0, 1.0)
    pad = (hi - lo) * 0.05
    return lo - pad if lo < 0 or lo - pad > 0 else 0.0, hi + pad


def _fmt(v: float) -> str:
    if abs(v) >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def _time_label(t: float, span: float) -> str:
    tm = time.gmtime(t)
    return time.strftime("%H:%M:%S" if span < 600 else "%H:%M" if span < 2 * 86400 else "%m-%d", tm)


def _frame(chart_id: str, title: str, y_label: str, inner: str, legend: Sequence[str]) -> str:
    e = html.escape
    items = "".join(
        f'<g transform="translate({WIDTH - MARGIN_R + 10},{MARGIN_T + 14 * i})"><rect width="10" height="10" '
        f'fill="{PALETTE[i % len(PALETTE)]}"/><text x="14" y="9" font-size="10">{e(name[:18])}</text></g>'
        for i, name in enumerate(legend))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{e(chart_id)}" width="{WIDTH}" '
            f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{e(title)}" '
            f'font-family="sans-serif"><rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>'
            f'<text x="{MARGIN_L}" y="16" font-size="13" font-weight="bold" fill="#222">{e(title)}</text>'
            f'<text x="10" y="{MARGIN_T + (HEIGHT - MARGIN_T - MARGIN_B) / 2}" font-size="10" fill="#555" '
            f'transform="rotate(-90 10 {MARGIN_T + (HEIGHT - MARGIN_T - MARGIN_B) / 2})" text-anchor="middle">'
            f'{e(y_label)}</text>{inner}{items}</svg>')


def _empty(chart_id: str, title: str, y_label: str) -> str:
    return _frame(chart_id, title, y_label, f'<text x="{WIDTH / 2 - 40}" y="{HEIGHT / 2}" font-size="12" '
                                            'fill="#888" class="no-data">no data yet</text>', [])


def _axes(y0: float, y1: float, x_ticks: list[tuple[float, str]], sy, sx) -> str:  # noqa: ANN001 - local scalers
    out = []
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        y = sy(v)
        out.append(f'<line x1="{MARGIN_L}" x2="{WIDTH - MARGIN_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{MARGIN_L - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end" fill="#555">'
                   f'{_fmt(v)}</text>')
    for x, label in x_ticks:
        out.append(f'<text x="{sx(x):.1f}" y="{HEIGHT - MARGIN_B + 13}" font-size="9" text-anchor="middle" '
                   f'fill="#555">{html.escape(label)}</text>')
    out.append(f'<line x1="{MARGIN_L}" x2="{MARGIN_L}" y1="{MARGIN_T}" y2="{HEIGHT - MARGIN_B}" stroke="#999"/>'
               f'<line x1="{MARGIN_L}" x2="{WIDTH - MARGIN_R}" y1="{HEIGHT - MARGIN_B}" y2="{HEIGHT - MARGIN_B}" '
               f'stroke="#999"/>')
    return "".join(out)


def line_chart(chart_id: str, title: str, series: dict[str, Sequence[Point]], y_label: str = "",
               y_range: tuple[float, float] | None = None, step: bool = False, threshold: float | None = None) -> str:
    """Series of (unix time, value) as lines (``step``: held until the next point), with an optional dashed threshold."""
    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return _empty(chart_id, title, y_label)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    if x1 <= x0:
        x0, x1 = x0 - 30, x1 + 30
    ys = [p[1] for p in pts] + ([threshold] if threshold is not None else [])
    y0, y1 = y_range or _nice_range(min(ys), max(ys))

    def sx(x: float) -> float:
        return MARGIN_L + (x - x0) / (x1 - x0) * (WIDTH - MARGIN_L - MARGIN_R)

    def sy(y: float) -> float:
        y = min(max(y, y0), y1)
        return HEIGHT - MARGIN_B - (y - y0) / (y1 - y0) * (HEIGHT - MARGIN_T - MARGIN_B)

    ticks = [(x0 + (x1 - x0) * i / 4, _time_label(x0 + (x1 - x0) * i / 4, x1 - x0)) for i in range(5)]
    parts = [_axes(y0, y1, ticks, sy, sx)]
    if threshold is not None:
        parts.append(f'<line class="threshold" x1="{MARGIN_L}" x2="{WIDTH - MARGIN_R}" y1="{sy(threshold):.1f}" '
                     f'y2="{sy(threshold):.1f}" stroke="#cc0000" stroke-dasharray="4 3"/>')
    for i, (name, s) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        good = sorted((x, y) for x, y in s if math.isfinite(x) and math.isfinite(y))
        coords: list[str] = []
        for j, (x, y) in enumerate(good):
            if step and j:
                coords.append(f"{sx(x):.1f},{sy(good[j - 1][1]):.1f}")
            coords.append(f"{sx(x):.1f},{sy(y):.1f}")
        dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in good)
        parts.append(f'<g data-series="{html.escape(name)}"><polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(coords)}"/>{dots}</g>')
    return _frame(chart_id, title, y_label, "".join(parts), list(series))


def bar_chart(chart_id: str, title: str, bars: Sequence[tuple[str, float]], y_label: str = "",
              y_range: tuple[float, float] | None = None, value_format: str = "{:.0f}") -> str:
    """One bar per (label, value), values written above the bars."""
    bars = [(label, v) for label, v in bars if math.isfinite(v)]
    if not bars:
        return _empty(chart_id, title, y_label)
    y0, y1 = y_range or (0.0, max(1e-9, max(v for _, v in bars)) * 1.1)
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    slot = plot_w / len(bars)

    def sy(y: float) -> float:
        y = min(max(y, y0), y1)
        return HEIGHT - MARGIN_B - (y - y0) / (y1 - y0) * (HEIGHT - MARGIN_T - MARGIN_B)

    def sx(x: float) -> float:
        return MARGIN_L + (x + 0.5) * slot

    step = max(1, math.ceil(len(bars) / 12))
    ticks = [(float(i), label) for i, (label, _) in enumerate(bars) if i % step == 0]
    parts = [_axes(y0, y1, ticks, sy, sx)]
    for i, (label, v) in enumerate(bars):
        x, top = MARGIN_L + i * slot + slot * 0.15, sy(v)
        parts.append(f'<g data-series="{html.escape(label)}"><rect x="{x:.1f}" y="{top:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{HEIGHT - MARGIN_B - top:.1f}" fill="{PALETTE[0]}"/>'
                     f'<text x="{x + slot * 0.35:.1f}" y="{top - 3:.1f}" font-size="9" text-anchor="middle">'
                     f'{html.escape(value_format.format(v))}</text></g>')
    return _frame(chart_id, title, y_label, "".join(parts), [])
