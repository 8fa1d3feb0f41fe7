"""Rollouts in the database, ticked by hand: figures from summaries and events, decisions applied once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud.service.rollout import RolloutError, RolloutPlan, Thresholds, bucket
from cloud.service.rollout_store import active_rollout, rollout_status, set_state, start_rollout, tick
from cloud.service.summaries import SummaryIn, store_summary
from tests.conftest import SHIPPED
from tests.service_helpers import setup_service

DEVICES = tuple(f"cam-{i:02d}" for i in range(20))


def _summary(key: str, version: str, n: int, correct: int, t: float, errors: int = 0) -> SummaryIn:
    return SummaryIn(key=key, version=version, start=t - 1, end=t, predictions=n, errors=errors, labelled=n,
                     correct=correct, confidence_sum=0.9 * n, confidence_hist=[0] * 9 + [n], prediction_hist=[n],
                     input_values=0, input_sum=[0.0], input_sumsq=[0.0], input_hist=None)


@pytest.fixture
def fleet(tmp_path: Path):
    sessions, registry, key, _, _ = setup_service(tmp_path, DEVICES)
    v1 = registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    v2 = registry.publish(SHIPPED / "mnist-cnn-float32", None, key)
    with sessions() as s:
        from sqlalchemy import select

        from cloud.service.db import Device
        ids = dict(s.execute(select(Device.name, Device.id)).all())
    return sessions, registry, v1.version, v2.version, ids


def _report(sessions, ids, names, version: int, accuracy: float, t: float, tag: str) -> None:
    from cloud.service.db import Event

    for name in names:
        store_summary(sessions, ids[name], _summary(f"{tag}-{name}", str(version), 50, round(50 * accuracy), t))
        with sessions.begin() as s:
            s.add(Event(device_id=ids[name], kind="updated", version=str(version), detail="", time=t))


def test_a_rollout_advances_stage_by_stage_and_completes(fleet) -> None:
    sessions, registry, v1, v2, ids = fleet
    plan = RolloutPlan(stages=(25, 50, 100), hold_s=10, min_devices=2, min_labelled=20,
                       thresholds=Thresholds(max_accuracy_drop=0.05))
    t0 = time.time() - 1000  # simulated times stay in the past (the service clamps a summary's end to now)
    _report(sessions, ids, DEVICES, v1, 0.96, t0 - 5, "base")  # the fleet on v1 before the rollout
    r = start_rollout(sessions, registry, v2, "stable", plan, now=t0)
    assert active_rollout(sessions, "stable").percent == 25
    with pytest.raises(RolloutError, match="already has a rollout"):
        start_rollout(sessions, registry, v2, "stable", plan)
    t = t0
    for stage, pct in enumerate(plan.stages):
        members = [d for d in DEVICES if bucket(str(v2), d) < pct]
        assert tick(sessions, registry, now=t + 1) == []  # inside the hold
        _report(sessions, ids, members, v2, 0.97, t + 2, f"s{stage}")
        changes = tick(sessions, registry, now=t + 11)
        assert [c["action"] for c in changes] == ["complete" if pct == 100 else "advance"], changes
        assert tick(sessions, registry, now=t + 11) == [] or pct == 100  # applied once
        t += 11
    assert registry.current("stable").version == v2 and active_rollout(sessions, "stable") is None
    status = rollout_status(sessions, registry, r["id"])[0]
    assert status["status"] == "completed"
    assert [d["action"] for d in status["decisions"]] == ["start", "advance", "advance", "complete"]
    advance = status["decisions"][1]["figures"]
    assert advance["devices_in_stage"] == len([d for d in DEVICES if bucket(str(v2), d) < 25])
    assert advance["accuracy"] == pytest.approx(round(50 * 0.97) / 50)


def test_a_bad_release_halts_in_its_first_stage_and_the_channel_stays_on_the_base(fleet) -> None:
    sessions, registry, v1, v2, ids = fleet
    plan = RolloutPlan(stages=(25, 100), hold_s=3600, min_devices=1, min_labelled=20)
    t0 = time.time() - 1000  # simulated times stay in the past (the service clamps a summary's end to now)
    _report(sessions, ids, DEVICES, v1, 0.96, t0 - 5, "base")
    start_rollout(sessions, registry, v2, "stable", plan, now=t0)
    members = [d for d in DEVICES if bucket(str(v2), d) < 25]
    _report(sessions, ids, members, v2, 0.10, t0 + 1, "bad")
    changes = tick(sessions, registry, now=t0 + 2)  # no waiting out the hour: a failed threshold halts at once
    assert [c["action"] for c in changes] == ["halt"] and "accuracy_drop" in changes[0]["reason"]
    assert registry.current("stable").version == v1 and active_rollout(sessions, "stable") is None
    halt = rollout_status(sessions, registry, "stable")[0]["decisions"][-1]
    assert halt["figures"]["accuracy"] == pytest.approx(0.1) and halt["figures"]["baseline_accuracy"] == pytest.approx(0.96)


def test_pause_resume_abort(fleet) -> None:
    sessions, registry, v1, v2, ids = fleet
    start_rollout(sessions, registry, v2, "stable", RolloutPlan(stages=(50, 100), hold_s=0))
    assert set_state(sessions, "stable", "pause")["status"] == "paused"
    assert tick(sessions, registry) == []  # a paused rollout is not judged
    assert active_rollout(sessions, "stable") is not None  # but its devices keep their version
    with pytest.raises(RolloutError, match="cannot pause"):
        set_state(sessions, "stable", "pause")
    assert set_state(sessions, "stable", "resume")["status"] == "running"
    assert set_state(sessions, "stable", "abort")["status"] == "aborted"
    assert active_rollout(sessions, "stable") is None and registry.current("stable").version == v1
    assert json.dumps(rollout_status(sessions, registry))  # JSON-ready


def test_several_processes_ticking_at_once_apply_a_decision_once(fleet) -> None:
    """Each worker of ``serve --workers N`` ticks; the conditional UPDATE lets exactly one of them advance a stage."""
    import threading

    sessions, registry, v1, v2, ids = fleet
    t0 = time.time() - 1000
    _report(sessions, ids, DEVICES, v1, 0.96, t0 - 5, "base")
    r = start_rollout(sessions, registry, v2, "stable", RolloutPlan(stages=(25, 100), hold_s=1, min_labelled=20),
                      now=t0)
    _report(sessions, ids, [d for d in DEVICES if bucket(str(v2), d) < 25], v2, 0.96, t0 + 1, "s0")
    results: list[list[dict]] = []
    threads = [threading.Thread(target=lambda: results.append(tick(sessions, registry, now=t0 + 2))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(len(x) for x in results) == [0, 0, 0, 1]
    decisions = rollout_status(sessions, registry, r["id"])[0]["decisions"]
    assert [d["action"] for d in decisions] == ["start", "advance"]
