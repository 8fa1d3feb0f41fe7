"""TFF parity: the numpy oracle against TensorFlow and the simulator, the exchange file, and the
runner that must end TFF's leftover process group. Tests marked ``tff`` need ``.venv-tff`` and
run only under ``make tff-parity`` (EDGELOOP_TFF=1, EDGELOOP_TFF_VENV=.venv-tff)."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from federated.parity import reference
from federated.parity.check import check_config, from_simulation, max_abs_diff
from federated.parity.errors import ParityError, TFFRunError
from federated.parity.exchange import ParityPlan, mlp_shapes, read_exchange, read_weights, write_exchange
from federated.parity.run import TFF_VENV, run_tff
from federated.simulate import SimulationConfig, plan, simulate

TFF_ENV = Path(os.environ.get("EDGELOOP_TFF_VENV", TFF_VENV))
RUN_TFF = os.environ.get("EDGELOOP_TFF") == "1" and (TFF_ENV / ".installed-stamp").is_file()


def _random_plan(seed: int = 0, sizes=(23, 40, 9), epochs: int = 2, batch: int = 7, server_lr: float = 0.7) -> ParityPlan:
    """Uneven clients with partial last batches, a different client order every round."""
    rng = np.random.default_rng(seed)
    clients = tuple((rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n)) for n in sizes)
    weights = tuple((0.3 * rng.standard_normal(s)).astype(np.float32) for s in mlp_shapes((8, 8, 1), (16,), 10))
    schedule = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    return ParityPlan(clients, weights, schedule, (8, 8, 1), (16,), 10, client_lr=0.2, server_lr=server_lr,
                      epochs=epochs, batch_size=batch)


def test_numpy_gradients_equal_tensorflow_gradients() -> None:
    import tensorflow as tf

    from federated.tf_clients import build_model

    model = build_model("mlp-small", (8, 8, 1), 10, seed=3)
    rng = np.random.default_rng(1)
    x, y = rng.random((13, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 13)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    expected = tape.gradient(loss, model.trainable_variables)
    weights = [v.numpy() for v in model.trainable_variables]
    np.testing.assert_allclose(reference.logits(weights, x), logits.numpy(), atol=1e-5)
    got = reference.gradients(weights, x, y)
    assert max_abs_diff(got, [g.numpy() for g in expected]) < 1e-6
    assert max(float(np.abs(g).max()) for g in got) > 1e-3


@pytest.mark.parametrize(
    "config",
    [
        SimulationConfig(model="mlp-small", data="digits", clients=6, fraction=0.5, local_epochs=1, batch=20, lr=0.1,
                         rounds=3, client_shuffle=False),
        SimulationConfig(model="mlp-small", data="digits", clients=5, fraction=0.6, local_epochs=2, batch=7, lr=0.2,
                         rounds=2, partition="dirichlet", client_shuffle=False, seed=4),
    ],
    ids=["iid-E1-B20", "dirichlet-E2-B7"],
)
@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_simulate_equals_numpy_fedavg_on_the_parity_plan(config: SimulationConfig, engine: str) -> None:
    config = replace(config, engine=engine)
    pplan = from_simulation(plan(config), config)
    expected = reference.fedavg(pplan)
    got = simulate(config, progress=False).final_weights
    assert max_abs_diff(got, expected) <= 1e-5
    assert max_abs_diff(pplan.initial_weights, expected) > 1e-2  # the rounds did move the weights
    assert [tuple(w.shape) for w in got] == mlp_shapes((8, 8, 1), (32,), 10)


def test_from_simulation_keeps_clients_order_and_weights() -> None:
    config = SimulationConfig(model="mlp-small", data="digits", clients=7, fraction=0.4, batch=10, rounds=3,
                              client_shuffle=False, seed=2)
    sim_plan = plan(config)
    pplan = from_simulation(sim_plan, config)
    assert pplan.schedule.shape == (3, 3)
    for ids, row in zip(sim_plan.schedule, pplan.schedule):
        assert [sim_plan.clients[k].client_id for k in row] == list(ids)
    for c, (x, y) in zip(sim_plan.clients, pplan.clients):
        assert np.array_equal(c.x, x) and np.array_equal(c.y, y)
    assert all(np.array_equal(a, b) for a, b in zip(sim_plan.initial_weights, pplan.initial_weights))
    assert (pplan.hidden, pplan.batch_size, pplan.client_lr, pplan.server_lr) == ((32,), 10, 0.1, 1.0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"client_shuffle": True}, "client_shuffle"),
        ({"model": "cnn"}, "MLP"),
        ({"dropout": 0.2}, "dropout"),
        ({"batch": None}, "batch"),
    ],
)
def test_unreproducible_configs_are_refused(changes: dict, message: str) -> None:
    base = {"model": "mlp-small", "data": "digits", "clients": 4, "client_shuffle": False}
    with pytest.raises(ParityError, match=message):
        check_config(SimulationConfig(**{**base, **changes}))


def test_exchange_round_trip(tmp_path: Path) -> None:
    p = _random_plan()
    back = read_exchange(write_exchange(tmp_path / "ex.npz", p))
    assert back.schedule.tolist() == p.schedule.tolist()
    assert (back.input_shape, back.hidden, back.num_classes, back.epochs, back.batch_size) == ((8, 8, 1), (16,), 10, 2, 7)
    assert (back.client_lr, back.server_lr) == (0.2, 0.7)
    for (x, y), (x2, y2) in zip(p.clients, back.clients):
        assert np.array_equal(x, x2) and np.array_equal(y, y2) and x2.dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in zip(p.initial_weights, back.initial_weights))


def test_malformed_plans_name_the_field(tmp_path: Path) -> None:
    p = _random_plan()
    fields = {f: getattr(p, f) for f in p.__dataclass_fields__}
    with pytest.raises(ParityError, match=r"schedule: client ids must be in \[0, 2\]"):
        ParityPlan(**{**fields, "schedule": np.array([[0, 3]])})
    with pytest.raises(ParityError, match="a client appears twice"):
        ParityPlan(**{**fields, "schedule": np.array([[1, 1]])})
    with pytest.raises(ParityError, match="initial_weights"):
        ParityPlan(**{**fields, "initial_weights": p.initial_weights[:2]})
    with pytest.raises(ParityError, match=r"clients\[0\].x: expected float32"):
        ParityPlan(**{**fields, "clients": ((p.clients[0][0].astype(np.float64), p.clients[0][1]),)})
    (tmp_path / "other.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ParityError, match="not an exchange file"):
        read_exchange(tmp_path / "other.npz")


def _fake_venv(tmp_path: Path, body: str) -> Path:
    """A venv whose ``bin/python`` is a shell script: ``$1`` the TFF script, ``$2`` exchange, ``$3`` result."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + body)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return tmp_path / "venv"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_runner_ends_the_servers_left_behind(tmp_path: Path) -> None:
    # Like TFF: a server that outlives the script, then the result, then a clean exit.
    venv = _fake_venv(tmp_path, 'sleep 300 &\necho $! > "$3.server"\necho done\ntouch "$3"\n')
    result = tmp_path / "result.npz"
    run = run_tff(tmp_path / "ex.npz", result, venv=venv, timeout=30)
    server = int(Path(f"{result}.server").read_text())
    assert server in run.leftover_pids
    assert not _alive(server)
    assert "done" in run.log


def test_runner_keeps_tff_off_the_network_where_it_can(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, 'readlink /proc/self/ns/net > "$3.ns"\ntouch "$3"\n')
    result = tmp_path / "result.npz"
    isolated = run_tff(tmp_path / "ex.npz", result, venv=venv, timeout=30)
    assert (Path(f"{result}.ns").read_text().strip() != os.readlink("/proc/self/ns/net")) == isolated.network_isolated
    plain = run_tff(tmp_path / "ex.npz", result, venv=venv, timeout=30, isolate_network=False)
    assert Path(f"{result}.ns").read_text().strip() == os.readlink("/proc/self/ns/net")
    assert not plain.network_isolated


def test_runner_times_out_and_ends_the_group(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, 'sleep 300 &\necho $! > "$3.server"\nexec sleep 300\n')
    t0 = time.monotonic()
    with pytest.raises(TFFRunError, match="ran past 1 s"):
        run_tff(tmp_path / "ex.npz", tmp_path / "result.npz", venv=venv, timeout=1)
    assert time.monotonic() - t0 < 15
    assert not _alive(int((tmp_path / "result.npz.server").read_text()))


def test_runner_reports_a_failing_script(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, "echo 'ValueError: boom' >&2\nexit 3\n")
    with pytest.raises(TFFRunError, match=r"(?s)exited with 3.*ValueError: boom"):
        run_tff(tmp_path / "ex.npz", tmp_path / "result.npz", venv=venv, timeout=30)
    with pytest.raises(TFFRunError, match="make tff-env"):
        run_tff(tmp_path / "ex.npz", tmp_path / "result.npz", venv=tmp_path / "nowhere")


@pytest.mark.tff
@pytest.mark.skipif(not RUN_TFF, reason="needs .venv-tff and EDGELOOP_TFF=1 (make tff-parity)")
def test_tff_build_weighted_fed_avg_equals_numpy_fedavg(tmp_path: Path) -> None:
    p = _random_plan()
    run = run_tff(write_exchange(tmp_path / "ex.npz", p), tmp_path / "res.npz", venv=TFF_ENV, timeout=300)
    got, rest = read_weights(tmp_path / "res.npz")
    expected = reference.fedavg(p)
    assert max_abs_diff(got, expected) <= 1e-5
    assert max_abs_diff(p.initial_weights, expected) > 1e-2
    assert rest["round_seconds"].shape == (3,) and "tensorflow-federated 0.87.0" in str(rest["versions"])
    assert all(not _alive(pid) for pid in run.leftover_pids)
