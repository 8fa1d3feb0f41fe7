"""The dashboard's plots: what to draw, queried from the store, drawn by :mod:`cloud.service.charts`.

Rollout stages over time (from the recorded decisions), drift (PSI) and mean confidence per
version over time (from agent summaries, in up to :data:`BUCKETS` time buckets), samples
per hour, and field accuracy per version (from labelled summaries and samples).
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.orm import sessionmaker

from cloud.service import charts
from cloud.service.db import Rollout, RolloutDecision, Sample
from cloud.service.drift import MAJOR, add_summaries, drift_score
from cloud.service.summaries import summaries, version_profile

BUCKETS = 24
WINDOW_S = 7 * 86400.0  # plots look back this far


def rollout_series(sessions: sessionmaker, now: float) -> dict[str, list[tuple[float, float]]]:
    """Per rollout, (time, % of the channel on the new version): each decision moves the line."""
    out: dict[str, list[tuple[float, float]]] = {}
    with sessions() as s:
        rollouts = {r.id: r for r in s.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(8)).all()}
        decisions = s.scalars(select(RolloutDecision).where(RolloutDecision.rollout_id.in_(list(rollouts)))
                              .order_by(RolloutDecision.id)).all()
    for d in decisions:
        r = rollouts[d.rollout_id]
        plan = json.loads(r.plan)
        series = out.setdefault(f"v{r.version_id} on {r.channel}", [])
        if d.action in ("start", "pause", "resume"):
            pct = d.percent
        elif d.action == "advance":
            pct = plan["stages"][d.stage + 1]
        elif d.action == "complete":
            pct = 100.0
        else:  # halt, abort: the channel is back on the previous version
            pct = 0.0
        series.append((d.time, pct))
    for r in rollouts.values():  # extend a live rollout's line to now
        name = f"v{r.version_id} on {r.channel}"
        if r.status in ("running", "paused") and out.get(name):
            out[name].append((now, out[name][-1][1]))
    return out


def summary_series(sessions: sessionmaker, registry: Any, since: float, now: float
                   ) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[tuple[float, float]]]]:
    """(drift PSI per version over time, mean confidence per version over time)."""
    rows = summaries(sessions, since=since)
    if not rows:
        return {}, {}
    t0 = min(r["end"] for r in rows)
    width = max(1.0, (now - t0) / BUCKETS)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["version"], int((r["end"] - t0) // width)), []).append(r)
    profiles: dict[str, Any] = {}
    drift: dict[str, list[tuple[float, float]]] = {}
    confidence: dict[str, list[tuple[float, float]]] = {}
    for (version, b), group in sorted(groups.items(), key=lambda kv: (_version_key(kv[0][0]), kv[0][1])):
        if version not in profiles:
            profiles[version] = version_profile(registry, version)
        total = add_summaries(group)
        score = drift_score(profiles[version], total)
        t = t0 + (b + 0.5) * width
        if score.score is not None:
            drift.setdefault(f"v{version}", []).append((t, score.score))
        if score.mean_confidence is not None:
            confidence.setdefault(f"v{version}", []).append((t, score.mean_confidence))
    return drift, confidence


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (1 << 30, v)


def samples_per_hour(sessions: sessionmaker, since: float, now: float) -> list[tuple[str, float]]:
    hour = cast(Sample.received / 3600, Integer)  # truncation is floor for times after 1970
    with sessions() as s:
        rows = dict(s.execute(select(hour, func.count()).where(Sample.received >= since).group_by(hour)).all())
    if not rows:
        return []
    first, last = int(min(rows)), int(now // 3600)
    first = max(first, last - 47)  # at most two days of bars
    return [(time.strftime("%H:00", time.gmtime(h * 3600)), float(rows.get(h, 0))) for h in range(first, last + 1)]


def field_accuracy(sessions: sessionmaker, since: float) -> list[tuple[str, float]]:
    """Per version: labelled predictions that were right, from summaries, else from uploaded samples."""
    acc: dict[str, tuple[int, int]] = {}
    for r in summaries(sessions, since=since):
        lab, cor = acc.get(r["version"], (0, 0))
        acc[r["version"]] = (lab + r["labelled"], cor + r["correct"])
    labelled = func.sum(case((Sample.label.is_not(None), 1), else_=0))
    correct = func.sum(case((Sample.label == Sample.prediction, 1), else_=0))
    with sessions() as s:
        for v, lab, cor in s.execute(select(Sample.model_version, labelled, correct)
                                     .group_by(Sample.model_version)).all():
            if acc.get(v, (0, 0))[0] == 0 and lab:
                acc[v] = (int(lab), int(cor or 0))
    return [(f"v{v}" if v.isdigit() else v[:12], 100.0 * c / n)
            for v, (n, c) in sorted(acc.items(), key=lambda kv: _version_key(kv[0])) if n]


def render_plots(sessions: sessionmaker, registry: Any, now: float | None = None,
                 drift_threshold: float = MAJOR) -> dict[str, str]:
    """Each plot's SVG, by id: rollouts, drift, confidence, samples, accuracy."""
    now = time.time() if now is None else now
    since = now - WINDOW_S
    drift, confidence = summary_series(sessions, registry, since, now)
    return {
        "rollouts": charts.line_chart("rollouts", "Rollouts: share of the channel on the new version", rollout_series(
            sessions, now), "% of devices", (0.0, 100.0), step=True),
        "drift": charts.line_chart("drift", "Drift per version (PSI against the export's profile)", drift, "PSI",
                                   threshold=drift_threshold),
        "confidence": charts.line_chart("confidence", "Mean top-1 confidence per version", confidence,
                                        "confidence", (0.0, 1.0)),
        "samples": charts.bar_chart("samples", "Samples collected per hour (UTC)", samples_per_hour(
            sessions, since, now), "samples"),
        "accuracy": charts.bar_chart("accuracy", "Field accuracy per version (labelled predictions)", field_accuracy(
            sessions, since), "% right", (0.0, 100.0), "{:.1f}%"),
    }
