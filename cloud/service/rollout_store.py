"""Staged rollouts in the database: start, pause, resume, abort, the release a device gets, and the tick
that gathers each running stage's figures and applies :func:`cloud.service.rollout.decide`.

Every state change is one conditional UPDATE (``WHERE stage = <seen> AND status = 'running'``),
so several workers or hosts ticking at once apply each decision exactly once, with no lock
of our own. A completed rollout makes its version the channel's current one; a halted or
aborted one leaves the channel on the previous version, so the devices that took the new
one are sent the old one back at their next poll.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.service.db import ChannelEntry, Device, Event, Rollout, RolloutDecision, Summary
from cloud.service.drift import add_summaries, drift_score
from cloud.service.epochs import install as install_change_counters
from cloud.service.rollout import ACTIVE, RolloutError, RolloutPlan, StageFigures, bucket, decide
from cloud.service.summaries import summaries, version_profile

install_change_counters()  # every write to the release tables bumps the "releases" counter

BASELINE_WINDOW_S = 3600.0  # the previous version's field accuracy counts from this long before the rollout
TRIED_EVENTS = ("updated", "rollback", "rejected")
FAILED_EVENTS = ("rollback", "rejected")


@dataclass(frozen=True)
class ActiveRollout:
    """What the release endpoint needs to know about a channel's running or paused rollout."""

    id: int
    channel: str
    version: int
    base_version: int | None
    percent: float

    @property
    def salt(self) -> str:
        return str(self.version)

    def includes(self, device_name: str) -> bool:
        return bucket(self.salt, device_name) < self.percent


def _plan(row: Rollout) -> RolloutPlan:
    return RolloutPlan.from_json(json.loads(row.plan))


def _record(s: Session, row: Rollout, action: str, reason: str, figures: dict[str, Any], now: float) -> None:
    plan = _plan(row)
    s.add(RolloutDecision(rollout_id=row.id, time=now, stage=row.stage, percent=plan.stages[row.stage],
                          action=action, reason=reason, figures=json.dumps(figures)))


def announce(registry: Any, channel: str, version: int, signing_key: Any | None) -> None:
    """Sign a fresh release statement naming ``version`` on ``channel`` (devices take no release without one).

    A rollout signs one for its version when it starts, and one for the base version when it
    halts or is aborted, so devices that took the new version accept the old one back.
    """
    if signing_key is not None:
        registry.sign_statement(channel, version, signing_key)


def start_rollout(sessions: sessionmaker, registry: Any, version: int, channel: str, plan: RolloutPlan,
                  now: float | None = None, signing_key: Any | None = None) -> dict[str, Any]:
    """Begin rolling ``version`` out on ``channel`` at its first stage; the channel's current version is the base."""
    now = time.time() if now is None else now
    registry.get(version)  # RegistryError if there is no such version
    base = registry.current(channel)
    if base is None:
        raise RolloutError(f"nothing is published on channel {channel!r}: publish or promote a first version there, "
                           "then roll out the next one")
    if base.version == version:
        raise RolloutError(f"v{version} is already channel {channel!r}'s current version")
    with sessions.begin() as s:
        if active_row(s, channel) is not None:
            raise RolloutError(f"channel {channel!r} already has a rollout in progress; abort it first")
        row = Rollout(channel=channel, version_id=version, base_version_id=base.version, plan=json.dumps(plan.to_json()),
                      status="running", stage=0, stage_started=now, created=now, updated=now)
        s.add(row)
        s.flush()
        _record(s, row, "start", f"v{version} to {plan.stages[0]:g}% of {channel!r} (base v{base.version})", {}, now)
        out = _row_json(row)
    announce(registry, channel, version, signing_key)
    return out


def active_row(s: Session, channel: str) -> Rollout | None:
    return s.scalars(select(Rollout).where(Rollout.channel == channel, Rollout.status.in_(ACTIVE))
                     .order_by(Rollout.id.desc()).limit(1)).first()


def active_rollout(sessions: sessionmaker, channel: str) -> ActiveRollout | None:
    with sessions() as s:
        row = active_row(s, channel)
        if row is None:
            return None
        return ActiveRollout(row.id, row.channel, row.version_id, row.base_version_id, _plan(row).stages[row.stage])


def _find(s: Session, rollout: int | str) -> Rollout:
    """A rollout by id, or a channel's active (else latest) one."""
    if isinstance(rollout, int) or str(rollout).isdigit():
        row = s.get(Rollout, int(rollout))
    else:
        row = active_row(s, str(rollout)) or s.scalars(select(Rollout).where(Rollout.channel == str(rollout))
                                                       .order_by(Rollout.id.desc()).limit(1)).first()
    if row is None:
        raise RolloutError(f"no rollout {rollout!r} (give a rollout id or a channel)")
    return row


def set_state(sessions: sessionmaker, rollout: int | str, action: str, now: float | None = None,
              registry: Any = None, signing_key: Any | None = None) -> dict[str, Any]:
    """``pause``, ``resume`` or ``abort`` a rollout (by id or channel); recorded like any decision."""
    now = time.time() if now is None else now
    moves = {"pause": (("running",), "paused"), "resume": (("paused",), "running"), "abort": (ACTIVE, "aborted")}
    if action not in moves:
        raise RolloutError(f"unknown rollout action {action!r}: use pause, resume or abort")
    allowed, target = moves[action]
    with sessions.begin() as s:
        row = _find(s, rollout)
        if row.status not in allowed:
            raise RolloutError(f"rollout {row.id} is {row.status}; cannot {action} it")
        values: dict[str, Any] = {"status": target, "updated": now}
        if action == "resume":  # the hold starts again: what happened while paused was not watched for
            values["stage_started"] = now
        done = s.execute(update(Rollout).where(Rollout.id == row.id, Rollout.status == row.status)
                         .values(**values)).rowcount
        if done != 1:
            raise RolloutError(f"rollout {row.id} changed meanwhile; try again")
        s.refresh(row)
        _record(s, row, action, f"by the operator ({row.channel} back on v{row.base_version_id})"
                if action == "abort" else "by the operator", {}, now)
        out = _row_json(row)
    if action == "abort" and registry is not None and row.base_version_id is not None:
        announce(registry, row.channel, row.base_version_id, signing_key)
    return out


def gather_figures(sessions: sessionmaker, registry: Any, row: Rollout, now: float) -> StageFigures:
    """The current stage's figures, from the devices' events and summaries since the stage began."""
    plan = _plan(row)
    percent, version = plan.stages[row.stage], str(row.version_id)
    with sessions() as s:
        devices = dict(s.execute(select(Device.id, Device.name)).all())
        in_stage = {did for did, name in devices.items() if bucket(version, name) < percent}
        events = s.execute(select(Event.device_id, Event.kind).where(
            Event.version == version, Event.kind.in_(TRIED_EVENTS), Event.time >= row.created)).all()
        reporting = set(s.scalars(select(Summary.device_id).where(
            Summary.version == version, Summary.end >= row.stage_started, Summary.predictions > 0)).all())
    tried = {did for did, _ in events if did in in_stage}
    failed = {did for did, kind in events if did in in_stage and kind in FAILED_EVENTS}
    new = add_summaries(summaries(sessions, version, since=row.stage_started))
    base = add_summaries(summaries(sessions, str(row.base_version_id), since=row.created - BASELINE_WINDOW_S)) \
        if row.base_version_id is not None else None
    drift = drift_score(version_profile(registry, version), new).score if plan.thresholds.max_drift is not None else None
    return StageFigures(
        devices_in_stage=len(in_stage), devices_reporting=len(reporting & in_stage), devices_tried=len(tried),
        devices_rolled_back=len(failed), predictions=new["predictions"] if new else 0,
        errors=new["errors"] if new else 0,
        mean_confidence=new["confidence_sum"] / new["predictions"] if new and new["predictions"] else None,
        labelled=new["labelled"] if new else 0, correct=new["correct"] if new else 0,
        baseline_labelled=base["labelled"] if base else 0, baseline_correct=base["correct"] if base else 0,
        drift=drift)


def tick(sessions: sessionmaker, registry: Any, now: float | None = None, signing_key: Any | None = None
         ) -> list[dict[str, Any]]:
    """Judge every running rollout once and apply what :func:`decide` says; returns the changes made."""
    now = time.time() if now is None else now
    with sessions() as s:
        running = s.scalars(select(Rollout).where(Rollout.status == "running")).all()
    changes = []
    for row in running:
        figures = gather_figures(sessions, registry, row, now)
        decision = decide(_plan(row), row.stage, now - row.stage_started, figures)
        if decision.action == "wait":
            continue
        record = {**figures.to_json(), "checks": decision.checks}
        with sessions.begin() as s:
            guard = (Rollout.id == row.id, Rollout.stage == row.stage, Rollout.status == "running")
            if decision.action == "advance":
                values = {"stage": row.stage + 1, "stage_started": now, "updated": now}
            else:
                values = {"status": {"complete": "completed", "halt": "halted"}[decision.action], "updated": now}
            if s.execute(update(Rollout).where(*guard).values(**values)).rowcount != 1:
                continue  # another worker applied a decision first
            if decision.action == "complete":
                s.add(ChannelEntry(channel=row.channel, version_id=row.version_id, time=now))
            reason = decision.reason
            if decision.action == "halt":
                reason += f"; {row.channel} reverted to v{row.base_version_id}" + (
                    "" if signing_key is not None else " (no signing key on the server: devices that took the new "
                                                       "version keep it until a signed 'cloud rollback')")
            _record(s, row, decision.action, reason, record, now)
        if decision.action == "halt" and row.base_version_id is not None:
            announce(registry, row.channel, row.base_version_id, signing_key)
        changes.append({"rollout": row.id, "action": decision.action, "stage": row.stage, "reason": reason})
    return changes


def _row_json(row: Rollout) -> dict[str, Any]:
    plan = _plan(row)
    return {"id": row.id, "channel": row.channel, "version": row.version_id, "base_version": row.base_version_id,
            "status": row.status, "stage": row.stage, "percent": plan.stages[row.stage], "stage_started": row.stage_started,
            "created": row.created, "updated": row.updated, "plan": plan.to_json()}


def rollout_status(sessions: sessionmaker, registry: Any, rollout: int | str | None = None,
                   now: float | None = None) -> list[dict[str, Any]]:
    """Rollouts (one, or all newest first) with their decisions, and live figures for an active one."""
    now = time.time() if now is None else now
    with sessions() as s:
        rows = [_find(s, rollout)] if rollout is not None else \
            s.scalars(select(Rollout).order_by(Rollout.id.desc())).all()
        decisions = {r.id: [{"time": d.time, "stage": d.stage, "percent": d.percent, "action": d.action,
                             "reason": d.reason, "figures": json.loads(d.figures)}
                            for d in s.scalars(select(RolloutDecision).where(RolloutDecision.rollout_id == r.id)
                                               .order_by(RolloutDecision.id)).all()] for r in rows}
    out = []
    for r in rows:
        item = {**_row_json(r), "decisions": decisions[r.id]}
        if r.status in ACTIVE:
            figures = gather_figures(sessions, registry, r, now)
            item["figures"] = figures.to_json()
            item["next"] = decide(_plan(r), r.stage, now - r.stage_started, figures).to_json()
        out.append(item)
    return out
