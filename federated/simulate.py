"""The federated simulator: many clients' local training per round, the numpy server in between.

``simulate(config)`` partitions a data set among ``config.clients`` clients, and every round
samples a fraction of them, trains the ones that neither drop out nor miss the deadline in one
compiled TensorFlow call (:mod:`federated.tf_clients`), optionally compresses their updates,
and hands them to :class:`federated.Server`. With ``out`` it writes ``metrics.jsonl`` (one line
per round), ``accuracy.png`` and ``checkpoint.npz`` after every round; ``resume=True`` continues
from that checkpoint and ends with the same final weights as an uninterrupted run.

For engines that must reproduce a run (TensorFlow Federated parity), :func:`plan` returns the
exact inputs: every client's preprocessed data, the test split, the initial weights and the
ordered client ids that train in each round. Client training is plain SGD with ``config.lr`` on
the mean sparse categorical cross-entropy from logits over each batch (plus FedProx's
``mu/2 ||w - w_global||²``); with ``client_shuffle=False`` batches follow data order and the last
partial batch is a smaller batch, as TFF's ``dataset.batch(B)`` gives.

With DP on, each round is accounted as Poisson sampling with ``q = m / K`` (``m`` clients sampled
of ``K``), the usual approximation for sampling a fixed number without replacement.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from federated.compress import METHODS, compress
from federated.dp import DPConfig
from federated.errors import ConfigError, RoundRefused, StateError
from federated.partition import ALL_SCHEMES, PartitionConfig, partition
from federated.schedule import byzantine_weights, client_batches, padded_plan, round_plan
from federated.server import ClientUpdate, Server, ServerConfig
from federated.state import ServerState, load_state, save_state
from federated.weights import Weights, add, num_bytes, subtract

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
PLOT = "accuracy.png"


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines a simulation; equal configs give bit-identical runs.

    ``batch=None`` trains on each client's full data per step. FedSGD (``server.strategy ==
    "fedsgd"``) always takes one full-batch step per client, whatever ``local_epochs``/``batch``.
    ``deadline`` is in local steps of a normal-speed client; stragglers take
    ``straggler_slowdown`` times longer. The first ``byzantine`` clients send random weights.
    ``engine`` picks how clients train (:mod:`federated.tf_clients`): ``vmap`` (all clients' steps
    at once; dense models), ``loop`` (a graph loop over clients; any model) or ``auto``.
    """

    model: str = "cnn"
    data: str = "mnist5k"
    clients: int = 100
    fraction: float = 0.1
    local_epochs: int = 1
    batch: int | None = 10
    lr: float = 0.1
    rounds: int = 50
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    seed: int = 0
    client_shuffle: bool = True
    test_fraction: float = 0.2
    dropout: float = 0.0
    straggler_prob: float = 0.0
    straggler_slowdown: float = 4.0
    deadline: float | None = None
    compression: str = "none"
    topk_fraction: float = 0.1
    byzantine: int = 0
    byzantine_scale: float = 10.0
    eval_every: int = 1
    engine: str = "auto"
    server: ServerConfig = field(default_factory=ServerConfig)
    samples_per_client: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.clients >= 1, f"clients must be >= 1, got {self.clients}"),
            (0 < self.fraction <= 1, f"fraction must be in (0, 1], got {self.fraction}"),
            (self.local_epochs >= 1, f"local_epochs must be >= 1, got {self.local_epochs}"),
            (self.batch is None or self.batch >= 1, f"batch must be >= 1 or None (full batch), got {self.batch}"),
            (self.lr > 0 and np.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (self.partition in ALL_SCHEMES, f"partition must be one of {', '.join(ALL_SCHEMES)}, got {self.partition!r}"),
            (0 < self.test_fraction < 1, f"test_fraction must be in (0, 1), got {self.test_fraction}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (0 <= self.straggler_prob <= 1, f"straggler_prob must be in [0, 1], got {self.straggler_prob}"),
            (self.straggler_slowdown >= 1, f"straggler_slowdown must be >= 1, got {self.straggler_slowdown}"),
            (self.deadline is None or self.deadline > 0, f"deadline must be > 0, got {self.deadline}"),
            (self.compression in METHODS, f"compression must be one of {', '.join(METHODS)}, got {self.compression!r}"),
            (0 < self.topk_fraction <= 1, f"topk_fraction must be in (0, 1], got {self.topk_fraction}"),
            (0 <= self.byzantine <= self.clients, f"byzantine must be in [0, clients], got {self.byzantine}"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (self.engine in ("auto", "vmap", "loop"), f"engine must be auto, vmap or loop, got {self.engine!r}"),
            (isinstance(self.server, ServerConfig), "server must be a ServerConfig"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.partition_config()

    def partition_config(self) -> PartitionConfig:
        return PartitionConfig(self.partition, self.clients, self.alpha, self.shards_per_client, self.seed,
                               self.samples_per_client)

    @property
    def epochs(self) -> int:
        return 1 if self.server.strategy == "fedsgd" else self.local_epochs

    @property
    def batch_size(self) -> int | None:
        return None if self.server.strategy == "fedsgd" else self.batch

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimulationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown simulation config field(s): {', '.join(unknown)}")
        server = dict(data.get("server") or {})
        if server.get("dp") is not None:
            server["dp"] = DPConfig(**server["dp"])
        return cls(**{**data, "server": ServerConfig(**server)})


@dataclass(frozen=True)
class ClientData:
    """One client's preprocessed samples: ``x`` float32 (n, H, W, C) as the model takes it, ``y`` int64 (n,)."""

    client_id: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class SimulationPlan:
    """The exact inputs of a run: clients in index order, test split, initial weights, and per round
    the ids of the clients that train, in the order their updates are aggregated."""

    clients: tuple[ClientData, ...]
    test: ClientData
    initial_weights: Weights
    schedule: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class SimulationResult:
    """``final_weights`` in Keras ``model.trainable_weights`` order; ``history`` has one dict per round."""

    config: SimulationConfig
    final_weights: Weights
    history: list[dict[str, Any]]
    out: Path | None = None


@dataclass(frozen=True)
class _Setup:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    parts: tuple[np.ndarray, ...]
    num_classes: int
    sample_shape: tuple[int, ...]
    ids: tuple[str, ...]


def _setup(config: SimulationConfig) -> _Setup:
    from cloud.train.data import load_dataset, stratified_split

    ds = load_dataset(config.data, config.seed)
    train, test = stratified_split(ds, config.test_fraction, config.seed)
    parts = partition(train.y, config.partition_config())
    width = len(str(config.clients - 1))
    return _Setup(train.normalized(), train.y.astype(np.int64), test.normalized(), test.y.astype(np.int64), parts,
                  len(ds.labels), ds.sample_shape, tuple(f"client-{i:0{width}d}" for i in range(config.clients)))


def _round_plan(config: SimulationConfig, sizes: Sequence[int], t: int):
    return round_plan(config.seed, t, sizes, config.fraction, epochs=config.epochs,
                      batch=config.batch_size, dropout=config.dropout, straggler_prob=config.straggler_prob,
                      straggler_slowdown=config.straggler_slowdown, deadline=config.deadline)


def initial_weights(config: SimulationConfig, sample_shape: tuple[int, ...], num_classes: int) -> Weights:
    """The global model at round 0: the registry model initialised from ``config.seed``."""
    from federated.tf_clients import build_model

    model = build_model(config.model, sample_shape, num_classes, config.seed)
    return [np.asarray(v.numpy()) for v in model.trainable_variables]


def plan(config: SimulationConfig) -> SimulationPlan:
    """Client data, test split, initial weights and per-round training order of ``simulate(config)``."""
    s = _setup(config)
    clients = tuple(ClientData(s.ids[i], s.x_train[p], s.y_train[p]) for i, p in enumerate(s.parts))
    sizes = [p.size for p in s.parts]
    schedule = tuple(tuple(s.ids[c] for c in _round_plan(config, sizes, t).trained) for t in range(1, config.rounds + 1))
    return SimulationPlan(clients, ClientData("test", s.x_test, s.y_test),
                          initial_weights(config, s.sample_shape, s.num_classes), schedule)


class ClientPool(Protocol):
    """Where the clients live and train: this process (:class:`LocalClients`) or elsewhere
    (:mod:`federated.ray_engine` trains them on a Ray cluster, with the same results).

    ``sizes[c]`` is client ``c``'s sample count. ``train(t, global_weights, clients)`` runs round
    ``t``'s local training of the client indices ``clients`` from ``global_weights`` and returns their
    weights and mean losses in that order; ``evaluate`` gives (mean loss, accuracy) on the test split.
    """

    ids: tuple[str, ...]
    sizes: tuple[int, ...]
    initial_weights: Weights

    def train(self, t: int, global_weights: Weights, clients: Sequence[int]) -> tuple[list[Weights], np.ndarray]: ...

    def evaluate(self, weights: Weights) -> tuple[float, float]: ...

    def close(self) -> None: ...


class LocalClients:
    """Every client in this process: the training set as one tensor, each client an index array into it."""

    def __init__(self, config: SimulationConfig) -> None:
        from federated.tf_clients import ClientTrainer, build_model

        self.config = config
        self.setup = s = _setup(config)
        model = build_model(config.model, s.sample_shape, s.num_classes, config.seed)
        self.initial_weights: Weights = [np.asarray(v.numpy()) for v in model.trainable_variables]
        self.ids, self.sizes = s.ids, tuple(int(p.size) for p in s.parts)
        self.trainer = ClientTrainer(model, s.x_train, s.y_train, config.lr, config.server.proximal_mu, config.engine)

    def train(self, t: int, global_weights: Weights, clients: Sequence[int]) -> tuple[list[Weights], np.ndarray]:
        parts = self.setup.parts
        batches = [[parts[c][b] for b in local_batches(self.config, t, c, parts[c].size)] for c in clients]
        return self.trainer.train_round(global_weights, *padded_plan(batches))

    def evaluate(self, weights: Weights) -> tuple[float, float]:
        return self.trainer.evaluate(weights, self.setup.x_test, self.setup.y_test)

    def close(self) -> None:
        pass


def local_batches(config: SimulationConfig, t: int, client: int, size: int) -> list[np.ndarray]:
    """Client ``client``'s batches in round ``t``, as positions into its own ``size`` samples."""
    return client_batches(config.seed, t, client, size, config.epochs, config.batch_size, config.client_shuffle)


def simulate(config: SimulationConfig, out: Path | str | None = None, resume: bool = False, progress: bool = True,
             stop_after: int | None = None, on_round: Callable[[dict[str, Any]], None] | None = None,
             stop_when: Callable[[dict[str, Any]], bool] | None = None,
             pool: Callable[[SimulationConfig], ClientPool] | None = None) -> SimulationResult:
    """Run ``config.rounds`` rounds (see the module docstring).

    ``on_round`` sees each round's metrics row. ``stop_after`` ends after that many rounds of this
    call, as a kill would, so the run can be resumed; ``stop_when(row)`` returning True ends the
    run after that round (e.g. once a target accuracy is reached). ``pool(config)`` makes the
    clients (default :class:`LocalClients`); it is closed when the run ends. Which pool trained a
    checkpoint does not matter to ``resume``.
    """
    out_dir = Path(out) if out is not None else None
    state = _restore(config, out_dir, resume)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_jsonl(out_dir / METRICS, list(state.extra["history"]) if state is not None else [])
    clients = (pool or LocalClients)(config)
    try:
        return _run(config, clients, out_dir, state, progress, stop_after, on_round, stop_when)
    finally:
        clients.close()


def _restore(config: SimulationConfig, out_dir: Path | None, resume: bool) -> ServerState | None:
    """The checkpoint to resume from (``None``: a new run); refuses what cannot be resumed or would be overwritten."""
    if out_dir is None:
        return None
    ckpt = out_dir / CHECKPOINT
    if not resume:
        if ckpt.exists():
            raise StateError(f"{out_dir}: already holds a simulation; pass --resume to continue it, or use a new --out")
        return None
    if not ckpt.is_file():
        raise StateError(f"{out_dir}: nothing to resume (no {CHECKPOINT})")
    state = load_state(ckpt)
    saved = {k: v for k, v in state.extra.get("config", {}).items() if k != "rounds"}
    given = {k: v for k, v in config.to_json().items() if k != "rounds"}
    if saved != given:
        diff = {k: (saved.get(k), given.get(k)) for k in set(saved) | set(given) if saved.get(k) != given.get(k)}
        raise StateError(f"{out_dir}: cannot resume with a different config; changed (saved, given): {diff}")
    return state


def _run(config: SimulationConfig, clients: ClientPool, out_dir: Path | None, state: ServerState | None, progress: bool,
         stop_after: int | None, on_round: Callable[[dict[str, Any]], None] | None,
         stop_when: Callable[[dict[str, Any]], bool] | None) -> SimulationResult:
    if state is None:
        server, history, start = Server(config.server, clients.initial_weights, seed=config.seed), [], 0
    else:
        server, history, start = Server.from_state(config.server, state), list(state.extra["history"]), int(state.extra["sim_round"])
    model_bytes = num_bytes(server.weights)
    sampling_rate = max(int(round(config.fraction * config.clients)), 1) / config.clients
    done_here = 0
    with _Progress(config, progress, start) as bar:
        for t in range(start + 1, config.rounds + 1):
            if stop_after is not None and done_here >= stop_after:
                break
            t0 = time.perf_counter()
            rp = _round_plan(config, clients.sizes, t)
            global_w = server.weights
            honest = [c for c in rp.trained if c >= config.byzantine]
            trained_w, losses = clients.train(t, global_w, honest)
            by_client = dict(zip(honest, zip(trained_w, losses)))
            updates: list[ClientUpdate] = []
            bytes_up = 0
            for c in rp.trained:
                if c in by_client:
                    w, loss = by_client[c]
                    metrics = {"loss": float(loss)}
                else:
                    w, metrics = byzantine_weights(config.seed, t, c, global_w, config.byzantine_scale), {}
                if config.compression != "none":
                    delta, nbytes = compress(subtract(w, global_w), config.compression, config.topk_fraction)
                    w = add(global_w, delta)
                else:
                    nbytes = model_bytes
                bytes_up += nbytes
                updates.append(ClientUpdate(clients.ids[c], w, int(clients.sizes[c]), metrics))
            row: dict[str, Any] = {"round": t}
            try:
                outcome = server.aggregate(updates, sampling_rate=sampling_rate)
                row.update(accepted=len(outcome.accepted), rejected=dict(outcome.rejected), refused=None,
                           update_norm_mean=outcome.metrics["update_norm_mean"])
                if "epsilon" in outcome.metrics:
                    row["epsilon"] = outcome.metrics["epsilon"]
            except RoundRefused as exc:
                row.update(accepted=0, rejected=exc.rejected, refused=str(exc))  # the global model is unchanged
                if config.server.dp is not None:
                    row["epsilon"] = server.epsilon()
            train_seconds = time.perf_counter() - t0
            counts = [clients.sizes[c] for c in honest]
            row.update(
                train_loss=float(np.average(losses, weights=counts)) if counts else None,
                selected=len(rp.selected), dropped=len(rp.dropped), late=len(rp.late), trained=len(rp.trained),
                bytes_down=model_bytes * len(rp.selected), bytes_up=bytes_up, seconds=train_seconds,
            )
            if t % config.eval_every == 0 or t == config.rounds:
                t1 = time.perf_counter()
                row["test_loss"], row["test_accuracy"] = clients.evaluate(server.weights)
                row["eval_seconds"] = time.perf_counter() - t1
            history.append(row)
            done_here += 1
            if out_dir is not None:
                save_state(out_dir / CHECKPOINT, server.state(extra={"config": config.to_json(), "history": history,
                                                                     "sim_round": t}))
                with open(out_dir / METRICS, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            bar.round_done(row)
            if on_round is not None:
                on_round(row)
            if stop_when is not None and stop_when(row):
                break
    if out_dir is not None and history:
        from federated.plots import plot_runs

        plot_runs({out_dir.name: history}, out_dir / PLOT)
    return SimulationResult(config, server.weights, history, out_dir)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_history(run_dir: Path | str) -> list[dict[str, Any]]:
    """The rounds recorded in ``RUN/metrics.jsonl``."""
    path = Path(run_dir) / METRICS if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise StateError(f"{path}: no such metrics file (a simulation's --out directory holds {METRICS})")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def export_model(config: SimulationConfig, weights: Weights, out_dir: Path | str, mode: str = "int8",
                 name: str | None = None) -> Any:
    """Export global ``weights`` as a verified device bundle through :func:`cloud.export.exporter.export_bundle`.

    Writes ``OUT/model.keras`` and ``OUT/bundles/<name>``; returns the export's ``Verification``.
    """
    import keras

    from cloud.export.exporter import ExportConfig, TrainedRun, export_bundle, keras_logits
    from cloud.train.data import load_dataset, stratified_split
    from cloud.train.training import Splits, TrainConfig
    from federated.tf_clients import build_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(config.data, config.seed)
    train, test = stratified_split(ds, config.test_fraction, config.seed)
    model = build_model(config.model, ds.sample_shape, len(ds.labels), config.seed)
    for var, w in zip(model.trainable_variables, weights):
        var.assign(w)
    model.save(out / "model.keras")
    model = keras.models.load_model(out / "model.keras", compile=False)
    train_cfg = TrainConfig(model=config.model, data=config.data, optimizer="sgd", learning_rate=config.lr,
                            batch_size=config.batch or 32, epochs=config.rounds, patience=None,
                            test_fraction=config.test_fraction, seed=config.seed)
    run = TrainedRun(out, model, train_cfg, Splits(train, test, test), keras_logits(model, test))
    bundle = name or f"{Path(config.data).stem}-{config.model}-{config.server.strategy}-{mode}"
    return export_bundle(run, out / "bundles" / bundle, ExportConfig(mode=mode, name=bundle))


class _Progress:
    """A rich progress bar over rounds, with the latest accuracy and loss."""

    def __init__(self, config: SimulationConfig, enabled: bool, start: int) -> None:
        self.config, self.enabled, self.start = config, enabled, start
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn(f"[bold]{self.config.server.strategy}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("acc {task.fields[acc]}  loss {task.fields[loss]}"), TimeRemainingColumn(), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("rounds", total=self.config.rounds, completed=self.start, acc="-", loss="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def round_done(self, row: dict[str, Any]) -> None:
        if self._progress is None:
            return
        acc = f"{row['test_accuracy']:.4f}" if "test_accuracy" in row else "-"
        loss = f"{row['train_loss']:.4f}" if row.get("train_loss") is not None else "-"
        self._progress.update(self._task, advance=1, acc=acc, loss=loss)
