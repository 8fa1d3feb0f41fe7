"""The pure rollout core: stage assignment by hash, and the promote/halt decision."""

from __future__ import annotations

import hashlib

import pytest

from cloud.service.rollout import (
    RolloutError,
    RolloutPlan,
    StageFigures,
    Thresholds,
    bucket,
    decide,
    in_stage,
    parse_duration,
    parse_stages,
)


def test_bucket_is_the_sha256_of_salt_and_device_scaled_to_percent() -> None:
    digest = hashlib.sha256(b"7\x00pi-kitchen").digest()  # an independent computation of the same number
    assert bucket("7", "pi-kitchen") == int.from_bytes(digest[:8], "big") / 2**64 * 100
    assert bucket("7", "pi-kitchen") == bucket("7", "pi-kitchen")
    assert bucket("8", "pi-kitchen") != bucket("7", "pi-kitchen")  # another release reshuffles the fleet


def test_stage_membership_is_stable_grows_with_the_stages_and_is_roughly_uniform() -> None:
    devices = [f"dev-{i}" for i in range(4000)]
    members = {p: {d for d in devices if in_stage("3", d, p)} for p in (5, 25, 100)}
    assert members[5] <= members[25] <= members[100] and len(members[100]) == 4000  # never flips out
    assert 0.04 < len(members[5]) / 4000 < 0.06 and 0.23 < len(members[25]) / 4000 < 0.27


def test_parsers() -> None:
    assert parse_duration("10m") == 600 and parse_duration("1.5s") == 1.5 and parse_duration("250ms") == 0.25
    assert parse_duration(3) == 3.0 and parse_duration("2h") == 7200
    assert parse_stages("5,25,100") == (5.0, 25.0, 100.0)
    for bad in ("5,25", "25,5,100", "0,100", "x", "5,150"):
        with pytest.raises(RolloutError):
            parse_stages(bad)
    for bad in ("-1s", "ten minutes", "nan"):
        with pytest.raises(RolloutError):
            parse_duration(bad)
    with pytest.raises(RolloutError, match="max-error-rate"):
        Thresholds(max_error_rate=2.0)
    with pytest.raises(RolloutError, match="min-devices"):
        RolloutPlan(min_devices=0)


PLAN = RolloutPlan(stages=(10, 50, 100), hold_s=60, min_devices=2, min_labelled=20, min_predictions=20,
                   thresholds=Thresholds(max_rollback_rate=0.2, max_error_rate=0.01, max_accuracy_drop=0.05,
                                         max_drift=0.5))
GOOD = StageFigures(devices_in_stage=3, devices_reporting=3, devices_tried=3, devices_rolled_back=0, predictions=300,
                    errors=0, labelled=100, correct=96, baseline_labelled=500, baseline_correct=480, drift=0.05)


def test_a_healthy_stage_waits_out_its_hold_then_advances_and_the_last_completes() -> None:
    assert decide(PLAN, 0, 30, GOOD).action == "wait"
    d = decide(PLAN, 0, 61, GOOD)
    assert d.action == "advance" and all(v.startswith("ok") for v in d.checks.values()), d
    assert decide(PLAN, 2, 61, GOOD).action == "complete"


def test_not_enough_devices_or_evidence_waits() -> None:
    from dataclasses import replace

    assert "1 of 2 devices" in decide(PLAN, 0, 61, replace(GOOD, devices_reporting=1)).reason
    d = decide(PLAN, 0, 61, replace(GOOD, labelled=5, correct=5))
    assert d.action == "wait" and "accuracy_drop" in d.reason
    # a stage nobody falls in exposes nobody: it advances after its hold
    assert decide(PLAN, 0, 61, StageFigures()).action == "advance"


@pytest.mark.parametrize(("change", "check"), [
    ({"devices_rolled_back": 1}, "rollback_rate"),  # 1 of 3 = 33% > 20%
    ({"errors": 10}, "error_rate"),  # 10 / 310 = 3.2% > 1%
    ({"correct": 80}, "accuracy_drop"),  # 80% vs 96%: a 16-point drop
    ({"drift": 0.9}, "drift"),
])
def test_any_failed_threshold_halts_at_once_even_inside_the_hold(change: dict, check: str) -> None:
    from dataclasses import replace

    d = decide(PLAN, 0, 1, replace(GOOD, **change))
    assert d.action == "halt" and d.reason.startswith(check) and d.checks[check].startswith("FAILED"), d


def test_thresholds_hold_at_their_limits_and_off_switches_a_check_off() -> None:
    from dataclasses import replace

    at_limit = replace(GOOD, devices_tried=5, devices_rolled_back=1, correct=91)  # 20% rollbacks, drop 5 points
    assert decide(PLAN, 0, 61, at_limit).action == "advance"
    off = replace(PLAN, thresholds=Thresholds(None, None, None, None))
    assert decide(off, 0, 61, replace(GOOD, devices_rolled_back=3, errors=300, correct=0)).action == "advance"


def test_a_plan_round_trips_through_json() -> None:
    assert RolloutPlan.from_json(PLAN.to_json()) == PLAN
