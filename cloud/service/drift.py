"""Drift scores: the population stability index (PSI) of what devices saw against a bundle's profile.

``PSI = Σ (a_i − e_i) · ln(a_i / e_i)`` over histogram bins, with ``e`` the reference fractions and
``a`` the observed ones (both floored at :data:`EPS` so an empty bin stays finite). The usual
reading: below 0.1 no shift, 0.1–0.25 a moderate one, above 0.25 a major one. A version's score
is the largest of the PSI of the top-1 confidence histogram and of each input channel's value
histogram; each part is reported too. Pure: summaries and profiles in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

MEASURE = "PSI"
EPS = 1e-4
MODERATE, MAJOR = 0.1, 0.25


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = EPS) -> float:
    """The population stability index between two histograms (counts or fractions; each is normalised)."""
    if len(expected) != len(actual) or not expected:
        raise ValueError(f"histograms must have the same, non-zero number of bins: {len(expected)} vs {len(actual)}")
    se, sa = float(sum(expected)), float(sum(actual))
    if se <= 0 or sa <= 0:
        raise ValueError("a histogram with no mass has no PSI")
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e / se, eps), max(a / sa, eps)
        total += (a - e) * math.log(a / e)
    return total


def add_summaries(summaries: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Add summaries of one version (from any devices and intervals) into one; None for none."""
    out: dict[str, Any] | None = None
    for s in summaries:
        if out is None:
            out = {k: (list(v) if isinstance(v, list) else v) for k, v in s.items()}
            out["input_hist"] = None if s.get("input_hist") is None else [list(r) for r in s["input_hist"]]
            continue
        for k in ("predictions", "errors", "labelled", "correct", "input_values", "confidence_sum"):
            out[k] += s[k]
        for k in ("confidence_hist", "prediction_hist", "input_sum", "input_sumsq"):
            if len(out[k]) == len(s[k]):
                out[k] = [a + b for a, b in zip(out[k], s[k])]
        if out["input_hist"] is not None and s.get("input_hist") is not None \
                and len(out["input_hist"]) == len(s["input_hist"]):
            out["input_hist"] = [[a + b for a, b in zip(r1, r2)] for r1, r2 in zip(out["input_hist"], s["input_hist"])]
        out["start"], out["end"] = min(out["start"], s["start"]), max(out["end"], s["end"])
    return out


@dataclass(frozen=True)
class DriftScore:
    score: float | None  # max of the parts; None when there is no profile or no data
    confidence_psi: float | None
    input_psi: float | None  # the worst channel's
    predictions: int
    mean_confidence: float | None
    reference_confidence: float | None
    measure: str = MEASURE

    @property
    def level(self) -> str:
        if self.score is None:
            return "unknown"
        return "major" if self.score > MAJOR else "moderate" if self.score > MODERATE else "none"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "level": self.level}


def drift_score(profile: dict[str, Any] | None, summary: dict[str, Any] | None) -> DriftScore:
    """Score one summed summary against a bundle's profile."""
    n = 0 if summary is None else int(summary["predictions"])
    mean_conf = summary["confidence_sum"] / n if n else None
    ref_conf = None if not profile else profile.get("mean_confidence")
    if not profile or not n:
        return DriftScore(None, None, None, n, mean_conf, ref_conf)
    conf = psi(profile["confidence_hist"], summary["confidence_hist"]) \
        if len(profile.get("confidence_hist") or []) == len(summary["confidence_hist"]) else None
    inp = None
    ref_hist, hist = profile.get("input_hist"), summary.get("input_hist")
    if ref_hist and hist and len(ref_hist) == len(hist) and summary.get("input_values"):
        per_channel = [psi(r, h) for r, h in zip(ref_hist, hist) if sum(h) > 0 and sum(r) > 0]
        inp = max(per_channel) if per_channel else None
    parts = [p for p in (conf, inp) if p is not None]
    return DriftScore(max(parts) if parts else None, conf, inp, n, mean_conf, ref_conf)
