"""The agent without a server: backoff, start-up recovery after a crash mid-update, reported drops."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from device.agent.agent import Agent, AgentConfig, backoff_delay
from device.agent.collector import CollectionPolicy
from device.runtime.runtime import Runtime
from tests.conftest import SHIPPED


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(0)
    for failures in range(12):
        nominal = min(60.0, 1.0 * 2**failures)
        delays = [backoff_delay(failures, 1.0, 60.0, 0.2, rng) for _ in range(200)]
        assert all(0.8 * nominal <= d <= 1.2 * nominal for d in delays)
        assert len(set(delays)) > 100  # jittered, so a fleet does not retry in lockstep
    assert backoff_delay(3, 1.0, 60.0, 0.0, rng) == 8.0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="jitter"):
        AgentConfig(directory=Path("x"), jitter=1.5)
    with pytest.raises(ValueError, match="together"):
        AgentConfig(directory=Path("x"), server="http://127.0.0.1:1")


def test_restart_after_a_crash_mid_update_rolls_back_an_unhealthy_model(tmp_path: Path) -> None:
    agent = Agent(AgentConfig(directory=tmp_path / "a", initial_bundle=SHIPPED / "mnist-cnn-float32"))
    good = agent.store.current()
    agent.close()
    # the agent had swapped in a new bundle and died before its health check: that bundle is broken
    broken = tmp_path / "broken"
    shutil.copytree(SHIPPED / "mnist-cnn-int8", broken)
    x = np.zeros((2, 28, 28, 1), np.uint8)
    with open(broken / "canary.npz", "wb") as fh:
        np.savez(fh, x=x, expected=np.roll(Runtime(broken).predict(x), 4, axis=1))
    store = agent.store
    target = store.install_local(broken, "v9-broken")
    store.update_state(previous=str(store.swap(target)), previous_version=agent.version, version="9")
    assert store.current() == target

    again = Agent(AgentConfig(directory=tmp_path / "a", initial_bundle=SHIPPED / "mnist-cnn-float32"))
    assert again.store.current() == good and again.version == "shipped:mnist-cnn-float32"
    assert again.events[-1]["kind"] == "rollback" and "start-up" in again.events[-1]["detail"]
    assert again.runtime.manifest.mode == "float32"
    again.close()


def test_queue_overflow_is_reported(tmp_path: Path) -> None:
    agent = Agent(AgentConfig(directory=tmp_path / "a", initial_bundle=SHIPPED / "mnist-cnn-int8", queue_max=5,
                              policy=CollectionPolicy("all")))
    for i in range(8):
        agent.predict(np.full((28, 28, 1), i, np.uint8))
    assert agent.queue.counters() == {"queued": 5, "sent": 0, "dropped": 3, "rejected": 0}
    drops = [e for e in agent.events if e["kind"] == "dropped"]
    assert len(drops) == 1 and "1 in total" in drops[0]["detail"]  # reported at once, then at most every 10 s
    agent._report_drops(force=True)  # what each upload cycle of the run loop does
    drops = [e for e in agent.events if e["kind"] == "dropped"]
    assert len(drops) == 2 and "2 oldest samples dropped, 3 in total" in drops[1]["detail"]
    agent.close()
