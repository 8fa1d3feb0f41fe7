"""The server: validation, strategies by hand, refusal keeps state, DP, checkpoints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from federated import (
    ClientUpdate,
    ConfigError,
    DPConfig,
    RoundRefused,
    Server,
    ServerConfig,
    StateError,
    load_state,
    save_state,
)
from federated.dp import clip
from tests.conftest import ROOT


def _init() -> list[np.ndarray]:
    return [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]


def _upd(cid: str, value: float, n: int = 1) -> ClientUpdate:
    return ClientUpdate(cid, [np.full((2, 2), value, np.float32), np.full(3, value, np.float32)], n)


def test_fedavg_round_is_the_hand_computed_weighted_average() -> None:
    server = Server(ServerConfig(), _init())
    out = server.aggregate([_upd("a", 1.0, 10), _upd("b", 4.0, 20), _upd("c", -2.0, 10)])
    expected = (10 * 1.0 + 20 * 4.0 + 10 * -2.0) / 40  # 1.75
    for w in out.weights:
        np.testing.assert_allclose(w, expected, rtol=1e-7)
    assert out.round == server.round == 1
    assert out.accepted == ("a", "b", "c") and not out.rejected
    assert out.metrics["clients_accepted"] == 3


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ([np.full((2, 2), np.nan, np.float32), np.zeros(3, np.float32)], "non-finite"),
        ([np.zeros((2, 3), np.float32), np.zeros(3, np.float32)], "shape mismatch"),
        ([np.zeros((2, 2), np.float32)], "shape mismatch"),
        ([np.zeros((2, 2), np.float64), np.zeros(3, np.float32)], "dtype mismatch"),
        ([np.full((2, 2), 100.0, np.float32), np.zeros(3, np.float32)], "norm 200 > bound 5"),
        ([np.full((2, 2), np.inf, np.float32), np.zeros(3, np.float32)], "non-finite"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason_and_do_not_touch_the_model(bad, reason) -> None:
    server = Server(ServerConfig(max_update_norm=5.0), _init())
    out = server.aggregate([_upd("good", 1.0), ClientUpdate("bad", bad, 1)])
    assert out.accepted == ("good",)
    assert reason in out.rejected["bad"]
    for w in out.weights:
        np.testing.assert_array_equal(w, 1.0)
    assert out.metrics["clients_rejected"] == 1


def test_too_few_valid_updates_refuse_the_round_and_keep_state() -> None:
    server = Server(ServerConfig(min_clients=2, strategy="fedadam", server_lr=0.1), _init())
    server.aggregate([_upd("a", 1.0), _upd("b", 2.0)])
    before = server.state()
    nan = ClientUpdate("x", [np.full((2, 2), np.nan, np.float32), np.zeros(3, np.float32)], 1)
    with pytest.raises(RoundRefused, match="1 valid update") as info:
        server.aggregate([_upd("a", 5.0), nan])
    assert "non-finite" in info.value.rejected["x"]
    after = server.state()
    assert after.round == before.round == 1
    for a, b in zip(after.weights, before.weights):
        np.testing.assert_array_equal(a, b)
    for slot in before.optimizer:
        for a, b in zip(after.optimizer[slot], before.optimizer[slot]):
            np.testing.assert_array_equal(a, b)


def test_fedavgm_and_fedadam_by_hand() -> None:
    # FedAvgM: v = 0.5 v + g; x = x - 1.0 v with g = x - aggregate
    s = Server(ServerConfig(strategy="fedavgm", server_momentum=0.5), [np.zeros(1, np.float32)])
    s.aggregate([ClientUpdate("a", [np.ones(1, np.float32)], 1)])   # g=-1, v=-1, x=1
    out = s.aggregate([ClientUpdate("a", [np.full(1, 2.0, np.float32)], 1)])  # g=-1, v=-1.5, x=2.5
    np.testing.assert_allclose(out.weights[0], [2.5])
    # FedAdam (Reddi et al.): m = 0.1 Δ, v = 0.99 τ² + 0.01 Δ², x += η m / (√v + τ)
    tau, lr = 1e-3, 0.1
    s = Server(ServerConfig(strategy="fedadam", server_lr=lr, tau=tau), [np.zeros(1, np.float32)])
    out = s.aggregate([ClientUpdate("a", [np.full(1, 2.0, np.float32)], 1)])
    m, v = 0.1 * 2.0, 0.99 * tau**2 + 0.01 * 4.0
    np.testing.assert_allclose(out.weights[0], [lr * m / (np.sqrt(v) + tau)], rtol=1e-5)
    # FedYogi's first step from v = τ²: v = τ² + 0.01 Δ² (sign(τ² - Δ²) = -1)
    s = Server(ServerConfig(strategy="fedyogi", server_lr=lr, tau=tau), [np.zeros(1, np.float32)])
    out = s.aggregate([ClientUpdate("a", [np.full(1, 2.0, np.float32)], 1)])
    v = tau**2 + 0.01 * 4.0
    np.testing.assert_allclose(out.weights[0], [lr * 0.2 / (np.sqrt(v) + tau)], rtol=1e-5)


def test_robust_aggregator_through_the_server_resists_a_byzantine_client() -> None:
    honest = [_upd(f"h{i}", 1.0 + 0.01 * i) for i in range(6)]
    evil = _upd("evil", 1e4, n=10_000)  # also claims a huge sample count
    for agg in ("median", "trimmed_mean", "krum", "multi_krum"):
        out = Server(ServerConfig(aggregator=agg, trim_beta=0.2), _init()).aggregate([*honest, evil])
        assert abs(float(out.weights[0].mean()) - 1.03) < 0.05, agg
    out = Server(ServerConfig(), _init()).aggregate([*honest, evil])
    assert float(out.weights[0].mean()) > 1000


def test_dp_clipping_bounds_each_clients_influence() -> None:
    clip_norm = 0.5
    cfg = ServerConfig(dp=DPConfig(clip_norm=clip_norm, noise_multiplier=0.0))
    honest = [_upd(f"h{i}", 0.01) for i in range(4)]
    for magnitude in (1.0, 1e3, 1e6):
        out = Server(cfg, _init()).aggregate([*honest, _upd("big", magnitude)])
        base = Server(cfg, _init()).aggregate(honest)
        shift = np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2) for a, b in zip(out.weights, base.weights)))
        # the mean of 5 clipped deltas moves by at most (C + |honest delta|) / 5 from the 4-client mean
        assert shift <= (clip_norm + 0.01 * np.sqrt(7)) / 5 + 1e-6
    clipped, norm = clip([np.full(4, 3.0, np.float32)], 1.0)
    assert norm == pytest.approx(6.0) and np.linalg.norm(clipped[0]) == pytest.approx(1.0, rel=1e-6)


def test_dp_noise_is_seeded_and_epsilon_grows_per_round() -> None:
    cfg = ServerConfig(dp=DPConfig(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5))
    a, b = Server(cfg, _init(), seed=3), Server(cfg, _init(), seed=3)
    eps = []
    for _ in range(3):
        oa = a.aggregate([_upd("x", 0.1), _upd("y", 0.2)], sampling_rate=0.1)
        ob = b.aggregate([_upd("x", 0.1), _upd("y", 0.2)], sampling_rate=0.1)
        np.testing.assert_array_equal(oa.weights[0], ob.weights[0])
        eps.append(oa.metrics["epsilon"])
    assert 0 < eps[0] < eps[1] < eps[2]
    assert not np.allclose(oa.weights[0], 0.15)  # noise was added


def test_epsilon_matches_dp_accounting_directly() -> None:
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    from federated.dp import RDP_ORDERS, epsilon

    acc = RdpAccountant(orders=list(RDP_ORDERS))
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 100)
    assert epsilon(1.1, [0.01] * 100, 1e-5) == pytest.approx(acc.get_epsilon(1e-5))


def test_checkpoint_roundtrip_continues_bit_identically(tmp_path) -> None:
    cfg = ServerConfig(strategy="fedyogi", server_lr=0.05, dp=DPConfig(clip_norm=1.0, noise_multiplier=0.5))
    rng = np.random.default_rng(0)
    rounds = [[ClientUpdate(f"c{k}", [rng.normal(size=(2, 2)).astype(np.float32), rng.normal(size=3).astype(np.float32)], 5)
               for k in range(3)] for _ in range(4)]
    full = Server(cfg, _init(), seed=7)
    for r in rounds:
        full.aggregate(r, sampling_rate=0.5)
    half = Server(cfg, _init(), seed=7)
    for r in rounds[:2]:
        half.aggregate(r, sampling_rate=0.5)
    save_state(tmp_path / "s.npz", half.state(extra={"note": "x"}))
    state = load_state(tmp_path / "s.npz")
    assert state.extra == {"note": "x"} and state.round == 2
    resumed = Server.from_state(cfg, state)
    for r in rounds[2:]:
        out = resumed.aggregate(r, sampling_rate=0.5)
    for a, b in zip(out.weights, full.weights):
        np.testing.assert_array_equal(a, b)
    assert resumed.epsilon() == full.epsilon()
    with pytest.raises(StateError, match="no checkpoint"):
        load_state(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(StateError, match="unreadable"):
        load_state(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "kwargs",
    [{"strategy": "fedfoo"}, {"aggregator": "mode"}, {"server_lr": 0}, {"trim_beta": 0.5}, {"min_clients": 0},
     {"aggregator": "median", "dp": DPConfig()}, {"max_update_norm": -1.0}],
)
def test_config_validation(kwargs) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**kwargs)


def test_core_imports_neither_tensorflow_nor_flower() -> None:
    """The numpy core, the simulator's driver and the CLI load TensorFlow only when a simulation trains."""
    code = ("import sys, federated, federated.server, federated.dp, federated.compress, federated.krum, "
            "federated.median, federated.trimmed_mean, federated.state, federated.partition, federated.schedule, "
            "federated.simulate, federated.cli, federated.sim_cli\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'flwr', 'dp_accounting'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
