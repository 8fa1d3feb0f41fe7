"""The Flower ServerApp of real federated rounds; aggregation is the ``federated`` core's.

Flower carries the messages (SuperLink ↔ SuperNodes); everything that decides what the
global model becomes (validation, the strategy, robust aggregation, DP) is
:class:`federated.Server`, the same code the simulator runs. After every round the server
commits, in this order: a device bundle of the new global model (``DIR/bundles/round-R``,
copied to ``DIR/bundle``), then the checkpoint ``DIR/checkpoint.npz`` (the commit point,
which also holds the round history), then ``DIR/rounds.json``. A restarted server loads the
checkpoint and continues with the next round, so no completed round is lost.

``mode="async"`` (:class:`AsyncRunner`) drops the round barrier: FedBuff on Flower's low-level
message API. The server keeps ``concurrency`` devices busy, hands every reply to
:class:`federated.fedbuff.BufferedServer`, commits a new version every ``buffer_size`` accepted
replies, and sends the current model to each device the moment it is idle. A device that dies
mid-training costs only its own update (its message times out after ``round_timeout_s``, or
Flower answers with an error), and the devices run the same ClientApp as in synchronous rounds.

This process never imports TensorFlow: new bundles are written by patching the trainable
.tflite's weights (:mod:`device.fl.reweight`), and evaluation runs in LiteRT.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_NAME = "fl-server.json"
CHECKPOINT = "checkpoint.npz"
ROUNDS = "rounds.json"
PULL_INTERVAL_S = 0.02  # Grid.send_and_receive sleeps 3 s between pulls; we poll pull_messages ourselves


@dataclass(frozen=True)
class FLServerConfig:
    """One federated run: where it lives, how many rounds, and the core's :class:`ServerConfig` fields."""

    out: str
    bundle: str  # the initial trainable bundle
    rounds: int = 3
    min_clients: int = 2  # fewer valid updates than this: the round is refused (the core's rule)
    wait_for_clients: int | None = None  # connected devices to wait for before a round; default min_clients
    local_epochs: int = 1
    round_timeout_s: float = 60.0
    clients_wait_s: float = 60.0
    round_attempts: int = 3  # a refused round is retried this many times before the run fails
    eval_data: str | None = None  # .npz the server evaluates each global model on (LiteRT)
    seed: int = 0
    secure_aggregation: bool = False  # Flower SecAgg+: the server only ever sees the mean (cloud.fl.secagg)
    core: Mapping[str, Any] = field(default_factory=dict)  # ServerConfig keyword arguments; "dp" as a dict
    mode: str = "sync"  # "async": FedBuff, no round barrier; `rounds` counts server steps
    buffer: Mapping[str, Any] = field(default_factory=dict)  # federated.fedbuff.BufferConfig keyword arguments

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.min_clients < 1 or self.local_epochs < 1 or self.round_attempts < 1:
            raise ValueError("rounds, min_clients, local_epochs and round_attempts must be >= 1")
        if not (self.round_timeout_s > 0 and self.clients_wait_s > 0):
            raise ValueError("round_timeout_s and clients_wait_s must be > 0")
        if self.secure_aggregation:
            if self.core.get("aggregator", "mean") != "mean" or self.core.get("dp") is not None:
                raise ValueError("with --secure-aggregation the server sees only the mean of the updates: "
                                 "robust aggregators and DP-FedAvg's per-client clipping cannot run; use --aggregator mean")
            if self.min_clients < 2:
                raise ValueError("secure aggregation needs at least 2 clients (--min-clients 2)")
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode must be sync or async, got {self.mode!r}")
        if self.mode == "async":
            if self.secure_aggregation:
                raise ValueError("--mode async aggregates each device's update as it arrives; SecAgg+ needs a round "
                                 "of devices: use --mode sync with --secure-aggregation")
            self.buffer_config()
        self.server_config()  # validate the core's fields now, not in the ServerApp process

    def buffer_config(self) -> Any:
        from federated.fedbuff import BufferConfig

        return BufferConfig(**self.buffer)

    def server_config(self) -> Any:
        from federated import DPConfig, ServerConfig

        core = dict(self.core)
        if core.get("dp") is not None:
            core["dp"] = DPConfig(**core["dp"])
        # under SecAgg+ the core receives one update (the mean); min_clients is checked on the devices in it.
        # In async mode every buffered update is already valid: min_clients only says whom to wait for first.
        return ServerConfig(min_clients=1 if self.secure_aggregation or self.mode == "async" else self.min_clients,
                            **core)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> FLServerConfig:
        return cls(**json.loads(Path(path).read_text()))


def _bytes(arrays: list[np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays))


class RoundRunner:
    """Drives rounds over a Flower ``Grid``: send the global weights, gather replies, let the core decide."""

    def __init__(self, config: FLServerConfig, grid: Any, context: Any = None) -> None:
        from device.fl.reweight import read_weights, trainable_spec
        from device.runtime.bundle import read_manifest, read_model_bytes
        from federated import load_state

        self.config, self.grid, self.context = config, grid, context
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(config.bundle)
        spec = trainable_spec(manifest, config.bundle)
        core = config.server_config()
        checkpoint = self.out / CHECKPOINT
        if checkpoint.exists():
            state = load_state(checkpoint)
            self.server = self._restore(core, state)
            self.history: list[dict[str, Any]] = list(state.extra.get("history", []))
        else:
            initial = read_weights(read_model_bytes(config.bundle, manifest), spec)
            self.server = self._fresh(core, initial)
            self.history = []
        self.started = time.monotonic()
        # wall-clock seconds of earlier server processes of this run (a restart continues the count)
        self.elapsed_before = max((float(r.get("elapsed_s", 0.0)) for r in self.history), default=0.0)
        self.eval_data = None
        if config.eval_data:
            from device.fl.trainer import load_local_data

            self.eval_data = load_local_data(config.eval_data, manifest)
        if not self.history and self.eval_data is not None:
            self.history.append({"round": 0, **self._evaluate(Path(config.bundle))})

    def _fresh(self, core: Any, initial: list[np.ndarray]) -> Any:
        from federated import Server

        return Server(core, initial, seed=self.config.seed)

    def _restore(self, core: Any, state: Any) -> Any:
        from federated import Server

        return Server.from_state(core, state)

    @property
    def version(self) -> int:
        return self.server.round

    def _evaluate(self, bundle: Path) -> dict[str, float]:
        from device.fl.trainer import DeviceTrainer

        loss, acc = DeviceTrainer(bundle).evaluate(self.eval_data)
        return {"test_loss": loss, "test_accuracy": acc}

    def wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.config.clients_wait_s
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= (self.config.wait_for_clients or self.config.min_clients) or time.monotonic() > deadline:
                return nodes
            time.sleep(0.1)

    def exchange(self, nodes: list[int], content: Any, message_type: str) -> tuple[dict[int, Any], float]:
        """Push one message per node, pull replies until all are in or the round times out."""
        from flwr.app import Message

        messages = [Message(content, node, message_type) for node in nodes]
        ids = list(self.grid.push_messages(messages))
        node_of = dict(zip(ids, nodes))
        replies: dict[int, Any] = {}
        start = time.monotonic()
        deadline = start + self.config.round_timeout_s
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid in pending:
                    pending.discard(mid)
                    replies[node_of[mid]] = reply
            if pending:
                time.sleep(PULL_INTERVAL_S)
        return replies, time.monotonic() - start

    def run_round(self) -> dict[str, Any]:
        """One training round; returns its record, or raises :class:`RoundRefused` (state unchanged)."""
        from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict

        from federated import ClientUpdate

        r = self.server.round + 1
        started = time.monotonic()
        nodes = self.wait_for_nodes()
        weights = self.server.weights
        content = RecordDict({"arrays": ArrayRecord(weights),
                              "config": ConfigRecord({"round": r, "epochs": self.config.local_epochs,
                                                      "seed": self.config.seed})})
        replies, waited = self.exchange(nodes, content, MessageType.TRAIN)
        updates, failed, client_metrics = [], {}, {}
        for node, reply in replies.items():
            cid = str(node)
            if reply.has_error():
                failed[cid] = f"client error: {reply.error.reason}"
                continue
            try:
                arrays = reply.content["arrays"].to_numpy_ndarrays()
                metrics = dict(reply.content["metrics"])
            except (KeyError, ValueError, TypeError) as exc:
                failed[cid] = f"malformed reply: {exc}"
                continue
            client_metrics[cid] = metrics
            updates.append(ClientUpdate(cid, arrays, int(metrics.get("num-examples", 0)), metrics))
        dropouts = [str(n) for n in nodes if n not in replies]
        outcome = self.server.aggregate(updates)
        record: dict[str, Any] = {
            "round": r,
            "nodes": [str(n) for n in nodes],
            "accepted": list(outcome.accepted),
            "rejected": {**dict(outcome.rejected), **failed},
            "dropouts": dropouts,
            "num_samples": int(sum(u.num_samples for u in updates if u.client_id in outcome.accepted)),
            "bytes_down": _bytes(weights) * len(nodes),
            "bytes_up": int(sum(_bytes(u.weights) for u in updates)),
            "exchange_s": waited,
            "clients": client_metrics,
            **{k: float(v) for k, v in outcome.metrics.items()},
        }
        self.commit(record, started)
        return record

    def run_secure_round(self) -> dict[str, Any]:
        """One round under SecAgg+: only the sample-weighted mean of the devices' weights is revealed."""
        from cloud.fl.secagg import secure_round
        from federated import ClientUpdate, RoundRefused

        r = self.server.round + 1
        started = time.monotonic()
        nodes = self.wait_for_nodes()
        weights = self.server.weights
        mean, total, count, failures = secure_round(
            self.grid, self.context, weights, nodes, r,
            {"round": r, "epochs": self.config.local_epochs, "seed": self.config.seed}, self.config.round_timeout_s)
        if mean is None or count < self.config.min_clients:
            raise RoundRefused(f"round {r}: {count} device(s) completed secure aggregation, "
                               f"at least {self.config.min_clients} needed" + (f" ({'; '.join(failures)})" if failures else ""))
        outcome = self.server.aggregate([ClientUpdate(f"secagg+[{count} devices]", mean, total)])
        record: dict[str, Any] = {
            "round": r, "secure_aggregation": True, "nodes": [str(n) for n in nodes],
            "accepted": list(outcome.accepted), "rejected": dict(outcome.rejected),
            "devices_in_sum": count, "failures": failures, "num_samples": total,
            "bytes_down": _bytes(weights) * len(nodes), "clients": {},
            **{k: float(v) for k, v in outcome.metrics.items()},
        }
        self.commit(record, started)
        return record

    def commit(self, record: dict[str, Any], started: float) -> None:
        from device.fl.reweight import rebundle
        from federated import save_state

        r = record["round"]
        bundle = self.out / "bundles" / f"round-{r}"
        rebundle(self.config.bundle, bundle, self.server.weights, version=str(r),
                 source={"federated_round": r, "federated_run": str(self.out)})
        latest = self.out / "bundle"
        staging = self.out / ".bundle.new"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(bundle, staging)
        shutil.rmtree(latest, ignore_errors=True)
        os.replace(staging, latest)
        if self.eval_data is not None:
            record.update(self._evaluate(bundle))
        record["round_s"] = time.monotonic() - started
        record["elapsed_s"] = self.elapsed_before + time.monotonic() - self.started
        self.history.append(record)
        save_state(self.out / CHECKPOINT, self.server.state(extra={"history": self.history}))
        self.write_rounds()

    def write_rounds(self) -> None:
        tmp = self.out / f".{ROUNDS}.tmp"
        tmp.write_text(json.dumps({"rounds": self.history, "completed": self.version,
                                   "target": self.config.rounds}, indent=2) + "\n")
        os.replace(tmp, self.out / ROUNDS)

    def run(self) -> None:
        from federated import RoundRefused

        attempts = 0
        while self.server.round < self.config.rounds:
            try:
                self.run_secure_round() if self.config.secure_aggregation else self.run_round()
                attempts = 0
            except RoundRefused as exc:
                attempts += 1
                self.history.append({"round": self.server.round + 1, "refused": str(exc), "rejected": exc.rejected})
                self.write_rounds()
                if attempts >= self.config.round_attempts:
                    raise
        self.write_rounds()
        (self.out / "done.json").write_text(json.dumps({"completed": self.version}) + "\n")


class AsyncRunner(RoundRunner):
    """FedBuff over Flower's message API: ``concurrency`` devices busy, a new version every ``buffer_size``
    accepted replies, the current model to each device as soon as it is idle; no round barrier.

    ``rounds`` counts server steps. A device holds at most one message and at most one update in the
    buffer; a message unanswered after ``round_timeout_s`` (a dead or stuck device) frees its slot and
    costs only that update. Each step commits exactly like a synchronous round (bundle, checkpoint,
    ``rounds.json``); a restarted server continues from the last step (in-flight work is lost).
    """

    def _fresh(self, core: Any, initial: list[np.ndarray]) -> Any:
        from federated.fedbuff import BufferedServer

        return BufferedServer(core, self.config.buffer_config(), initial, seed=self.config.seed)

    def _restore(self, core: Any, state: Any) -> Any:
        from federated.fedbuff import BufferedServer

        return BufferedServer.from_state(core, self.config.buffer_config(), state)

    @property
    def version(self) -> int:
        return self.server.version

    def run(self) -> None:
        from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

        from federated import ClientUpdate, RoundRefused

        cfg, buffer = self.config, self.config.buffer_config()
        if not self.wait_for_nodes():
            raise RuntimeError(f"no device connected within {cfg.clients_wait_s:g} s")
        bases: dict[int, list[np.ndarray]] = {}
        in_flight: dict[str, tuple[int, int, float]] = {}  # message id -> (node, version it trains from, sent at)
        last_sent: dict[int, float] = {}
        dispatches = int(max((r.get("dispatched", 0) for r in self.history), default=0))
        open_step = self._open_step()
        quiet_since = time.monotonic()
        refusals = 0
        while self.version < cfg.rounds:
            now = time.monotonic()
            progressed = False
            free = buffer.concurrency - len(in_flight)
            if free > 0:
                busy = {node for node, _, _ in in_flight.values()} | {int(c) for c in self.server.buffered}
                idle = sorted((n for n in self.grid.get_node_ids() if n not in busy),
                              key=lambda n: (last_sent.get(n, 0.0), n))[:free]
                if idle:
                    weights = bases.setdefault(self.version, self.server.weights)
                    messages = []
                    for node in idle:
                        dispatches += 1
                        content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(
                            {"round": dispatches, "epochs": cfg.local_epochs, "seed": cfg.seed})})
                        messages.append(Message(content, node, MessageType.TRAIN))
                    for mid, node in zip(self.grid.push_messages(messages), idle):
                        in_flight[mid] = (node, self.version, now)
                        last_sent[node] = now
                    open_step["bytes_down"] += _bytes(weights) * len(idle)
                    open_step["dispatched"] = dispatches
                    progressed = True
            if in_flight:
                for reply in self.grid.pull_messages(list(in_flight)):
                    mid = reply.metadata.reply_to_message_id
                    if mid not in in_flight:
                        continue
                    node, version, sent = in_flight.pop(mid)
                    progressed = True
                    cid = str(node)
                    if reply.has_error():
                        open_step["failures"][cid] = f"client error: {reply.error.reason}"
                        continue
                    try:
                        arrays = reply.content["arrays"].to_numpy_ndarrays()
                        metrics = dict(reply.content["metrics"])
                    except (KeyError, ValueError, TypeError) as exc:
                        open_step["failures"][cid] = f"malformed reply: {exc}"
                        continue
                    open_step["bytes_up"] += _bytes(arrays)
                    arrival = self.server.submit(ClientUpdate(cid, arrays, int(metrics.get("num-examples", 0)), metrics),
                                                 version, bases[version])
                    if not arrival.accepted:
                        open_step["rejected"][cid] = arrival.reason or ""
                    else:
                        open_step["staleness"][cid] = arrival.staleness
                        open_step["clients"][cid] = metrics
                        open_step["num_samples"] += int(metrics.get("num-examples", 0))
                    if arrival.step is not None:
                        refusals = 0
                        started = open_step.pop("_started")
                        record = {"round": self.version, "mode": "async", "accepted": list(arrival.step.accepted),
                                  **open_step, "dropouts": sorted(open_step["failures"]),
                                  "updates_received": self.server.counters["received"],
                                  "stale_refused": self.server.counters["stale_refused"],
                                  **{k: float(v) for k, v in arrival.step.metrics.items()}}
                        self.commit(record, started)
                        open_step = self._open_step(dispatches)
                        if self.version >= cfg.rounds:
                            break
                    elif arrival.step_refused:
                        refusals += 1
                        self.history.append({"round": self.version + 1, "refused": arrival.step_refused,
                                             "rejected": dict(open_step["rejected"])})
                        self.write_rounds()
                        if refusals >= cfg.round_attempts:
                            raise RoundRefused(arrival.step_refused)
            for mid, (node, _, sent) in list(in_flight.items()):
                if now - sent > cfg.round_timeout_s:
                    del in_flight[mid]
                    open_step["failures"][str(node)] = f"no reply within {cfg.round_timeout_s:g} s"
            live = {v for _, v, _ in in_flight.values()} | {self.version}
            for v in [v for v in bases if v not in live]:
                del bases[v]
            if progressed:
                quiet_since = now
            else:
                if not in_flight and now - quiet_since > cfg.clients_wait_s:
                    raise RuntimeError(f"no device took work for {cfg.clients_wait_s:g} s; "
                                       f"{self.version} of {cfg.rounds} steps done")
                time.sleep(PULL_INTERVAL_S)
        self.write_rounds()
        (self.out / "done.json").write_text(json.dumps({"completed": self.version}) + "\n")

    @staticmethod
    def _open_step(dispatched: int = 0) -> dict[str, Any]:
        """What the next step's record accumulates while replies arrive."""
        return {"_started": time.monotonic(), "rejected": {}, "failures": {}, "staleness": {}, "clients": {},
                "num_samples": 0, "bytes_down": 0, "bytes_up": 0, "dispatched": dispatched}


def _main(grid: Any, context: Any) -> None:
    from device.fl.flower_env import fast_object_pulls

    fast_object_pulls()  # this ServerApp process pulls every reply's arrays
    config = FLServerConfig.load(context.run_config["edgeloop-config"])
    (AsyncRunner if config.mode == "async" else RoundRunner)(config, grid, context).run()


def _make_app() -> Any:
    from flwr.serverapp import ServerApp

    server_app = ServerApp()
    server_app.main()(_main)
    return server_app


app = _make_app()
