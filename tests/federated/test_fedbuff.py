"""FedBuff's buffered server against the synchronous core server and hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from federated import ClientUpdate, ConfigError, DPConfig, Server, ServerConfig, load_state, save_state
from federated.fedbuff import BufferConfig, BufferedServer
from federated.staleness import Staleness, parse


def _weights(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]


def _client_weights(rng, base, k):
    return [[(w + rng.normal(0, 0.3, size=w.shape)).astype(np.float32) for w in base] for _ in range(k)]


@pytest.mark.parametrize("server", [
    ServerConfig(),
    ServerConfig(strategy="fedavgm", server_lr=0.7),
    ServerConfig(strategy="fedadam", server_lr=0.05),
    ServerConfig(aggregator="median"),
    ServerConfig(aggregator="trimmed_mean", trim_beta=0.2),
    ServerConfig(aggregator="multi_krum", krum_byzantine=1, multi_krum_m=3),
    ServerConfig(dp=DPConfig(clip_norm=0.5, noise_multiplier=0.3)),
])
@pytest.mark.parametrize("staleness", ["constant", "polynomial:0.5", "hinge:10:4"])
def test_fresh_buffer_equals_a_synchronous_round(server: ServerConfig, staleness: str) -> None:
    """K updates all trained on the current version: a FedBuff step is the sync round (any optimizer,
    aggregator or DP), for every staleness function, since s(0) = 1."""
    rng = np.random.default_rng(0)
    initial = _weights(rng)
    sync = Server(server, initial, seed=5)
    buf = BufferedServer(server, BufferConfig(buffer_size=5, concurrency=5, staleness=staleness), initial, seed=5)
    for t in range(4):
        base = sync.weights
        trained = _client_weights(rng, base, 5)
        sizes = [int(n) for n in rng.integers(5, 50, size=5)]
        expected = sync.aggregate([ClientUpdate(f"c{i}", w, n) for i, (w, n) in enumerate(zip(trained, sizes))])
        arrivals = [buf.submit(ClientUpdate(f"c{i}", w, n), t, base) for i, (w, n) in enumerate(zip(trained, sizes))]
        assert all(a.accepted and a.staleness == 0 and a.weight == 1.0 for a in arrivals)
        assert [a.step is not None for a in arrivals] == [False] * 4 + [True]
        assert buf.version == t + 1
        for x, y in zip(buf.weights, expected.weights):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
        if server.dp is not None:
            assert arrivals[-1].step.metrics["epsilon"] == pytest.approx(expected.metrics["epsilon"])


def test_stale_updates_are_weighted_by_the_staleness_function_hand_computed() -> None:
    rng = np.random.default_rng(1)
    x0 = _weights(rng)
    buf = BufferedServer(ServerConfig(), BufferConfig(buffer_size=2, staleness="polynomial:0.5"), x0)
    v0 = buf.weights
    w_a, w_b = _client_weights(rng, v0, 2)
    buf.submit(ClientUpdate("a", w_a, 10), 0, v0)
    buf.submit(ClientUpdate("b", w_b, 30), 0, v0)  # step 1
    x1 = buf.weights
    w_c, = _client_weights(rng, x1, 1)
    w_d, = _client_weights(rng, v0, 1)  # d trained from version 0 the whole time
    # push the server to version 3 with fresh pairs, then let c (from v1) and d (from v0) arrive
    for v in (1, 2):
        base = buf.weights
        for i, w in enumerate(_client_weights(rng, base, 2)):
            buf.submit(ClientUpdate(f"f{v}{i}", w, 5), v, base)
    assert buf.version == 3
    x3 = buf.weights
    a_c = buf.submit(ClientUpdate("c", w_c, 20), 1, x1)
    a_d = buf.submit(ClientUpdate("d", w_d, 60), 0, v0)
    assert (a_c.staleness, a_d.staleness) == (2, 3)
    assert a_c.weight == pytest.approx(3 ** -0.5) and a_d.weight == pytest.approx(0.5)
    expected = [x + (20 * 3 ** -0.5 * (c - b1) + 60 * 0.5 * (d - b0)) / 80
                for x, c, b1, d, b0 in zip(x3, w_c, x1, w_d, v0)]
    for got, want in zip(buf.weights, expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert a_d.step.metrics["staleness_max"] == 3 and a_d.step.metrics["staleness_mean"] == 2.5


def test_max_staleness_refuses_and_counts_and_leaves_the_buffer_alone() -> None:
    rng = np.random.default_rng(2)
    x0 = _weights(rng)
    buf = BufferedServer(ServerConfig(), BufferConfig(buffer_size=1, max_staleness=1), x0)
    for v in range(3):
        base = buf.weights
        buf.submit(ClientUpdate("f", _client_weights(rng, base, 1)[0], 5), v, base)
    before = buf.weights
    late = buf.submit(ClientUpdate("slow", _client_weights(rng, x0, 1)[0], 5), 0, x0)
    assert not late.accepted and late.stale_refused and late.staleness == 3 and "max_staleness 1" in late.reason
    assert buf.counters["stale_refused"] == 1 and buf.version == 3 and buf.buffered == ()
    for x, y in zip(buf.weights, before):
        np.testing.assert_array_equal(x, y)


def test_invalid_updates_are_rejected_with_a_reason() -> None:
    rng = np.random.default_rng(3)
    x0 = _weights(rng)
    buf = BufferedServer(ServerConfig(max_update_norm=5.0), BufferConfig(buffer_size=3), x0)
    good = _client_weights(rng, x0, 1)[0]
    nan = [np.full_like(w, np.nan) for w in x0]
    shape = [x0[0][:-1], x0[1]]
    huge = [w + 100 for w in x0]
    reasons = [buf.submit(ClientUpdate("n", nan, 5), 0, x0).reason, buf.submit(ClientUpdate("s", shape, 5), 0, x0).reason,
               buf.submit(ClientUpdate("h", huge, 5), 0, x0).reason, buf.submit(ClientUpdate("z", good, 0), 0, x0).reason,
               buf.submit(ClientUpdate("v", good, 5), 7, x0).reason]
    assert "non-finite" in reasons[0] and "shape" in reasons[1] and "bound" in reasons[2]
    assert "num_samples" in reasons[3] and "unknown model version" in reasons[4]
    assert buf.submit(ClientUpdate("g", good, 5), 0, x0).accepted
    dup = buf.submit(ClientUpdate("g", good, 5), 0, x0)
    assert not dup.accepted and "already" in dup.reason
    assert buf.counters["rejected"] == 6 and buf.buffered == ("g",) and buf.version == 0
    bad_delta = buf.submit_delta("d", [np.full_like(w, np.inf) for w in x0], 5, 0)
    assert not bad_delta.accepted and "non-finite" in bad_delta.reason


def test_robust_median_on_the_buffer_ignores_an_outlier() -> None:
    x0 = [np.zeros((3,), np.float32)]
    buf = BufferedServer(ServerConfig(aggregator="median"), BufferConfig(buffer_size=3), x0)
    for cid, value in (("a", 1.0), ("b", 2.0), ("evil", 1e6)):
        out = buf.submit(ClientUpdate(cid, [np.full(3, value, np.float32)], 1), 0, x0)
    assert out.step is not None
    np.testing.assert_array_equal(buf.weights[0], np.full(3, 2.0, np.float32))


def test_refused_step_drops_the_buffer_and_keeps_the_model() -> None:
    x0 = [np.zeros((3,), np.float32)]
    # krum with f = 2 needs more than 2f + 2 = 6 updates: a buffer of 3 is refused
    buf = BufferedServer(ServerConfig(aggregator="krum", krum_byzantine=2), BufferConfig(buffer_size=3), x0)
    outs = [buf.submit(ClientUpdate(c, [np.full(3, i, np.float32)], 1), 0, x0) for i, c in enumerate("abc")]
    assert outs[-1].step is None and outs[-1].step_refused
    assert buf.version == 0 and buf.buffered == () and buf.counters["dropped_by_refused_step"] == 3
    np.testing.assert_array_equal(buf.weights[0], x0[0])


def test_checkpoint_with_a_half_full_buffer_continues_identically(tmp_path) -> None:
    rng = np.random.default_rng(5)
    x0 = _weights(rng)
    cfg, bcfg = ServerConfig(strategy="fedadam", server_lr=0.1, dp=DPConfig(1.0, 0.5)), BufferConfig(buffer_size=3)
    a = BufferedServer(cfg, bcfg, x0, seed=9)
    stream = [(f"c{i}", w, int(rng.integers(1, 9)), max(0, i // 3 - (i % 2))) for i, w in
              enumerate(w for _ in range(4) for w in _client_weights(rng, x0, 3))]
    bases = {0: a.weights}

    def feed(server, items):
        for cid, w, n, v in items:
            v = min(v, server.version)
            server.submit(ClientUpdate(cid, w, n), v, bases.setdefault(v, server.weights))

    feed(a, stream[:7])
    assert len(a.buffered) == 1
    save_state(tmp_path / "c.npz", a.state(extra={"mine": 1}))
    state = load_state(tmp_path / "c.npz")
    assert state.extra["mine"] == 1
    b = BufferedServer.from_state(cfg, bcfg, state)
    assert b.buffered == a.buffered and b.counters == a.counters
    feed(a, stream[7:])
    feed(b, stream[7:])
    assert a.version == b.version == 4
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x, y)
    assert a.epsilon() == b.epsilon()


def test_staleness_functions_hand_computed_and_parsed() -> None:
    assert [Staleness("constant").weight(t) for t in (0, 5)] == [1.0, 1.0]
    assert Staleness("polynomial", 0.5).weight(3) == pytest.approx(0.5)
    assert Staleness("polynomial", 1.0).weight(4) == pytest.approx(0.2)
    hinge = Staleness("hinge", 10, 4)
    assert [hinge.weight(t) for t in (0, 4)] == [1.0, 1.0] and hinge.weight(6) == pytest.approx(1 / 21)
    assert parse("polynomial:0.5") == Staleness("polynomial", 0.5) and parse("polynomial").a == 0.5
    assert parse("hinge:2:3") == Staleness("hinge", 2.0, 3.0) and parse("constant").kind == "constant"
    assert parse(Staleness("hinge", 2, 3).spec()) == Staleness("hinge", 2, 3)
    for bad in ("quadratic", "polynomial:x", "constant:1", "polynomial:-1"):
        with pytest.raises(ConfigError):
            parse(bad)
    for kwargs in ({"buffer_size": 0}, {"concurrency": 0}, {"max_staleness": -1}, {"staleness": "nope"}):
        with pytest.raises(ConfigError):
            BufferConfig(**kwargs)
    with pytest.raises(ConfigError, match="min_clients"):
        BufferedServer(ServerConfig(min_clients=4), BufferConfig(buffer_size=3), [np.zeros(2, np.float32)])


def test_async_modules_import_neither_tensorflow_nor_flower() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import sys, federated.fedbuff, federated.staleness, federated.clock, federated.async_sim, federated.plots\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'flwr', 'dp_accounting'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
