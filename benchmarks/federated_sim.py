"""How fast is the simulator, and does it reproduce the FedAvg paper's qualitative result?

1. Speed. sklearn digits, MLP 64-32-10, N IID clients, every client every round, E=1, B=20,
   client SGD lr 0.1. ``simulate`` (all clients' local SGD in one compiled TF call per round)
   against the naive baseline measured in the same run: one Keras ``fit`` per client on a
   model compiled once, plus a numpy weighted average. Both follow the same client batch
   orders, so their accuracy curves must agree; seconds per round are the mean over rounds 2
   onward (training + aggregation, evaluation excluded for both). N = 10, 100 and 1,000;
   target: >= 20x at N = 100. Each (engine, N) runs in its own process, whose peak RSS is
   reported.
2. McMahan et al. (2017), Table 2, qualitatively: MNIST-5k (4,000 training images), the
   CNN, 100 clients, C = 0.1, client lr 0.1 for every configuration; rounds until the test
   accuracy first reaches the target, for FedSGD and FedAvg with E in {1, 5}, B in {10, 50},
   IID and pathological non-IID (2 label shards per client), each capped at a round budget.
   With 40 images per client, B = 50 is a full batch: E = 1, B = 50 takes the same single
   step per round as FedSGD.
3. Update compression: bytes up per round and final accuracy with 8-bit quantization and top-k
   sparsification of the client updates, against uncompressed uploads.
4. The Ray engine (``--part ray``) against the local engine in the same run: the MNIST-5k CNN with
   1,000 clients (100 per round, E=5, B=10) and the digits MLP with 1,000 and 10,000 clients made
   by ``resample`` (20 samples each, drawn with repeats across clients; 100 per round, E=5, B=10),
   each on the local engine and on a local Ray instance with 1 and 2 worker processes (one chunk
   per worker and round). Seconds per round (rounds 2 onward: round 1 traces the graphs), driver
   peak RSS, the largest worker peak RSS (VmHWM; it counts the object-store pages a worker mapped),
   max |Δw| against the local run, and a projection for N machines from the measured chunk times.
   Target: Ray's overhead <= 20% at 2 workers; the driver's peak RSS flat from 1,000 to 10,000 clients.

Run: ``nice -n 10 .venv/bin/python benchmarks/federated_sim.py [--quick] [--part ray]`` (``make bench``).
Writes ``benchmarks/results/federated_sim.{json,md}`` and ``federated_sim_rounds.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
MARK = "@@bench "
SPEED_TARGET = 20.0
console = Console() if sys.stdout.isatty() else Console(width=150)


def speed_config(clients: int, rounds: int):
    from federated.simulate import SimulationConfig

    return SimulationConfig(model="mlp-small", data="digits", clients=clients, fraction=1.0, local_epochs=1, batch=20,
                            lr=0.1, rounds=rounds, partition="iid", seed=0)


def worker_sim(clients: int, rounds: int, compare_rounds: int) -> dict[str, Any]:
    """Timed run of ``rounds``; the weights come from a second run stopped where the naive one stops."""
    from federated.simulate import simulate

    result = simulate(speed_config(clients, rounds), progress=False)
    short = simulate(speed_config(clients, compare_rounds), progress=False)
    return {"seconds": [r["seconds"] for r in result.history], "accuracy": [r["test_accuracy"] for r in result.history],
            "weights": [w.tolist() for w in short.final_weights]}


def worker_naive(clients: int, rounds: int, compare_rounds: int = 0) -> dict[str, Any]:
    """One Keras ``fit`` per client (model compiled once), then a numpy weighted average."""
    from federated.fedavg import weighted_mean
    from federated.schedule import epoch_orders, round_plan
    from federated.simulate import _setup, initial_weights
    from federated.tf_clients import build_model, compile_sgd, train_client_keras_fit

    cfg = speed_config(clients, rounds)
    s = _setup(cfg)
    weights = initial_weights(cfg, s.sample_shape, s.num_classes)
    model = compile_sgd(build_model(cfg.model, s.sample_shape, s.num_classes, cfg.seed), cfg.lr)
    sizes = [p.size for p in s.parts]
    seconds, accuracy = [], []
    for t in range(1, rounds + 1):
        rp = round_plan(cfg.seed, t, sizes, cfg.fraction, epochs=cfg.epochs, batch=cfg.batch_size)
        t0 = time.perf_counter()
        trained = []
        for c in rp.trained:
            x, y = s.x_train[s.parts[c]], s.y_train[s.parts[c]]
            orders = epoch_orders(cfg.seed, t, c, sizes[c], cfg.epochs, cfg.client_shuffle)
            trained.append(train_client_keras_fit(model, weights, x, y, orders, cfg.batch))
        weights = weighted_mean(trained, [sizes[c] for c in rp.trained])
        seconds.append(time.perf_counter() - t0)
        model.set_weights(weights)
        logits = model.predict(s.x_test, verbose=0, batch_size=1000)
        accuracy.append(float(np.mean(logits.argmax(axis=1) == s.y_test)))
    return {"seconds": seconds, "accuracy": accuracy, "weights": [w.tolist() for w in weights]}


RAY_WORKLOADS: dict[str, dict[str, Any]] = {
    "mnist5k CNN, 1,000 clients": dict(model="cnn", data="mnist5k", clients=1000, fraction=0.1, local_epochs=5, batch=10,
                                       lr=0.1, partition="iid"),
    "digits MLP, 1,000 clients": dict(model="mlp-small", data="digits", clients=1000, fraction=0.1, local_epochs=5,
                                      batch=10, lr=0.1, partition="resample", samples_per_client=20),
    "digits MLP, 10,000 clients": dict(model="mlp-small", data="digits", clients=10000, fraction=0.01, local_epochs=5,
                                       batch=10, lr=0.1, partition="resample", samples_per_client=20),
}
RAY_ENGINES = ("local", "ray-1", "ray-2")
RAY_OVERHEAD_TARGET = 0.20


def _ray_worker_peaks() -> list[float]:
    """Peak RSS (VmHWM, MiB) of this process's Ray worker processes (titled ``ray::…``; the agents excluded)."""
    import psutil

    peaks = []
    for p in psutil.Process().children(recursive=True):
        try:
            title = (p.cmdline() or [""])[0]
            if title.startswith("ray::") and not title.endswith("Agent"):
                status = Path(f"/proc/{p.pid}/status").read_text()
                peaks.append(int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 1024)
        except (psutil.Error, OSError, StopIteration):
            continue
    return peaks


class _Measured:
    """A client pool that records its Ray workers' peak RSS just before it closes (and stops them)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.worker_peaks = inner, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def close(self) -> None:
        self.worker_peaks = _ray_worker_peaks()
        self.inner.close()


def worker_ray(workload: str, engine: str, rounds: int, weights_out: str) -> dict[str, Any]:
    """One (workload, engine) run in this process: the driver; Ray's workers are its descendants."""
    from federated.simulate import SimulationConfig, simulate

    cfg = SimulationConfig(**RAY_WORKLOADS[workload], rounds=rounds, seed=0, eval_every=rounds)
    pool, made = None, {}
    if engine != "local":
        from federated.ray_engine import RayConfig, ray_pool

        make = ray_pool(RayConfig(num_cpus=int(engine.split("-")[1]), object_store_mb=400))

        def pool(config):
            t0 = time.perf_counter()
            made["pool"] = _Measured(make(config))
            made["setup_seconds"] = time.perf_counter() - t0
            return made["pool"]
    result = simulate(cfg, progress=False, pool=pool)
    np.savez(weights_out, *result.final_weights)
    out = {"seconds": [r["seconds"] for r in result.history], "accuracy": result.history[-1]["test_accuracy"]}
    if made:
        out.update(worker_peak_rss_mib=made["pool"].worker_peaks, chunk_seconds=made["pool"].inner.chunk_seconds,
                   setup_seconds=made["setup_seconds"])
    return out


def run_worker(engine: str, clients: int, rounds: int, compare_rounds: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", engine, "--clients", str(clients), "--rounds", str(rounds),
           "--compare-rounds", str(compare_rounds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(MARK)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"worker {engine}/{clients} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def bench_speed(quick: bool) -> list[dict[str, Any]]:
    # (clients, simulate rounds, naive rounds): naive 1,000 clients costs about a minute a round here
    plan = [(10, 8, 8), (100, 8, 4), (1000, 8, 2)] if not quick else [(10, 3, 3), (100, 3, 2)]
    rows = []
    for clients, sim_rounds, naive_rounds in plan:
        console.print(f"speed: {clients} clients …")
        sim = run_worker("sim", clients, sim_rounds, naive_rounds)
        naive = run_worker("naive", clients, naive_rounds, naive_rounds)
        n = naive_rounds
        acc_diff = max(abs(a - b) for a, b in zip(sim["accuracy"][:n], naive["accuracy"][:n]))
        w_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(sim["weights"], naive["weights"]))
        s_round = float(np.mean(sim["seconds"][1:]))
        n_round = float(np.mean(naive["seconds"][1:]))
        rows.append({"clients": clients, "sim_rounds": sim_rounds, "naive_rounds": naive_rounds,
                     "sim_s_per_round": s_round, "naive_s_per_round": n_round, "speedup": n_round / s_round,
                     "max_abs_accuracy_diff": acc_diff, "max_abs_weight_diff_final": w_diff,
                     "sim_accuracy": sim["accuracy"], "naive_accuracy": naive["accuracy"],
                     "sim_peak_rss_mib": sim["peak_rss_mib"], "naive_peak_rss_mib": naive["peak_rss_mib"]})
    return rows


def bench_ray(quick: bool, workloads: str | None = None, engines: str | None = None) -> dict[str, Any]:
    """Local vs Ray with 1 and 2 workers on each workload, each (workload, engine) in its own driver process.

    ``workloads``: keep those whose name contains this text (e.g. ``CNN``); ``engines``: a comma-separated
    subset of local, ray-1, ray-2 (the first given is the reference for weights)."""
    import tempfile

    rounds = 3 if quick else 6
    chosen = [w for w in RAY_WORKLOADS if not workloads or workloads.lower() in w.lower()]
    engine_list = tuple(engines.split(",")) if engines else RAY_ENGINES
    unknown = sorted(set(engine_list) - set(RAY_ENGINES))
    if unknown or not chosen:
        raise SystemExit(f"--ray-engines takes {', '.join(RAY_ENGINES)} (got {unknown}); --ray-workloads matches "
                         f"{list(RAY_WORKLOADS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in chosen:
            local_w = None
            for engine in engine_list:
                console.print(f"ray: {workload}, {engine} …")
                wpath = str(Path(tmp) / f"w-{len(rows)}.npz")
                cmd = [sys.executable, __file__, "--worker", "ray", "--workload", workload, "--engine", engine,
                       "--rounds", str(rounds), "--weights-out", wpath]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
                lines = [ln for ln in out.stdout.splitlines() if ln.startswith(MARK)]
                if out.returncode != 0 or not lines:  # e.g. Ray's node did not come up in time on a busy machine
                    error = (out.stderr.strip().splitlines() or ["no output"])[-1]
                    console.print(f"  [red]failed[/red]: {error}")
                    rows.append({"workload": workload, "engine": engine, "rounds": rounds, "error": error})
                    continue
                res = json.loads(lines[-1][len(MARK):])
                with np.load(wpath) as z:
                    weights = [z[k] for k in z.files]
                if local_w is None:
                    local_w = weights
                row = {"workload": workload, "engine": engine, "rounds": rounds,
                       "s_per_round": float(np.mean(res["seconds"][1:])), "driver_peak_rss_mib": res["peak_rss_mib"],
                       "accuracy": res["accuracy"],
                       "max_abs_weight_diff_vs_local": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, local_w))}
                if "chunk_seconds" in res:
                    chunks = res["chunk_seconds"][1:]
                    row.update(worker_peak_rss_mib=max(res["worker_peak_rss_mib"], default=None),
                               workers_seen=len(res["worker_peak_rss_mib"]), setup_seconds=res["setup_seconds"],
                               chunk_max_s=float(np.mean([max(c) for c in chunks])),
                               chunk_sum_s=float(np.mean([sum(c) for c in chunks])))
                rows.append(row)
                console.print(f"  {row['s_per_round']:.3f} s/round, driver {row['driver_peak_rss_mib']:.0f} MiB")
    done = [r for r in rows if "error" not in r]
    for r in done:
        base = next((b for b in done if b["workload"] == r["workload"] and b["engine"] == "local"), None)
        r["overhead_vs_local"] = r["s_per_round"] / base["s_per_round"] - 1 if base else None
    return {"rows": rows, "projection": ray_projection(done)}


def ray_projection(rows: list[dict[str, Any]], machines: tuple[int, ...] = (1, 2, 4, 8, 16), per_machine: int = 2) -> list[dict[str, Any]]:
    """PROJECTION, not a measurement: seconds per round on N machines of ``per_machine`` workers each.

    From the 1-worker row of each workload: ``W``, the measured time of its one chunk (the whole
    round's training in one task, on one CPU), and ``O``, the rest of its round (the driver's
    aggregation, scheduling, transfers as measured here). With the round split into ``N *
    per_machine`` chunks on workers that each have a core of their own,
    ``T(N) = O + W / (N * per_machine)``. Per-task costs that grow with the number of tasks and
    transfers between machines are not modelled, so this is an upper bound on the speed-up.
    """
    out = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        by = {r["engine"]: r for r in rows if r["workload"] == workload}
        if not {"local", "ray-1"} <= set(by):
            continue
        w = by["ray-1"]["chunk_max_s"]
        o = max(by["ray-1"]["s_per_round"] - w, 0.0)
        for n in machines:
            t = o + w / (n * per_machine)
            out.append({"workload": workload, "machines": n, "workers": n * per_machine, "s_per_round": t,
                        "speedup_vs_local": by["local"]["s_per_round"] / t, "driver_s": o, "training_s": w})
    return out


def ray_markdown(ray: dict[str, Any]) -> list[str]:
    rows = ray.get("rows") or []
    if not rows:
        return []
    r0 = rows[0]
    lines = ["", f"### Ray engine vs local engine ({r0['rounds']} rounds, s/round over rounds 2+; 100 clients per round, "
             "E=5, B=10; a local Ray instance with 1 or 2 worker processes, one chunk per worker and round)", "",
             "| workload | engine | s/round | vs local | driver peak RSS | worker peak RSS | max \\|Δw\\| vs local | accuracy |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['engine']} | failed: {r['error'][:80]} | | | | | |")
            continue
        over = "—" if r.get("overhead_vs_local") is None else f"{100 * r['overhead_vs_local']:+.0f}%"
        worker = f"{r['worker_peak_rss_mib']:.0f} MiB" if r.get("worker_peak_rss_mib") else "—"
        lines.append(f"| {r['workload']} | {r['engine']} | {r['s_per_round']:.3f} | {over} | {r['driver_peak_rss_mib']:.0f} MiB | "
                     f"{worker} | {r['max_abs_weight_diff_vs_local']:.1e} | {r['accuracy']:.4f} |")
    proj = ray.get("projection") or []
    if proj:
        lines += ["", "**PROJECTION, not measured**: seconds per round on N machines with 2 workers each, each worker "
                  "with a core of its own, from the 1-worker row above: T(N) = O + W/(2N), W the round's training "
                  "in one task (measured), O the rest of the round (measured); per-task costs and transfers between "
                  "machines not modelled", "",
                  "| workload | machines | workers | projected s/round | vs local (measured) | O / W (s) |",
                  "|---|---:|---:|---:|---:|---|"]
        for p in proj:
            lines.append(f"| {p['workload']} | {p['machines']} | {p['workers']} | {p['s_per_round']:.3f} | "
                         f"{p['speedup_vs_local']:.1f}× | {p['driver_s']:.3f} / {p['training_s']:.3f} |")
    return lines


def bench_compression(quick: bool) -> list[dict[str, Any]]:
    """Bytes up and final accuracy with and without update compression (digits MLP, 100 clients, C=0.1)."""
    from federated.simulate import SimulationConfig, simulate

    rows = []
    for method, frac in (("none", 0.1), ("int8", 0.1), ("topk", 0.1), ("topk", 0.01)):
        cfg = SimulationConfig(model="mlp-small", data="digits", clients=100, fraction=0.1, local_epochs=5, batch=10,
                               lr=0.1, rounds=10 if quick else 100, compression=method, topk_fraction=frac, seed=0)
        hist = simulate(cfg, progress=False).history
        rows.append({"compression": method if method != "topk" else f"top-{frac:.0%}",
                     "bytes_up_per_round": float(np.mean([r["bytes_up"] for r in hist])),
                     "bytes_down_per_round": float(np.mean([r["bytes_down"] for r in hist])),
                     "final_accuracy": hist[-1]["test_accuracy"], "rounds": len(hist)})
    base = rows[0]["bytes_up_per_round"]
    for r in rows:
        r["up_ratio"] = r["bytes_up_per_round"] / base
    return rows


TABLE_CONFIGS = [  # (label, strategy, E, B)
    ("FedSGD", "fedsgd", 1, None),
    ("FedAvg E=1 B=50", "fedavg", 1, 50),
    ("FedAvg E=1 B=10", "fedavg", 1, 10),
    ("FedAvg E=5 B=50", "fedavg", 5, 50),
    ("FedAvg E=5 B=10", "fedavg", 5, 10),
]


def bench_table(target: float, cap: int, quick: bool) -> list[dict[str, Any]]:
    from federated.server import ServerConfig
    from federated.simulate import SimulationConfig, simulate

    rows = []
    for partition in ("iid", "shards"):
        for label, strategy, epochs, batch in TABLE_CONFIGS:
            cfg = SimulationConfig(model="cnn", data="mnist5k", clients=100, fraction=0.1, local_epochs=epochs,
                                   batch=batch, lr=0.1, rounds=cap, partition=partition, seed=0,
                                   server=ServerConfig(strategy=strategy))
            t0 = time.perf_counter()
            result = simulate(cfg, progress=sys.stdout.isatty(),
                              stop_when=lambda row: row["test_accuracy"] >= target)
            wall = time.perf_counter() - t0
            hist = result.history
            reached = hist[-1]["round"] if hist[-1]["test_accuracy"] >= target else None
            per_client = 4000 // 100
            u = epochs * (1 if batch is None else -(-per_client // batch))
            rows.append({"partition": partition, "config": label, "E": epochs, "B": batch, "updates_per_round": u,
                         "rounds_to_target": reached, "rounds_run": len(hist), "best_accuracy": max(r["test_accuracy"] for r in hist),
                         "wall_seconds": wall, "train_s_per_round": float(np.mean([r["seconds"] for r in hist])),
                         "accuracy": [r["test_accuracy"] for r in hist]})
            console.print(f"  {partition:6} {label:16} rounds to {target:.0%}: {reached or f'> {cap}'}  ({wall:.0f} s)")
            if quick:
                break
    return rows


def speedup_text(rows: list[dict[str, Any]], row: dict[str, Any], cap: int) -> str:
    base = next(r for r in rows if r["partition"] == row["partition"] and r["config"] == "FedSGD")
    mine, theirs = row["rounds_to_target"], base["rounds_to_target"]
    if mine is None:
        return f"> {cap} rounds"
    if theirs is None:
        return f"{mine} (> {cap / mine:.1f}×)"
    return f"{mine} ({theirs / mine:.1f}×)"


def markdown(speed: list[dict[str, Any]], table: list[dict[str, Any]], target: float, cap: int,
             comp: list[dict[str, Any]], ray: dict[str, Any] | None = None) -> str:
    lines = ["### Speed: digits MLP 64-32-10, all clients every round, E=1, B=20, lr 0.1", "",
             "| clients | simulate s/round | naive Keras fit s/round | speed-up | max \\|Δ acc\\| | max \\|Δ w\\| after the naive rounds | peak RSS sim / naive |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in speed:
        wd = f"{r['max_abs_weight_diff_final']:.1e}"
        lines.append(f"| {r['clients']:,} | {r['sim_s_per_round']:.4f} | {r['naive_s_per_round']:.3f} | {r['speedup']:.0f}× | "
                     f"{r['max_abs_accuracy_diff']:.4f} | {wd} | {r['sim_peak_rss_mib']:.0f} / {r['naive_peak_rss_mib']:.0f} MiB |")
    lines += ["", f"### Rounds to {target:.0%} test accuracy: MNIST-5k CNN, 100 clients, C=0.1, lr 0.1 (cap {cap} rounds; "
              "speed-up in rounds over FedSGD)", "",
              "| config | E | B | u (steps/round/client) | IID | non-IID (2 shards/client) |", "|---|---:|---:|---:|---:|---:|"]
    for label, _, epochs, batch in TABLE_CONFIGS:
        cells = []
        for partition in ("iid", "shards"):
            row = next((r for r in table if r["partition"] == partition and r["config"] == label), None)
            cells.append(speedup_text(table, row, cap) if row else "not run")
        u = next((r["updates_per_round"] for r in table if r["config"] == label), "")
        lines.append(f"| {label} | {epochs} | {batch or '∞'} | {u} | {cells[0]} | {cells[1]} |")
    if comp:
        lines += ["", f"### Update compression: digits MLP, 100 clients, C=0.1, E=5, B=10, {comp[0]['rounds']} rounds", "",
                  "| upload | bytes up / round | vs none | final test accuracy |", "|---|---:|---:|---:|"]
        for r in comp:
            lines.append(f"| {r['compression']} | {r['bytes_up_per_round']:,.0f} | {r['up_ratio']:.3f} | {r['final_accuracy']:.4f} |")
    lines += ray_markdown(ray or {})
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, partition in zip(axes, ("iid", "shards")):
        for r in (r for r in table if r["partition"] == partition):
            fedsgd = r["config"] == "FedSGD"  # drawn wide and dashed: FedAvg E=1 B=50 is the same run here
            ax.plot(range(1, len(r["accuracy"]) + 1), r["accuracy"], label=r["config"], linewidth=3.0 if fedsgd else 1.2,
                    linestyle="--" if fedsgd else "-", alpha=0.6 if fedsgd else 1.0)
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(f"MNIST-5k CNN, {'IID' if partition == 'iid' else 'non-IID (2 shards/client)'}")
        ax.set_xlabel("round")
        ax.set_ylim(0.5, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds and configurations")
    parser.add_argument("--part", choices=("all", "speed", "table", "compression", "ray"), default="all")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--cap", type=int, default=600)
    parser.add_argument("--ray-workloads", default=None, help="--part ray: only workloads whose name contains this")
    parser.add_argument("--ray-engines", default=None, help="--part ray: a subset of local,ray-1,ray-2")
    parser.add_argument("--worker", choices=("sim", "naive", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--weights-out", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--compare-rounds", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ray":
        res = worker_ray(args.workload, args.engine, args.rounds, args.weights_out)
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(MARK + json.dumps(res), flush=True)
        return 0
    if args.worker:
        res = (worker_sim if args.worker == "sim" else worker_naive)(args.clients, args.rounds, args.compare_rounds)
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(MARK + json.dumps(res), flush=True)
        return 0
    cap = 20 if args.quick else args.cap
    t0 = time.perf_counter()
    speed = bench_speed(args.quick) if args.part in ("all", "speed") else []
    if speed:
        t = Table(title="simulate vs one Keras fit per client (digits MLP, E=1, B=20)")
        for col in ("clients", "simulate s/round", "naive s/round", "speed-up", "max |Δ acc|", "peak RSS sim/naive MiB"):
            t.add_column(col, justify="right")
        for r in speed:
            t.add_row(f"{r['clients']:,}", f"{r['sim_s_per_round']:.4f}", f"{r['naive_s_per_round']:.3f}",
                      f"{r['speedup']:.0f}×", f"{r['max_abs_accuracy_diff']:.4f}",
                      f"{r['sim_peak_rss_mib']:.0f} / {r['naive_peak_rss_mib']:.0f}")
        console.print(t)
    table = []
    if args.part in ("all", "table"):
        console.print(f"FedAvg table: rounds to {args.target:.0%} (cap {cap}) …")
        table = bench_table(args.target, cap, args.quick)
    comp = bench_compression(args.quick) if args.part in ("all", "compression") else []
    ray = bench_ray(args.quick, args.ray_workloads, args.ray_engines) if args.part in ("all", "ray") else {}
    if ray:
        t = Table(title="local vs Ray engine (s/round, rounds 2+)")
        for col in ("workload", "engine", "s/round", "vs local", "driver RSS MiB", "worker RSS MiB", "max |Δw|"):
            t.add_column(col, justify="right")
        for r in (r for r in ray["rows"] if "error" not in r):
            t.add_row(r["workload"], r["engine"], f"{r['s_per_round']:.3f}",
                      "—" if r.get("overhead_vs_local") is None else f"{100 * r['overhead_vs_local']:+.0f}%",
                      f"{r['driver_peak_rss_mib']:.0f}", f"{r.get('worker_peak_rss_mib') or 0:.0f}",
                      f"{r['max_abs_weight_diff_vs_local']:.1e}")
        console.print(t)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    path = RESULTS / f"federated_sim{suffix}.json"
    report = {
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "speed_target": SPEED_TARGET, "accuracy_target": args.target, "round_cap": cap,
        "speed": speed, "fedavg_table": table, "compression": comp, "ray": ray,
        "seconds": {args.part: time.perf_counter() - t0},
    }
    if args.part != "all" and path.is_file():  # one part re-run: keep the others from the last full run
        old = json.loads(path.read_text())
        for key in ("speed", "fedavg_table", "compression", "ray"):
            if not report[key]:
                report[key] = old.get(key, [])
        if not table:
            report["accuracy_target"], report["round_cap"] = old["accuracy_target"], old["round_cap"]
        report["seconds"] = {**old.get("seconds", {}), **report["seconds"]}
    md = markdown(report["speed"], report["fedavg_table"], report["accuracy_target"], report["round_cap"],
                  report["compression"], report["ray"])
    console.print(md)
    path.write_text(json.dumps(report, indent=1))
    (RESULTS / f"federated_sim{suffix}.md").write_text(md)
    if report["fedavg_table"]:
        plot(report["fedavg_table"], report["accuracy_target"], RESULTS / f"federated_sim_rounds{suffix}.png")
    console.print(f"total {time.perf_counter() - t0:.0f} s; results in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
