"""The timed simulator: FedBuff against synchronous FedAvg (simulate()), the clock, determinism, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from federated import ServerConfig, load_state
from federated.async_sim import TimedConfig, simulate_timed
from federated.clock import ClockConfig, Fleet
from federated.errors import ConfigError
from federated.fedbuff import BufferConfig
from federated.simulate import SimulationConfig, read_history, simulate
from tests.conftest import ROOT
from tests.federated.sim_helpers import SIM_ENV, simulate_killed_after

SMALL = SimulationConfig(model="mlp-small", data="digits", clients=12, fraction=0.5, local_epochs=2, batch=7,
                         lr=0.1, rounds=4)


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.mark.parametrize("server", [ServerConfig(), ServerConfig(strategy="fedavgm", server_lr=0.5)])
def test_fedbuff_with_k_equal_m_equal_clients_per_round_equals_fedavg(server: ServerConfig) -> None:
    """buffer_size = concurrency = clients per round, equal speeds, default staleness function: FedBuff's
    weights equal synchronous simulate()'s to 1e-6 every step, and sync on the clock is simulate() too."""
    # B = 10: every client (119 or 120 samples) takes 2 x 12 steps, so at equal speeds all finish together
    config = SimulationConfig(**{**SMALL.__dict__, "batch": 10, "server": server})
    m = 6  # round(0.5 * 12)
    reference = simulate(config, progress=False)
    fedbuff = simulate_timed(config, TimedConfig("fedbuff", BufferConfig(buffer_size=m, concurrency=m)), progress=False)
    sync = simulate_timed(config, TimedConfig("sync"), progress=False)
    assert _max_diff(fedbuff.final_weights, reference.final_weights) < 1e-6
    assert _max_diff(sync.final_weights, reference.final_weights) < 1e-6
    assert [r["round"] for r in fedbuff.history] == [1, 2, 3, 4]
    for a, b, c in zip(fedbuff.history, reference.history, sync.history):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6) == c["test_accuracy"]
        assert a["accepted"] == b["accepted"] == m and a["staleness_max"] == 0
        assert a["sim_seconds"] == pytest.approx(c["sim_seconds"]) and a["client_updates"] == c["client_updates"]
    assert fedbuff.history[-1]["client_updates"] == 4 * m


def test_slow_clients_stall_sync_rounds_but_not_fedbuff() -> None:
    """With 25% of clients 10x slower, a sync round waits for the slowest; FedBuff keeps stepping. Same
    seed: identical runs; staleness appears; max_staleness refusals are counted."""
    clock = ClockConfig(slow_fraction=0.25, slow_factor=10.0)
    config = SimulationConfig(**{**SMALL.__dict__, "rounds": 6, "fraction": 0.25})
    sync = simulate_timed(config, TimedConfig("sync", clock=clock), progress=False)
    buf = TimedConfig("fedbuff", BufferConfig(buffer_size=3, concurrency=6), clock)
    a = simulate_timed(config, buf, progress=False)
    b = simulate_timed(config, buf, progress=False)
    assert _max_diff(a.final_weights, b.final_weights) == 0.0 and a.history == [
        {**r, "seconds": a.history[i]["seconds"], "eval_seconds": a.history[i]["eval_seconds"]}
        for i, r in enumerate(b.history)]
    # FedBuff's 6 steps take much less simulated time than 6 sync rounds with stragglers
    assert a.history[-1]["sim_seconds"] < 0.5 * sync.history[-1]["sim_seconds"]
    assert max(r["staleness_max"] for r in a.history) >= 1
    strict = simulate_timed(config, TimedConfig("fedbuff", BufferConfig(3, 6, max_staleness=0), clock), progress=False)
    assert strict.history[-1]["stale_refused"] > 0 and len(strict.history) == 6
    # a deadline cuts the sync rounds short and counts the late clients
    cut = simulate_timed(config, TimedConfig("sync", clock=clock, deadline_s=2.0), progress=False)
    fleet = Fleet(clock, config.clients, config.seed)
    assert cut.history[-1]["late"] > 0 and fleet.slow.sum() == 3
    assert all(r2["sim_seconds"] - r1["sim_seconds"] <= 2.0 + 1e-9 for r1, r2 in zip(cut.history, cut.history[1:]))


def test_fleet_speeds_availability_and_durations_hand_computed() -> None:
    fleet = Fleet(ClockConfig(steps_per_second=4, slow_fraction=0.5, slow_factor=5, bandwidth=1000, latency_s=0.1,
                              availability="onoff:10:5"), clients=10, seed=1)
    assert fleet.slow.sum() == 5
    fast, slow = int(np.flatnonzero(~fleet.slow)[0]), int(np.flatnonzero(fleet.slow)[0])
    assert fleet.duration(fast, 8, 500, 500) == pytest.approx(8 / 4 + 1.0 + 0.2)
    assert fleet.duration(slow, 8, 500, 500) == pytest.approx(8 / 0.8 + 1.0 + 0.2)
    c, ph = 3, fleet.phase[3]
    assert fleet.online(c, ph + 1) and not fleet.online(c, ph + 11) and fleet.online(c, ph + 16)
    assert fleet.online_throughout(c, ph + 1, ph + 9) and not fleet.online_throughout(c, ph + 1, ph + 12)
    t = fleet.next_online(ph + 11, np.array([c]))
    assert t == pytest.approx(ph + 15) and fleet.online(c, t)
    lognormal = Fleet(ClockConfig(speed="lognormal:0.5"), clients=2000, seed=0).speed
    assert np.median(lognormal) == pytest.approx(1.0, abs=0.05) and np.std(np.log(lognormal)) == pytest.approx(0.5, abs=0.03)
    for bad in ({"speed": "gamma:1"}, {"availability": "onoff:0:3"}, {"slow_factor": 0.5}, {"slow_fraction": 2}):
        with pytest.raises(ConfigError):
            ClockConfig(**bad)
    with pytest.raises(ConfigError, match="deadline"):
        simulate_timed(SimulationConfig(**{**SMALL.__dict__, "deadline": 3.0}), TimedConfig("sync"), progress=False)


def test_timed_resume_after_sigkill_ends_identical_and_plot_has_both_axes(tmp_path, capsys) -> None:
    """A real SIGKILL mid-run of a FedBuff simulation with slow clients and on/off availability, then
    --resume, against an uninterrupted run: same weights, same accuracy curve on the same clock."""
    args = ["-m", "edgeloop", "federated", "simulate", "--model", "mlp-small", "--data", "digits", "--clients", "20",
            "--batch", "5", "--local-epochs", "2", "--rounds", "14", "--strategy", "fedbuff", "--concurrency", "8",
            "--buffer-size", "3", "--server-optimizer", "fedadam", "--server-lr", "0.03", "--slow-fraction", "0.3",
            "--slow-factor", "6", "--availability", "onoff:8:3", "--dropout", "0.1", "--seed", "2", "--json"]
    env = SIM_ENV
    killed = tmp_path / "killed"
    assert simulate_killed_after(args, killed, 4, tmp_path / "killed.log") == -signal.SIGKILL
    assert 4 <= len(read_history(killed)) < 14
    resumed = subprocess.run([sys.executable, *args, "--out", str(killed), "--resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    from federated.cli import main

    full = tmp_path / "full"
    capsys.readouterr()
    assert main([*args[3:], "--out", str(full)]) == 0  # the uninterrupted run, in this process
    assert json.loads(capsys.readouterr().out)["timed"]["buffer"]["buffer_size"] == 3
    a, b = load_state(killed / "checkpoint.npz"), load_state(full / "checkpoint.npz")
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x, y)
    ha, hb = read_history(killed), read_history(full)
    assert len(ha) == len(hb) == 14
    for key in ("test_accuracy", "sim_seconds", "client_updates", "staleness_mean", "lost_offline", "lost_dropout"):
        assert [r[key] for r in ha] == [r[key] for r in hb], key
    assert hb[-1]["lost_offline"] + hb[-1]["lost_dropout"] > 0
    png = tmp_path / "both.png"
    assert main(["plot", str(full), str(killed), "--out", str(png), "--target", "0.8"]) == 0
    from PIL import Image

    assert Image.open(png).size[0] > 1.5 * Image.open(png).size[1]  # two panels side by side
