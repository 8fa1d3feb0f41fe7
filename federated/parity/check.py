"""One parity run: the simulator's exact plan through TFF, through ``simulate`` and through numpy.

``from_simulation`` turns a :class:`federated.simulate.SimulationPlan` into the exchange plan;
``run_parity`` runs the three engines on it and reports their final weights' distances, test
accuracies and seconds per round. It needs ``client_shuffle=False`` (TFF's ``batch()`` keeps data
order), the plain ``fedavg`` strategy with the mean aggregator, and an MLP from the registry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from federated.parity import reference
from federated.parity.errors import ParityError
from federated.parity.exchange import ParityPlan, read_weights, write_exchange
from federated.parity.run import TFF_VENV, run_tff

TOLERANCE = 1e-5  # max |Δw| allowed between TFF's and edgeloop's final weights


def check_config(config: Any) -> None:
    """Raise ParityError unless ``config`` (a SimulationConfig) describes a run TFF can reproduce exactly."""
    from models.mlp import build_mlp
    from models.registry import get_model

    problems = []
    if config.client_shuffle:
        problems.append("client_shuffle must be False (TFF's dataset.batch() keeps data order)")
    if get_model(config.model).builder is not build_mlp:
        problems.append(f"model must be an MLP from the registry (e.g. mlp-small), got {config.model!r}")
    s = config.server
    if (s.strategy, s.aggregator, s.proximal_mu, s.dp, s.max_update_norm) != ("fedavg", "mean", 0.0, None, None):
        problems.append("server must be plain FedAvg: strategy 'fedavg', aggregator 'mean', no FedProx, DP or norm bound")
    if config.batch is None:
        problems.append("batch must be set (TFF batches the client datasets)")
    extras = (config.dropout, config.straggler_prob, config.deadline, config.compression, config.byzantine)
    if extras != (0.0, 0.0, None, "none", 0):
        problems.append("no dropout, stragglers, deadline, compression or byzantine clients")
    if problems:
        raise ParityError("this simulation cannot be reproduced in TFF: " + "; ".join(problems))


def from_simulation(sim_plan: Any, config: Any) -> ParityPlan:
    """The exchange plan of ``simulate(config)``: same client data, initial weights and client order."""
    from models.registry import get_model

    check_config(config)
    index = {c.client_id: k for k, c in enumerate(sim_plan.clients)}
    schedule = np.array([[index[cid] for cid in ids] for ids in sim_plan.schedule], dtype=np.int64)
    weights = tuple(np.asarray(w, dtype=np.float32) for w in sim_plan.initial_weights)
    return ParityPlan(
        clients=tuple((np.asarray(c.x, dtype=np.float32), np.asarray(c.y)) for c in sim_plan.clients),
        initial_weights=weights,
        schedule=schedule,
        input_shape=tuple(int(d) for d in sim_plan.clients[0].x.shape[1:]),
        hidden=tuple(int(h) for h in get_model(config.model).kwargs.get("hidden", (128,))),
        num_classes=int(weights[-1].shape[0]),
        client_lr=float(config.lr),
        server_lr=float(config.server.server_lr),
        epochs=int(config.local_epochs),
        batch_size=int(config.batch),
    )


def _engine_name(config: Any, sim_plan: Any) -> str:
    """The client engine ``simulate`` used (``auto`` resolved)."""
    from federated.tf_clients import build_model, pick_engine

    model = build_model(config.model, sim_plan.clients[0].x.shape[1:], len(sim_plan.initial_weights[-1]), config.seed)
    return pick_engine(model, config.engine)


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest elementwise |a − b| over all weight arrays (shapes must match)."""
    if [np.shape(x) for x in a] != [np.shape(y) for y in b]:
        raise ParityError(f"weight shapes differ: {[np.shape(x) for x in a]} vs {[np.shape(y) for y in b]}")
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(a, b))


@dataclass(frozen=True)
class EngineRun:
    """One engine's result. ``round_seconds`` is its own training time per round (evaluation excluded)."""

    engine: str
    weights: list[np.ndarray]
    round_seconds: list[float]
    test_accuracy: float

    @property
    def first_round_seconds(self) -> float:
        return self.round_seconds[0]

    @property
    def steady_round_seconds(self) -> float:
        """Median over rounds 2 onward (round 1 includes tracing/compilation), or round 1 if alone."""
        later = self.round_seconds[1:] or self.round_seconds
        return float(np.median(later))


@dataclass(frozen=True)
class ParityReport:
    tff: EngineRun
    edgeloop: EngineRun
    numpy: EngineRun
    diffs: dict[str, float]  # "tff-edgeloop", "tff-numpy", "edgeloop-numpy", "initial-final" (how far training moved)
    tff_versions: str
    tff_leftover_pids: tuple[int, ...]
    tff_wall_seconds: float  # the whole TFF process: imports, building the computations, rounds
    tff_build_seconds: float  # build_weighted_fed_avg alone
    tff_network_isolated: bool  # worker_binary listened in a private, loopback-only network namespace

    @property
    def passed(self) -> bool:
        return self.diffs["tff-edgeloop"] <= TOLERANCE


def run_parity(config: Any, workdir: str | Path, *, tff_venv: str | Path = TFF_VENV, timeout: float = 600.0) -> ParityReport:
    """Run ``config`` (a SimulationConfig) in TFF, in ``simulate`` and in numpy; files go to ``workdir``."""
    from federated.simulate import plan, simulate

    config = replace(config, eval_every=config.rounds)  # evaluate once, at the end: not part of round times
    check_config(config)
    sim_plan = plan(config)
    pplan = from_simulation(sim_plan, config)
    workdir = Path(workdir)
    exchange = write_exchange(workdir / "exchange.npz", pplan)
    result_path = workdir / "tff-result.npz"
    tff_run = run_tff(exchange, result_path, venv=tff_venv, timeout=timeout)
    tff_w, tff_rest = read_weights(result_path)

    ours = simulate(config, progress=False)
    engine = _engine_name(config, sim_plan)
    t0 = time.perf_counter()
    np_w = reference.fedavg(pplan)
    np_seconds = (time.perf_counter() - t0) / pplan.rounds

    x_test, y_test = sim_plan.test.x, sim_plan.test.y
    runs = {
        "tff": EngineRun("TFF 0.87", tff_w, [float(s) for s in tff_rest["round_seconds"]],
                         reference.accuracy(tff_w, x_test, y_test)),
        "edgeloop": EngineRun(f"edgeloop simulate ({engine})", list(ours.final_weights), [float(r["seconds"]) for r in ours.history],
                              reference.accuracy(ours.final_weights, x_test, y_test)),
        "numpy": EngineRun("numpy float64 oracle", np_w, [np_seconds] * pplan.rounds,
                           reference.accuracy(np_w, x_test, y_test)),
    }
    diffs = {
        "tff-edgeloop": max_abs_diff(runs["tff"].weights, runs["edgeloop"].weights),
        "tff-numpy": max_abs_diff(runs["tff"].weights, runs["numpy"].weights),
        "edgeloop-numpy": max_abs_diff(runs["edgeloop"].weights, runs["numpy"].weights),
        "initial-final": max_abs_diff(pplan.initial_weights, runs["edgeloop"].weights),
    }
    return ParityReport(runs["tff"], runs["edgeloop"], runs["numpy"], diffs, str(tff_rest["versions"]),
                        tff_run.leftover_pids, tff_run.wall_seconds, float(tff_rest["build_seconds"]), tff_run.network_isolated)
