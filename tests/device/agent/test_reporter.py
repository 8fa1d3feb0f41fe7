"""Interval summaries and the consent switch on the device, without a server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from device.agent.consent import ConsentSwitch, parse_consent, write_consent
from device.agent.reporter import SummaryReporter
from device.runtime.bundle import read_manifest
from tests.conftest import SHIPPED


def test_parse_consent() -> None:
    assert parse_consent("") and parse_consent("collect: on") and parse_consent("# nothing here")
    assert not parse_consent("collect: off") and not parse_consent("name: x\nCOLLECT = no\n")
    assert parse_consent("collect: off\ncollect: on")  # the last line wins


def test_the_switch_takes_effect_at_once(tmp_path: Path) -> None:
    switch = ConsentSwitch(tmp_path)
    assert switch.collect_allowed()  # no file: the policy decides
    write_consent(tmp_path, False)
    assert not switch.collect_allowed()
    path = write_consent(tmp_path, True)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))  # a distinct mtime even on coarse clocks
    assert switch.collect_allowed()


def test_summaries_per_version_survive_a_failed_send() -> None:
    manifest = read_manifest(SHIPPED / "mnist-cnn-int8")
    rep = SummaryReporter()
    x = np.zeros((28, 28, 1), np.uint8)
    for i in range(5):
        rep.observe("1", manifest, x, i % 10, 0.95, label=i % 10 if i < 4 else 0)
    rep.observe("2", manifest, x, 3, 0.55, label=None)
    rep.observe_error("2", manifest)
    sent: list[dict] = []

    def down(_: dict) -> None:
        raise ConnectionError("server away")

    with pytest.raises(ConnectionError):
        rep.flush(down)
    assert rep.flush(sent.append) == 2  # kept, then sent
    by_version = {s["version"]: s for s in sent}
    assert by_version["1"]["predictions"] == 5 and by_version["1"]["labelled"] == 5 and by_version["1"]["correct"] == 4
    assert by_version["1"]["confidence_hist"][9] == 5 and by_version["1"]["input_hist"][0][0] == 784 * 5
    assert by_version["2"]["errors"] == 1 and by_version["2"]["confidence_hist"][5] == 1
    assert len({s["key"] for s in sent}) == 2 and rep.flush(sent.append) == 0


def test_without_consent_summaries_hold_no_input_statistics() -> None:
    manifest = read_manifest(SHIPPED / "mnist-cnn-int8")
    rep = SummaryReporter()
    rep.observe("1", manifest, np.full((28, 28, 1), 200, np.uint8), 1, 0.9, None, with_inputs=False)
    (s,) = rep.take()
    assert s["predictions"] == 1 and s["input_values"] == 0 and s["input_sum"] == [0.0]


def test_an_agent_stops_collecting_at_once_when_the_owner_says_collect_off(tmp_path: Path) -> None:
    from device.agent.agent import Agent, AgentConfig
    from device.agent.collector import CollectionPolicy

    agent = Agent(AgentConfig(directory=tmp_path / "agent", initial_bundle=SHIPPED / "mnist-cnn-int8",
                              policy=CollectionPolicy("all")))
    try:
        x = np.zeros((28, 28, 1), np.uint8)
        for _ in range(3):
            agent.predict(x, label=1)
        assert len(agent.queue) == 3
        write_consent(tmp_path / "agent", False)
        agent.predict(x, label=1)  # the very next prediction: nothing queued, and the queue is emptied
        assert len(agent.queue) == 0
        agent.predict(x)
        assert len(agent.queue) == 0
        before, after = agent.reporter.take()  # still counted, but from the switch on without input statistics
        assert before["predictions"] == 3 and before["input_values"] == 3 * 784
        assert after["predictions"] == 2 and after["input_values"] == 0 and after["input_hist"][0] == [0] * 16
        path = write_consent(tmp_path / "agent", True)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
        agent.predict(x, label=1)
        assert len(agent.queue) == 1
    finally:
        agent.close()
