"""The timed simulator: synchronous FedAvg and FedBuff on one event-driven simulated clock.

Time advances from event to event (an update arrives, a client comes online); nothing sleeps.
Each client's speed, availability and network time come from :class:`federated.clock.Fleet`.

- ``sync``: every round samples ``max(round(C K), 1)`` online clients, sends them the model, and
  ends when the slowest surviving client's update arrives, or ``deadline_s`` after it began (late
  updates are discarded). Then :class:`federated.Server` aggregates, as in :mod:`federated.simulate`.
- ``fedbuff``: up to ``concurrency`` clients train at once, each from the version it downloaded; as
  soon as one finishes, an idle online client takes its place with the current model.
  :class:`federated.fedbuff.BufferedServer` steps every ``buffer_size`` arrivals. Arrivals at the same
  instant are all handled before idle slots are refilled, so with ``buffer_size = concurrency =``
  clients per round, equal speeds and no losses FedBuff *is* synchronous FedAvg, on this clock too.

One metrics row per server step: simulated seconds, cumulative client updates received and bytes,
staleness, losses, and test accuracy every ``eval_every`` steps.

Determinism: which clients are picked comes from a generator seeded by ``(seed, dispatch batch)``
and local batches by ``(seed, dispatch batch, client)``, the draws :mod:`federated.schedule` makes
for a round, so with every client idle and online a dispatch batch picks what
:func:`federated.simulate.simulate` picks in the round of that number. Clients
dispatched on the same model version are trained lazily, together, in one compiled call, when the
first of their results is needed or before the version changes. A checkpoint after every server
step holds the server, the event queue and the already-trained in-flight deltas, so a run killed and
resumed replays the same events and ends with bit-identical weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from federated.clock import ClockConfig, Fleet
from federated.compress import compress
from federated.errors import ConfigError, RoundRefused, StateError
from federated.fedbuff import BufferConfig, BufferedServer
from federated.schedule import _SAMPLE, byzantine_weights, client_batches, local_steps, padded_plan
from federated.server import ClientUpdate, Server
from federated.simulate import CHECKPOINT, METRICS, PLOT, SimulationConfig, SimulationResult, _Progress, _setup, _write_jsonl
from federated.state import load_state, save_state
from federated.weights import Weights, add, num_bytes, subtract

MODES = ("sync", "fedbuff")


@dataclass(frozen=True)
class TimedConfig:
    """The clock and the mode of a timed simulation; ``buffer`` is FedBuff's, ``deadline_s`` sync's."""

    mode: str = "fedbuff"
    buffer: BufferConfig = field(default_factory=BufferConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigError(f"deadline_s (--deadline-s) must be > 0 simulated seconds, got {self.deadline_s}")
        if self.deadline_s is not None and self.mode == "fedbuff":
            raise ConfigError("--deadline-s bounds a synchronous round; FedBuff has no rounds to bound")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TimedConfig:
        return cls(mode=data["mode"], buffer=BufferConfig(**data["buffer"]), clock=ClockConfig(**data["clock"]),
                   deadline_s=data.get("deadline_s"))


def _check(config: SimulationConfig, timed: TimedConfig) -> None:
    if config.straggler_prob > 0 or config.deadline is not None:
        raise ConfigError("a timed simulation models slow clients with the clock: use --speed / --slow-fraction "
                          "--slow-factor and --deadline-s instead of --straggler-prob and --deadline")
    if timed.mode == "fedbuff" and timed.buffer.buffer_size > config.clients:
        raise ConfigError(f"buffer_size ({timed.buffer.buffer_size}) cannot exceed clients ({config.clients}): "
                          "a client holds at most one update in a buffer")


@dataclass
class _Job:
    """One client's update in flight: picked at ``start`` with model ``version``, arriving at ``finish``."""

    seq: int
    client: int
    version: int
    key: int  # the dispatch batch (sync: the round) that seeds its local batches
    start: float
    finish: float
    dropped: bool
    trained: bool = False


@dataclass
class _Run:
    """The event state and the cumulative counts of a timed run (JSON in the checkpoint)."""

    now: float = 0.0
    seq: int = 0
    batch: int = 0
    steps: int = 0  # server steps attempted (completed or refused): the rows' "round"
    jobs: list[_Job] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("dispatched", "client_updates", "bytes_down", "bytes_up", "lost_dropout", "lost_offline", "late",
         "stale_refused"), 0))
    since: dict[str, float] = field(default_factory=lambda: {"bytes_down": 0, "bytes_up": 0})
    losses: list[tuple[float, int]] = field(default_factory=list)  # (loss, samples) of updates in the open buffer

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now, "seq": self.seq, "batch": self.batch, "steps": self.steps,
                "jobs": [asdict(j) for j in self.jobs],
                "totals": self.totals, "since": self.since, "losses": self.losses}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Run:
        return cls(float(data["now"]), int(data["seq"]), int(data["batch"]), int(data["steps"]),
                   [_Job(**j) for j in data["jobs"]],
                   dict(data["totals"]), dict(data["since"]), [tuple(x) for x in data["losses"]])


class _Simulation:
    """One timed run: the data, the trainer, the server and the event loop."""

    def __init__(self, config: SimulationConfig, timed: TimedConfig, out: Path | None, resume: bool) -> None:
        from federated.tf_clients import ClientTrainer, build_model

        _check(config, timed)
        self.config, self.timed, self.out = config, timed, out
        self.s = _setup(config)
        model = build_model(config.model, self.s.sample_shape, self.s.num_classes, config.seed)
        initial = [np.asarray(v.numpy()) for v in model.trainable_variables]
        self.fedbuff = timed.mode == "fedbuff"
        self.server: Server | BufferedServer = (BufferedServer(config.server, timed.buffer, initial, seed=config.seed)
                                                if self.fedbuff else Server(config.server, initial, seed=config.seed))
        self.fleet = Fleet(timed.clock, config.clients, config.seed)
        self.trainer = ClientTrainer(model, self.s.x_train, self.s.y_train, config.lr, config.server.proximal_mu,
                                     config.engine)
        self.model_bytes = num_bytes(initial)
        self.index = {cid: i for i, cid in enumerate(self.s.ids)}
        self.run = _Run()
        self.deltas: dict[int, tuple[Weights, float, int]] = {}  # seq -> (delta, train loss, upload bytes)
        self.history: list[dict[str, Any]] = []
        if out is not None:
            self._open(out, resume)

    # -- checkpoint ------------------------------------------------------------------------------
    def _open(self, out: Path, resume: bool) -> None:
        ckpt = out / CHECKPOINT
        if resume:
            if not ckpt.is_file():
                raise StateError(f"{out}: nothing to resume (no {CHECKPOINT})")
            state = load_state(ckpt)
            saved = {**{k: v for k, v in state.extra.get("config", {}).items() if k != "rounds"},
                     "timed": state.extra.get("timed")}
            given = {**{k: v for k, v in self.config.to_json().items() if k != "rounds"}, "timed": self.timed.to_json()}
            if saved != given:
                diff = {k: (saved.get(k), given.get(k)) for k in set(saved) | set(given) if saved.get(k) != given.get(k)}
                raise StateError(f"{out}: cannot resume with a different config; changed (saved, given): {diff}")
            self.server = (BufferedServer.from_state(self.config.server, self.timed.buffer, state) if self.fedbuff
                           else Server.from_state(self.config.server, state))
            self.history = list(state.extra["history"])
            self.run = _Run.from_json(state.extra["run"])
            for j in self.run.jobs:
                if j.trained:
                    meta = state.extra["deltas"][str(j.seq)]
                    self.deltas[j.seq] = (state.extra_arrays[f"inflight/{j.seq}"], float(meta[0]), int(meta[1]))
        elif ckpt.exists():
            raise StateError(f"{out}: already holds a simulation; pass --resume to continue it, or use a new --out")
        out.mkdir(parents=True, exist_ok=True)
        _write_jsonl(out / METRICS, self.history)

    def _save(self, new_rows: list[dict[str, Any]]) -> None:
        if self.out is None:
            return
        extra = {"config": self.config.to_json(), "timed": self.timed.to_json(), "history": self.history,
                 "run": self.run.to_json(), "deltas": {str(k): [v[1], v[2]] for k, v in self.deltas.items()}}
        state = self.server.state(extra=extra)
        state = replace(state, extra_arrays={**dict(state.extra_arrays),
                                             **{f"inflight/{k}": v[0] for k, v in self.deltas.items()}})
        save_state(self.out / CHECKPOINT, state)
        with open(self.out / METRICS, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in new_rows)

    # -- clients ---------------------------------------------------------------------------------
    def _steps(self, c: int) -> int:
        return local_steps(int(self.s.parts[c].size), self.config.epochs, self.config.batch_size)

    def _dispatch(self, picked: list[int], key: int, rng: np.random.Generator) -> list[_Job]:
        """Send the current model to ``picked`` (sorted) at ``now``; a dropout draw for each."""
        drops = rng.random(len(picked)) < self.config.dropout
        jobs = []
        version = self.server.version if self.fedbuff else self.server.round
        for c, dropped in zip(picked, drops):
            self.run.seq += 1
            upload = self.model_bytes  # the clock charges the uncompressed size; compression is accounted in bytes
            finish = self.run.now + self.fleet.duration(c, self._steps(c), self.model_bytes, upload)
            jobs.append(_Job(self.run.seq, int(c), version, key, self.run.now, finish, bool(dropped)))
        self.run.jobs.extend(jobs)
        self.run.totals["dispatched"] += len(jobs)
        self.run.totals["bytes_down"] += self.model_bytes * len(jobs)
        self.run.since["bytes_down"] += self.model_bytes * len(jobs)
        return jobs

    def _sample(self, candidates: list[int], n: int, key: int) -> tuple[list[int], np.random.Generator]:
        # the draws of schedule.round_plan: with every client a candidate, the same clients as simulate()
        rng = np.random.default_rng([self.config.seed, _SAMPLE, key])
        picked = sorted(candidates[i] for i in rng.choice(len(candidates), size=min(n, len(candidates)), replace=False))
        return picked, rng

    def _train(self, jobs: list[_Job]) -> None:
        """Train ``jobs`` (all from the current model) in one compiled call; keep their deltas."""
        jobs = [j for j in jobs if not j.trained and not j.dropped]
        if not jobs:
            return
        cfg, s = self.config, self.s
        base = self.server.weights
        honest = [j for j in jobs if j.client >= cfg.byzantine]
        batches = [[s.parts[j.client][b] for b in client_batches(cfg.seed, j.key, j.client, s.parts[j.client].size,
                                                                 cfg.epochs, cfg.batch_size, cfg.client_shuffle)]
                   for j in honest]
        trained, losses = self.trainer.train_round(base, *padded_plan(batches))
        results = {j.seq: (w, float(loss)) for j, w, loss in zip(honest, trained, losses)}
        for j in jobs:
            w, loss = results.get(j.seq) or (byzantine_weights(cfg.seed, j.key, j.client, base, cfg.byzantine_scale),
                                             float("nan"))
            delta = subtract(w, base)
            nbytes = self.model_bytes
            if cfg.compression != "none":
                delta, nbytes = compress(delta, cfg.compression, cfg.topk_fraction)
            self.deltas[j.seq] = (delta, loss, int(nbytes))
            j.trained = True

    def _pending(self) -> list[_Job]:
        """In-flight jobs not trained yet: all were dispatched on the current model."""
        return [j for j in self.run.jobs if not j.trained and not j.dropped]

    def _lost(self, j: _Job) -> str | None:
        if j.dropped:
            self.run.totals["lost_dropout"] += 1
            return "dropped out"
        if not self.fleet.online_throughout(j.client, j.start, j.finish):
            self.run.totals["lost_offline"] += 1
            return "went offline"
        return None

    def _receive(self, j: _Job) -> tuple[Weights, float, int]:
        if not j.trained:
            self._train(self._pending())
        delta, loss, nbytes = self.deltas.pop(j.seq)
        self.run.totals["client_updates"] += 1
        self.run.totals["bytes_up"] += nbytes
        self.run.since["bytes_up"] += nbytes
        return delta, loss, nbytes

    def _row(self, step: int, outcome: Any, refused: str | None, rejected: dict[str, str], wall: float) -> dict[str, Any]:
        r = self.run
        losses = [(lo, n) for lo, n in r.losses if np.isfinite(lo)]
        row: dict[str, Any] = {
            "round": step, "mode": self.timed.mode, "sim_seconds": float(r.now),
            "client_updates": int(r.totals["client_updates"]), "dispatched": int(r.totals["dispatched"]),
            "accepted": len(outcome.accepted) if outcome is not None else 0, "rejected": rejected, "refused": refused,
            "train_loss": float(np.average([lo for lo, _ in losses], weights=[n for _, n in losses])) if losses else None,
            "bytes_down": int(r.since["bytes_down"]), "bytes_up": int(r.since["bytes_up"]),
            "total_bytes_down": int(r.totals["bytes_down"]), "total_bytes_up": int(r.totals["bytes_up"]),
            "lost_dropout": int(r.totals["lost_dropout"]), "lost_offline": int(r.totals["lost_offline"]),
            "late": int(r.totals["late"]), "stale_refused": int(r.totals["stale_refused"]), "seconds": wall,
        }
        if outcome is not None:
            row["update_norm_mean"] = outcome.metrics["update_norm_mean"]
            for k in ("staleness_mean", "staleness_max", "staleness_weight_mean", "epsilon"):
                if k in outcome.metrics:
                    row[k] = outcome.metrics[k]
        elif self.config.server.dp is not None:
            row["epsilon"] = self.server.epsilon()
        r.since = {"bytes_down": 0, "bytes_up": 0}
        r.losses = []
        if step % self.config.eval_every == 0 or step == self.config.rounds:
            t1 = time.perf_counter()
            row["test_loss"], row["test_accuracy"] = self.trainer.evaluate(self.server.weights, self.s.x_test, self.s.y_test)
            row["eval_seconds"] = time.perf_counter() - t1
        return row

    # -- the two event loops ---------------------------------------------------------------------
    def sync_round(self) -> list[dict[str, Any]]:
        """One synchronous round on the clock; returns its row (none while nobody is online)."""
        cfg, run, fleet = self.config, self.run, self.fleet
        t0 = time.perf_counter()
        online = [c for c in range(cfg.clients) if fleet.online(c, run.now)]
        if not online:
            run.now = fleet.next_online(run.now)
            return []
        t = run.steps + 1
        m = max(int(round(cfg.fraction * cfg.clients)), 1)
        picked, rng = self._sample(online, m, t)
        run.batch = run.steps = t
        jobs = self._dispatch(picked, t, rng)
        alive = [j for j in jobs if self._lost(j) is None]
        cutoff = run.now + self.timed.deadline_s if self.timed.deadline_s is not None else np.inf
        on_time = [j for j in alive if j.finish <= cutoff]
        run.totals["late"] += len(alive) - len(on_time)
        end = max((j.finish for j in (alive or jobs)), default=run.now)
        self._train(on_time)
        updates = []
        for j in on_time:
            delta, loss, _ = self._receive(j)
            n = int(self.s.parts[j.client].size)
            run.losses.append((loss, n))
            updates.append(ClientUpdate(self.s.ids[j.client], add(self.server.weights, delta), n))
        run.jobs = []
        self.deltas.clear()
        run.now = min(end, cutoff)
        try:
            outcome = self.server.aggregate(updates, sampling_rate=m / cfg.clients)
            refused, rejected = None, dict(outcome.rejected)
        except RoundRefused as exc:
            outcome, refused, rejected = None, str(exc), exc.rejected
        return [self._row(t, outcome, refused, rejected, time.perf_counter() - t0)]

    def fedbuff_instant(self) -> list[dict[str, Any]]:
        """Refill idle slots, then advance to the next event and handle every arrival at that instant."""
        cfg, run, fleet = self.config, self.run, self.fleet
        server: BufferedServer = self.server  # type: ignore[assignment]
        t0 = time.perf_counter()
        busy = {j.client for j in run.jobs} | {self.index[cid] for cid in server.buffered}
        free = min(self.timed.buffer.concurrency, cfg.clients) - len(run.jobs)
        idle = [c for c in range(cfg.clients) if c not in busy]
        if free > 0:
            candidates = [c for c in idle if fleet.online(c, run.now)]
            if candidates:
                run.batch += 1
                picked, rng = self._sample(candidates, free, run.batch)
                self._dispatch(picked, run.batch, rng)
                idle = [c for c in idle if c not in set(picked)]
                free -= len(picked)
        wake = fleet.next_online(run.now, np.array([c for c in idle if not fleet.online(c, run.now)], dtype=int)) \
            if free > 0 and idle else np.inf
        arrive = min((j.finish for j in run.jobs), default=np.inf)
        if not np.isfinite(min(wake, arrive)):
            raise StateError("the simulated fleet stalled: no client in flight and none will come online")
        if wake < arrive:
            run.now = wake
            return []
        run.now = float(arrive)
        arriving = sorted((j for j in run.jobs if j.finish == arrive), key=lambda j: j.seq)
        rows: list[dict[str, Any]] = []
        rejected: dict[str, str] = {}
        for j in arriving:
            if self._lost(j) is not None:
                run.jobs.remove(j)
                self.deltas.pop(j.seq, None)
                continue
            if len(server.buffered) == self.timed.buffer.buffer_size - 1:
                self._train(self._pending())  # the model is about to change: train whoever started from it
            delta, loss, _ = self._receive(j)
            run.jobs.remove(j)
            n = int(self.s.parts[j.client].size)
            arrival = server.submit_delta(self.s.ids[j.client], delta, n, j.version, {"loss": loss})
            if arrival.stale_refused:
                run.totals["stale_refused"] += 1
            if not arrival.accepted:
                rejected[arrival.client_id] = arrival.reason or ""
            else:
                run.losses.append((loss, n))
            if arrival.step is not None or arrival.step_refused:
                run.steps += 1
                rows.append(self._row(run.steps, arrival.step, arrival.step_refused, rejected, time.perf_counter() - t0))
                rejected = {}
                t0 = time.perf_counter()
                if run.steps >= cfg.rounds:
                    break  # the run is over; later arrivals of this instant stay in flight
        return rows


def simulate_timed(config: SimulationConfig, timed: TimedConfig, out: Path | str | None = None, resume: bool = False,
                   progress: bool = True, stop_after: int | None = None,
                   on_round: Callable[[dict[str, Any]], None] | None = None,
                   stop_when: Callable[[dict[str, Any]], bool] | None = None, max_events: int = 10_000_000) -> SimulationResult:
    """Run ``config.rounds`` server steps on the simulated clock (see the module docstring).

    ``stop_after`` ends after that many server steps of this call (as a kill would; resumable),
    ``stop_when(row)`` after the step whose row it accepts. ``max_events`` bounds the event loop.
    """
    out_dir = Path(out) if out is not None else None
    sim = _Simulation(config, timed, out_dir, resume)
    start = len(sim.history)
    done_here = 0
    stopped = False
    with _Progress(config, progress, start) as bar:
        for _ in range(max_events):
            if stopped or sim.run.steps >= config.rounds or (stop_after is not None and done_here >= stop_after):
                break
            rows = sim.fedbuff_instant() if sim.fedbuff else sim.sync_round()
            if not rows:
                continue
            sim.history.extend(rows)
            sim._save(rows)
            for row in rows:
                done_here += 1
                bar.round_done(row)
                if on_round is not None:
                    on_round(row)
                if stop_when is not None and stop_when(row):
                    stopped = True
        else:
            raise StateError(f"the timed simulation did not finish within {max_events} events")
    if out_dir is not None and sim.history:
        from federated.plots import plot_runs

        plot_runs({out_dir.name: sim.history}, out_dir / PLOT)
    return SimulationResult(config, sim.server.weights, sim.history, out_dir)
