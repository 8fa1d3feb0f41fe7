"""Staged rollouts, the pure part: the plan, which stage a device falls in, and the decision.

A device's place in a rollout is ``bucket(salt, device)``: a number in [0, 100) from the sha256
of the rollout's salt (its version) and the device's name, so it never changes while the
rollout runs, and a device in a stage is in every later one (stages only grow). A device
whose bucket is below the current stage's percentage gets the new version; every other
device keeps the previous one.

:func:`decide` looks at one stage's figures and says what to do: ``halt`` as soon as a
threshold fails on enough evidence, ``advance`` (or ``complete`` after the last stage) once
the hold time has passed, enough devices report and every threshold holds, else ``wait``.
It is a pure function of its inputs, so each decision can be recorded with the figures it
rested on and replayed.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("running", "paused", "completed", "halted", "aborted")
ACTIVE = ("running", "paused")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class RolloutError(ValueError):
    """A rollout cannot be started or changed as asked (bad plan, none active, one already running)."""


def parse_duration(text: str | float) -> float:
    """``"10m"`` → 600.0 seconds; plain numbers are seconds; units ms, s, m, h, d."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if m is None:
            raise RolloutError(f"duration {text!r} is not a number with an optional unit (ms, s, m, h, d), e.g. 10m")
        value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value < 0:
        raise RolloutError(f"duration must be finite and >= 0, got {text!r}")
    return value


def parse_stages(text: str | list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """``"5,25,100"`` → (5.0, 25.0, 100.0): strictly increasing percentages ending at 100."""
    try:
        stages = tuple(float(s) for s in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise RolloutError(f"--stages must be comma-separated percentages, got {text!r}") from None
    if not stages or stages[-1] != 100.0 or any(not 0 < s <= 100 for s in stages) \
            or any(b <= a for a, b in zip(stages, stages[1:])):
        raise RolloutError(f"--stages must be increasing percentages in (0, 100] ending at 100, got {text!r}")
    return stages


@dataclass(frozen=True)
class Thresholds:
    """What a stage must hold to advance; any one exceeded halts the rollout. None switches a check off.

    ``max_rollback_rate``: devices that rolled back or rejected the version / devices that tried it.
    ``max_error_rate``: failed predictions / all predictions on the new version.
    ``max_accuracy_drop``: the previous version's field accuracy minus the new one's (labelled samples).
    ``max_drift``: the new version's drift score (PSI) against its reference profile.
    """

    max_rollback_rate: float | None = 0.1
    max_error_rate: float | None = 0.01
    max_accuracy_drop: float | None = 0.05
    max_drift: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_rollback_rate", "max_error_rate", "max_accuracy_drop"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise RolloutError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
        if self.max_drift is not None and not (math.isfinite(self.max_drift) and self.max_drift >= 0):
            raise RolloutError(f"--max-drift must be a finite number >= 0, got {self.max_drift}")


@dataclass(frozen=True)
class RolloutPlan:
    """How a version reaches a channel: stage percentages, hold per stage, evidence needed, thresholds."""

    stages: tuple[float, ...] = (5.0, 25.0, 100.0)
    hold_s: float = 600.0
    min_devices: int = 1  # devices in the stage that must report on the new version before it advances
    min_labelled: int = 20  # labelled samples on each side before field accuracy is compared
    min_predictions: int = 20  # predictions on the new version before error rate and drift are judged
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", parse_stages(self.stages))
        if not (math.isfinite(self.hold_s) and self.hold_s >= 0):
            raise RolloutError(f"--hold must be >= 0 seconds, got {self.hold_s}")
        if self.min_devices < 1:
            raise RolloutError(f"--min-devices must be >= 1, got {self.min_devices}")
        if self.min_labelled < 1 or self.min_predictions < 1:
            raise RolloutError("--min-labelled and --min-predictions must be >= 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutPlan:
        return cls(**{**data, "stages": tuple(data["stages"]), "thresholds": Thresholds(**data["thresholds"])})


def bucket(salt: str, device: str) -> float:
    """The device's fixed place in a rollout, uniform in [0, 100)."""
    digest = hashlib.sha256(f"{salt}\x00{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def in_stage(salt: str, device: str, percent: float) -> bool:
    return bucket(salt, device) < percent


@dataclass(frozen=True)
class StageFigures:
    """What the fleet reported on one stage, gathered by the service (see ``rollout_store``)."""

    devices_in_stage: int = 0  # registered devices whose bucket falls in the stage
    devices_reporting: int = 0  # of them, those that sent a summary on the new version
    devices_tried: int = 0  # of them, those that updated to it, rolled it back or rejected it
    devices_rolled_back: int = 0
    predictions: int = 0  # on the new version, since the stage began
    errors: int = 0
    mean_confidence: float | None = None
    labelled: int = 0
    correct: int = 0
    baseline_labelled: int = 0  # the previous version's, over the baseline window
    baseline_correct: int = 0
    drift: float | None = None  # PSI of the new version's data against its reference profile

    @property
    def rollback_rate(self) -> float | None:
        return self.devices_rolled_back / self.devices_tried if self.devices_tried else None

    @property
    def error_rate(self) -> float | None:
        total = self.predictions + self.errors
        return self.errors / total if total else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def baseline_accuracy(self) -> float | None:
        return self.baseline_correct / self.baseline_labelled if self.baseline_labelled else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rollback_rate": self.rollback_rate, "error_rate": self.error_rate,
                "accuracy": self.accuracy, "baseline_accuracy": self.baseline_accuracy}


@dataclass(frozen=True)
class Decision:
    action: str  # wait | advance | complete | halt
    reason: str
    checks: dict[str, str]  # check name -> "ok" | "pending: …" | "FAILED: …" | "off"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _checks(plan: RolloutPlan, f: StageFigures) -> dict[str, str]:
    t, out = plan.thresholds, {}
    if t.max_rollback_rate is None:
        out["rollback_rate"] = "off"
    elif f.rollback_rate is None:
        out["rollback_rate"] = "pending: no device has tried the version yet"
    elif f.rollback_rate > t.max_rollback_rate:
        out["rollback_rate"] = (f"FAILED: {f.devices_rolled_back} of {f.devices_tried} devices rolled back "
                                f"({f.rollback_rate:.1%} > {t.max_rollback_rate:.1%})")
    else:
        out["rollback_rate"] = f"ok: {f.rollback_rate:.1%} <= {t.max_rollback_rate:.1%}"
    enough = f.predictions + f.errors >= plan.min_predictions
    if t.max_error_rate is None:
        out["error_rate"] = "off"
    elif not enough:
        out["error_rate"] = f"pending: {f.predictions + f.errors} of {plan.min_predictions} predictions"
    elif f.error_rate > t.max_error_rate:
        out["error_rate"] = f"FAILED: {f.errors} errors ({f.error_rate:.2%} > {t.max_error_rate:.2%})"
    else:
        out["error_rate"] = f"ok: {f.error_rate:.2%} <= {t.max_error_rate:.2%}"
    if t.max_accuracy_drop is None:
        out["accuracy_drop"] = "off"
    elif f.baseline_labelled < plan.min_labelled:
        out["accuracy_drop"] = f"ok: no baseline ({f.baseline_labelled} labelled samples on the previous version)"
    elif f.labelled < plan.min_labelled:
        out["accuracy_drop"] = f"pending: {f.labelled} of {plan.min_labelled} labelled samples"
    else:
        drop = f.baseline_accuracy - f.accuracy
        verdict = "FAILED" if drop > t.max_accuracy_drop else "ok"
        out["accuracy_drop"] = (f"{verdict}: field accuracy {f.accuracy:.1%} vs {f.baseline_accuracy:.1%} before "
                                f"(drop {drop:+.1%}, limit {t.max_accuracy_drop:.1%})")
    if t.max_drift is None:
        out["drift"] = "off"
    elif f.drift is None or not enough:
        out["drift"] = "pending: no drift score yet"
    elif f.drift > t.max_drift:
        out["drift"] = f"FAILED: PSI {f.drift:.3f} > {t.max_drift:.3f}"
    else:
        out["drift"] = f"ok: PSI {f.drift:.3f} <= {t.max_drift:.3f}"
    return out


def decide(plan: RolloutPlan, stage_index: int, stage_age_s: float, figures: StageFigures) -> Decision:
    """What a running rollout should do now, in stage ``stage_index`` that began ``stage_age_s`` ago."""
    if not 0 <= stage_index < len(plan.stages):
        raise RolloutError(f"stage index {stage_index} outside the plan's {len(plan.stages)} stages")
    checks = _checks(plan, figures)
    failed = [f"{name} {text[len('FAILED: '):]}" for name, text in checks.items() if text.startswith("FAILED")]
    if failed:
        return Decision("halt", "; ".join(failed), checks)
    if stage_age_s < plan.hold_s:
        return Decision("wait", f"holding: {stage_age_s:.0f} of {plan.hold_s:.0f} s", checks)
    need = min(plan.min_devices, figures.devices_in_stage)
    if figures.devices_in_stage and figures.devices_reporting < max(1, need):
        return Decision("wait", f"{figures.devices_reporting} of {max(1, need)} devices in the stage have reported",
                        checks)
    pending = [f"{name} ({text[len('pending: '):]})" for name, text in checks.items() if text.startswith("pending")]
    if pending and figures.devices_in_stage:
        return Decision("wait", "waiting for evidence: " + "; ".join(pending), checks)
    last = stage_index == len(plan.stages) - 1
    reason = ("every threshold held" if figures.devices_in_stage else "no device falls in this stage") + \
        f" after {stage_age_s:.0f} s"
    return Decision("complete" if last else "advance", reason, checks)
