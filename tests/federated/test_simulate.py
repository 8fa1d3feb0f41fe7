"""The simulator against independent oracles: eager Keras per client, Keras fit, a centralized step."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from federated import DPConfig, ServerConfig
from federated.schedule import client_batches, padded_plan
from federated.simulate import SimulationConfig, plan, read_history, simulate
from tests.conftest import ROOT
from tests.federated.sim_helpers import SIM_ENV, simulate_killed_after

SMALL = SimulationConfig(model="mlp-small", data="digits", clients=12, fraction=0.5, local_epochs=2, batch=7,
                         lr=0.1, rounds=3)


@pytest.fixture(scope="module")
def digits_setup():
    from federated.simulate import _setup

    return _setup(SMALL)


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.mark.parametrize(("engine", "mu"), [("vmap", 0.0), ("vmap", 0.5), ("loop", 0.0), ("loop", 0.5)])
def test_one_graph_call_for_all_clients_equals_per_client_eager_keras(digits_setup, engine, mu) -> None:
    from federated.tf_clients import ClientTrainer, build_model, train_client_naive

    s = digits_setup
    model = build_model("mlp-small", s.sample_shape, 10, seed=1)
    w0 = [v.numpy() for v in model.trainable_variables]
    trainer = ClientTrainer(model, s.x_train, s.y_train, lr=0.2, mu=mu, engine=engine)
    clients = [0, 3, 5, 11]
    # different client sizes, 2 epochs, batch 7 with a partial last batch, shuffled per epoch
    batches = [[s.parts[c][b] for b in client_batches(0, 1, c, s.parts[c].size, 2, 7)] for c in clients]
    got, losses = trainer.train_round(w0, *padded_plan(batches))
    oracle_model = build_model("mlp-small", s.sample_shape, 10, seed=1)
    for b, w in zip(batches, got):
        ref = train_client_naive(oracle_model, w0, s.x_train, s.y_train, b, lr=0.2, mu=mu)
        assert _max_diff(ref, w) < 1e-5
        assert _max_diff(ref, w0) > 1e-2  # training moved the weights
    assert np.isfinite(losses).all()
    trainer.train_round(w0, *padded_plan(batches[:2]))  # other shapes: the same graph, no retracing
    assert trainer._round.experimental_get_tracing_count() == 1


def test_cnn_clients_in_one_graph_call_equal_eager_keras(digits_setup) -> None:
    from federated.tf_clients import ClientTrainer, build_model, train_client_naive

    s = digits_setup
    model = build_model("cnn", s.sample_shape, 10, seed=3)
    w0 = [v.numpy() for v in model.trainable_variables]
    trainer = ClientTrainer(model, s.x_train, s.y_train, lr=0.1)
    assert trainer.engine == "loop"  # convolutions: the graph loop over clients
    batches = [[s.parts[c][b] for b in client_batches(0, 2, c, s.parts[c].size, 1, 16)] for c in (1, 2)]
    got, _ = trainer.train_round(w0, *padded_plan(batches))
    oracle = build_model("cnn", s.sample_shape, 10, seed=3)
    for b, w in zip(batches, got):
        assert _max_diff(train_client_naive(oracle, w0, s.x_train, s.y_train, b, lr=0.1), w) < 1e-5


def test_one_graph_call_equals_keras_fit_per_client(digits_setup) -> None:
    from federated.tf_clients import ClientTrainer, build_model, compile_sgd, train_client_keras_fit

    s = digits_setup
    model = build_model("mlp-small", s.sample_shape, 10, seed=2)
    w0 = [v.numpy() for v in model.trainable_variables]
    trainer = ClientTrainer(model, s.x_train, s.y_train, lr=0.1)
    c = 4
    orders = [np.random.default_rng(e).permutation(s.parts[c].size) for e in range(3)]
    batches = [s.parts[c][o[i : i + 10]] for o in orders for i in range(0, o.size, 10)]
    (got,), _ = trainer.train_round(w0, *padded_plan([batches]))
    fit_model = compile_sgd(build_model("mlp-small", s.sample_shape, 10, seed=2), 0.1)
    ref = train_client_keras_fit(fit_model, w0, s.x_train[s.parts[c]], s.y_train[s.parts[c]], orders, 10)
    assert _max_diff(ref, got) < 1e-5


def test_fedsgd_round_equals_a_centralized_gradient_step_on_the_union() -> None:
    import tensorflow as tf

    from federated.tf_clients import build_model

    cfg = SimulationConfig(model="mlp-small", data="digits", clients=8, fraction=0.5, lr=0.3, rounds=1,
                           server=ServerConfig(strategy="fedsgd"))
    p = plan(cfg)
    chosen = [c for c in p.clients if c.client_id in p.schedule[0]]
    x = np.concatenate([c.x for c in chosen])
    y = np.concatenate([c.y for c in chosen])
    model = build_model("mlp-small", x.shape[1:], 10, seed=0)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    grads = tape.gradient(loss, model.trainable_variables)
    expected = [w - 0.3 * g.numpy() for w, g in zip(p.initial_weights, grads)]
    result = simulate(cfg, progress=False)
    assert _max_diff(expected, result.final_weights) < 1e-5
    assert _max_diff(p.initial_weights, result.final_weights) > 1e-3


def test_plan_matches_simulate_and_a_hand_rolled_fedavg() -> None:
    """TFF-parity hook: the plan's data, initial weights and schedule reproduce simulate's FedAvg."""
    from federated.fedavg import weighted_mean
    from federated.tf_clients import build_model, train_client_naive

    cfg = SimulationConfig(model="mlp-small", data="digits", clients=10, fraction=0.3, local_epochs=2, batch=16,
                           lr=0.1, rounds=2, client_shuffle=False)
    p = plan(cfg)
    assert len(p.schedule) == 2 and all(len(r) == 3 for r in p.schedule)
    assert sum(len(c.y) for c in p.clients) + len(p.test.y) == 1797
    model = build_model("mlp-small", p.test.x.shape[1:], 10, seed=99)
    by_id = {c.client_id: c for c in p.clients}
    w = p.initial_weights
    for ids in p.schedule:
        trained = []
        for cid in ids:
            c = by_id[cid]
            batches = [np.arange(i, min(i + 16, len(c.y))) for _ in range(2) for i in range(0, len(c.y), 16)]
            trained.append(train_client_naive(model, w, c.x, c.y, batches, lr=0.1))
        w = weighted_mean(trained, [len(by_id[cid].y) for cid in ids])
    result = simulate(cfg, progress=False)
    assert _max_diff(w, result.final_weights) < 1e-5


def test_dropouts_stragglers_min_clients_and_byzantine_clients() -> None:
    cfg = SimulationConfig(model="mlp-small", data="digits", clients=10, fraction=0.5, batch=20, rounds=4,
                           dropout=0.5, straggler_prob=0.5, straggler_slowdown=10, deadline=8, byzantine=2,
                           byzantine_scale=100.0,
                           server=ServerConfig(min_clients=2, max_update_norm=50.0))
    result = simulate(cfg, progress=False)
    for row in result.history:
        assert row["selected"] == 5 and row["dropped"] + row["late"] + row["trained"] == 5
        assert all(cid in ("client-0", "client-1") and "norm" in why for cid, why in row["rejected"].items())
        if row["refused"]:
            assert row["accepted"] == 0 and row["trained"] - len(row["rejected"]) < 2
        else:
            assert row["accepted"] + len(row["rejected"]) == row["trained"] and row["accepted"] >= 2
    assert any(r["dropped"] for r in result.history) and any(r["late"] for r in result.history)
    assert any(r["rejected"] for r in result.history)
    assert np.all([np.isfinite(w).all() for w in result.final_weights])


def test_dp_rounds_report_growing_epsilon_and_compression_cuts_bytes() -> None:
    base = dict(model="mlp-small", data="digits", clients=10, fraction=0.5, batch=20, rounds=2)
    dp = simulate(SimulationConfig(**base, server=ServerConfig(dp=DPConfig(1.0, 1.0))), progress=False)
    assert 0 < dp.history[0]["epsilon"] < dp.history[1]["epsilon"]
    plain = simulate(SimulationConfig(**base), progress=False).history[0]
    q8 = simulate(SimulationConfig(**base, compression="int8"), progress=False).history[0]
    assert q8["bytes_up"] < plain["bytes_up"] / 3.5 and q8["bytes_down"] == plain["bytes_down"]
    assert abs(q8["test_accuracy"] - plain["test_accuracy"]) < 0.1


def test_resume_after_sigkill_ends_with_identical_weights(tmp_path) -> None:
    """A real SIGKILL mid-run, then --resume, against an uninterrupted run of the same config."""
    from federated import load_state

    args = ["-m", "edgeloop", "federated", "simulate", "--model", "mlp-small", "--data", "digits", "--clients", "20",
            "--fraction", "0.5", "--batch", "5", "--local-epochs", "3", "--rounds", "12", "--strategy", "fedadam",
            "--server-lr", "0.03", "--dp-clip", "5", "--dp-noise", "0.01", "--seed", "3", "--json"]
    env = SIM_ENV
    killed = tmp_path / "killed"
    assert simulate_killed_after(args, killed, 3, tmp_path / "killed.log") == -signal.SIGKILL
    done_before = len(read_history(killed))
    assert 3 <= done_before < 12
    resumed = subprocess.run([sys.executable, *args, "--out", str(killed), "--resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    full = tmp_path / "full"
    straight = subprocess.run([sys.executable, *args, "--out", str(full)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    a, b = load_state(killed / "checkpoint.npz"), load_state(full / "checkpoint.npz")
    assert a.round == b.round == 12
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x, y)
    assert [r["test_accuracy"] for r in read_history(killed)] == [r["test_accuracy"] for r in read_history(full)]
    assert read_history(killed)[-1]["epsilon"] == read_history(full)[-1]["epsilon"]
    # resuming a finished run with another config is refused with the changed field named
    other = subprocess.run([sys.executable, *args[:-1], "--lr", "0.2", "--out", str(full), "--resume"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert other.returncode == 1 and "'lr'" in other.stderr


def test_cli_simulate_exports_a_verified_bundle_and_plots(tmp_path) -> None:
    from device import Runtime
    from tests.conftest import run_cli

    out = tmp_path / "run"
    res = run_cli("federated", "simulate", "--model", "mlp-small", "--data", "digits", "--clients", "10",
                  "--fraction", "1", "--rounds", "3", "--lr", "0.3", "--out", str(out), "--export-mode", "float32", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["rounds_done"] == 3 and report["export"]["passed"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    bundle = out / "bundles" / "digits-mlp-small-fedavg-float32"
    rt = Runtime(bundle)
    plan_ = plan(SimulationConfig(model="mlp-small", data="digits", clients=10, fraction=1, rounds=3, lr=0.3))
    # the bundle's own preprocessing is the dataset's: raw 0-16 pixels in
    raw = np.rint(plan_.test.x[:200] * 16).astype(np.uint8)
    acc = float(np.mean(rt.predict(raw).argmax(axis=1) == plan_.test.y[:200]))
    assert abs(acc - rows[-1]["test_accuracy"]) < 0.05
    png = tmp_path / "both.png"
    res = run_cli("federated", "plot", str(out), str(out / "metrics.jsonl"), "--out", str(png))
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = run_cli("federated", "simulate", "--clients", "0")
    assert res.returncode == 1 and "clients must be >= 1" in res.stderr


def test_cli_partition_json() -> None:
    from cloud.train.data import load_dataset, stratified_split
    from tests.conftest import run_cli

    res = run_cli("federated", "partition", "--data", "digits", "--clients", "30", "--scheme", "shards", "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    train, _ = stratified_split(load_dataset("digits"), 0.2, 0)
    assert s["samples"] == len(train) and s["clients"] == 30 and s["classes_per_client"]["max"] <= 2
