"""Interval summaries on the service side: the schema's checks, and a resend stored once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud.service.summaries import SummaryIn, store_summary, summaries
from tests.service_helpers import setup_service


def _body(**over) -> dict:
    body = {"key": "k1", "version": "3", "start": 1e9, "end": 1e9 + 60, "predictions": 10, "errors": 1, "labelled": 4,
            "correct": 3, "confidence_sum": 8.5, "confidence_hist": [0] * 8 + [2, 8], "prediction_hist": [10],
            "input_values": 7840, "input_sum": [1.0], "input_sumsq": [2.0], "input_hist": [[1] * 16]}
    return {**body, **over}


def test_schema_and_consistency() -> None:
    assert SummaryIn.model_validate(_body()).consistent() is None
    for bad in ({"confidence_hist": [1] * 9}, {"predictions": -1}, {"start": float("nan")}, {"extra": 1},
                {"input_hist": [[1] * 15]}, {"key": "../x"}, {"input_sum": [float("inf")]}):
        with pytest.raises(ValidationError):
            SummaryIn.model_validate(_body(**bad))
    assert "confidence_hist" in SummaryIn.model_validate(_body(predictions=11)).consistent()
    assert "correct" in SummaryIn.model_validate(_body(correct=5)).consistent()
    assert "end" in SummaryIn.model_validate(_body(end=1.0)).consistent()


def test_a_resent_summary_is_stored_once(tmp_path: Path) -> None:
    sessions, _, _, _, _ = setup_service(tmp_path, ("cam",))
    s = SummaryIn.model_validate(_body())
    assert store_summary(sessions, 1, s) is True
    assert store_summary(sessions, 1, s) is False
    (row,) = summaries(sessions, "3")
    assert row["predictions"] == 10 and row["device_id"] == 1
