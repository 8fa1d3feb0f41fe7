"""Does buffered asynchronous aggregation (FedBuff) beat synchronous rounds when some devices are slow?

1. Simulator (``--part sim``). MNIST-5k (4,000 training images), the CNN, 100 clients with a
   Dirichlet(α = 0.3) label split, E = 1, B = 10, client lr 0.1; 20% of the clients are 10× slower
   (``--slow-fraction 0.2 --slow-factor 10``), a normal client takes 10 local steps per simulated
   second, and the 434 KB model crosses a 1 MB/s link each way. Simulated seconds, server steps,
   client updates and bytes until the test accuracy first reaches the target, for synchronous
   FedAvg with 10 clients per round (no deadline, and a deadline that leaves the slow clients
   out) and FedBuff (K = 10, M = 20, and K = 10, M = 40), all with the default staleness
   ``polynomial:0.5``. Target: FedBuff in at most half the simulated time of the best sync setting.
2. Real rounds (``--part real``). 4 LiteRT device processes over Flower on 127.0.0.1 (mlp-small on
   digits), one slowed by an injected delay of 4× a normal device's update time as the server sees
   it (send, train, reply; so 5× slower), measured first with no slow device (or ``--slow-delay``); wall-clock seconds to the target accuracy, synchronous
   rounds against ``--mode async`` (K = 2, M = 4).

Run: ``nice -n 10 .venv/bin/python benchmarks/federated_async.py [--quick] [--part sim|real]`` (``make bench``).
Writes ``benchmarks/results/federated_async.json`` and the plots ``federated_async_sim.png``
(accuracy against simulated seconds and against client updates) and ``federated_async_real.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def sim_settings(quick: bool) -> list[tuple[str, Any]]:
    from federated.async_sim import TimedConfig
    from federated.clock import ClockConfig
    from federated.fedbuff import BufferConfig

    clock = ClockConfig(steps_per_second=10.0, slow_fraction=0.2, slow_factor=10.0, bandwidth=1e6)
    settings = [
        ("sync FedAvg, 10/round, no deadline", TimedConfig("sync", clock=clock)),
        ("sync FedAvg, 10/round, deadline 2 s", TimedConfig("sync", clock=clock, deadline_s=2.0)),
        ("FedBuff K=10, M=20", TimedConfig("fedbuff", BufferConfig(buffer_size=10, concurrency=20), clock)),
        ("FedBuff K=10, M=40", TimedConfig("fedbuff", BufferConfig(buffer_size=10, concurrency=40), clock)),
    ]
    return settings[:1] + settings[2:3] if quick else settings


def sweep_settings() -> list[tuple[str, Any]]:
    """``--sweep``: the FedBuff settings tried in search of one that reaches the target in half the best sync
    time, and the best sync setting with a higher server learning rate. A label's ``@lr`` is the server lr."""
    from federated.async_sim import TimedConfig
    from federated.clock import ClockConfig
    from federated.fedbuff import BufferConfig

    clock = ClockConfig(steps_per_second=10.0, slow_fraction=0.2, slow_factor=10.0, bandwidth=1e6)
    grid = [(10, 40, "polynomial:0.5", 1.0), (8, 40, "polynomial:0.5", 1.0), (20, 60, "polynomial:0.5", 1.0),
            (10, 35, "polynomial:0.5", 1.0), (5, 20, "polynomial:0.5", 1.0), (10, 50, "polynomial:0.5", 1.0),
            (10, 60, "polynomial:0.5", 1.0), (20, 40, "polynomial:0.5", 1.0), (10, 40, "polynomial:0.25", 1.0),
            (5, 40, "polynomial:0.5", 1.0), (10, 40, "polynomial:0.5", 1.5), (10, 20, "polynomial:0.5", 1.5),
            (10, 40, "polynomial:1", 1.0), (10, 40, "constant", 1.0), (10, 40, "polynomial:0.5", 2.0)]
    grid += [(10, 40, "hinge:10:4", 1.0), (10, 40, "hinge:0.5:4", 1.0), (10, 40, "hinge:1:8", 1.0)]
    rows = [("sync FedAvg, 10/round, deadline 2 s @1.5", TimedConfig("sync", clock=clock, deadline_s=2.0))]
    rows += [(f"FedBuff K={k}, M={m}, {st} @{lr:g}", TimedConfig("fedbuff", BufferConfig(buffer_size=k, concurrency=m,
                                                                                            staleness=st), clock))
             for k, m, st, lr in grid]
    # the server optimizer tried on both sides: momentum 0.5 helps sync and hurts FedBuff here
    rows += [("sync FedAvgM 0.5, 10/round, deadline 2 s", TimedConfig("sync", clock=clock, deadline_s=2.0)),
             ("FedBuff K=10, M=40, FedAvgM 0.5", TimedConfig("fedbuff", BufferConfig(buffer_size=10, concurrency=40),
                                                            clock))]
    return rows


def server_for(label: str) -> Any:
    """A sweep label's server: ``@LR`` sets the server learning rate, ``FedAvgM M`` the strategy and momentum."""
    from federated.server import ServerConfig

    lr = float(label.rpartition("@")[2]) if "@" in label else 1.0
    if "FedAvgM " in label:
        momentum = float(label.split("FedAvgM ")[1].split(",")[0])
        return ServerConfig(strategy="fedavgm", server_lr=lr, server_momentum=momentum)
    return ServerConfig(server_lr=lr)


def bench_sim(target: float, cap: int, quick: bool, work: Path, sweep: bool = False) -> list[dict[str, Any]]:
    from federated.async_sim import simulate_timed
    from federated.simulate import SimulationConfig

    config = SimulationConfig(model="cnn", data="mnist5k", clients=100, fraction=0.1, local_epochs=1, batch=10, lr=0.1,
                              rounds=cap, partition="dirichlet", alpha=0.3, seed=0)
    from dataclasses import replace

    rows = []
    for label, timed in sweep_settings() if sweep else sim_settings(quick):
        print(f"simulating {label} until {target:.0%} (cap {cap} server steps) …", flush=True)
        started = time.perf_counter()
        result = simulate_timed(replace(config, server=server_for(label)), timed, out=work / label.replace(" ", "_").replace(",", "").replace("/", "-"),
                                progress=False, stop_when=lambda row: (row.get("test_accuracy") or 0.0) >= target)
        hit = next((r for r in result.history if (r.get("test_accuracy") or 0.0) >= target), None)
        last = hit or result.history[-1]
        rows.append({
            "setting": label, "timed": timed.to_json(), "reached": hit is not None, "server_steps": last["round"],
            "sim_seconds": last["sim_seconds"], "client_updates": last["client_updates"],
            "dispatched": last["dispatched"], "bytes_down": last["total_bytes_down"], "bytes_up": last["total_bytes_up"],
            "late": last["late"], "accuracy": last.get("test_accuracy"), "wall_s": time.perf_counter() - started,
            "history": [{k: r.get(k) for k in ("round", "sim_seconds", "client_updates", "test_accuracy")}
                        for r in result.history],
        })
        print(f"  {'reached' if hit else 'NOT reached'} after {last['round']} steps, {last['sim_seconds']:.1f} simulated s, "
              f"{last['client_updates']} updates ({rows[-1]['wall_s']:.0f} s wall)", flush=True)
    return rows


def run_deploy(mode: str, out: Path, bundle: Path, rounds: int, slow_delay: float, target: float | None,
               buffer: dict[str, Any] | None = None) -> dict[str, Any]:
    from cloud.fl.launch import DeployConfig, deploy_local
    from cloud.fl.server import FLServerConfig

    server = FLServerConfig(out=str(out), bundle="", mode=mode, buffer=buffer or {}, round_timeout_s=120,
                            clients_wait_s=120)
    started = time.monotonic()
    result = deploy_local(DeployConfig(out=str(out), clients=4, rounds=rounds, bundle=str(bundle),
                                       slow_clients=1 if slow_delay else 0, slow_delay_s=slow_delay, timeout_s=1500),
                          server)
    records = [r for r in result["rounds"] if r.get("round", 0) >= 1 and "refused" not in r]
    hit = next((r for r in records if target is not None and r.get("test_accuracy", 0.0) >= target), None)
    return {
        "mode": mode, "buffer": buffer, "slow_delay_s": slow_delay, "steps": len(records),
        "reached": hit is not None, "steps_to_target": hit["round"] if hit else None,
        "wall_s_to_target": hit["elapsed_s"] if hit else None, "wall_s_total": time.monotonic() - started,
        "round_s_median": statistics.median(r["round_s"] for r in records),
        "exchange_s_median": statistics.median(r.get("exchange_s", r["round_s"]) for r in records),
        "updates_to_target": (sum(len(r["accepted"]) for r in records if r["round"] <= hit["round"]) if hit else None),
        "accuracy_initial": result["rounds"][0].get("test_accuracy"), "accuracy_final": records[-1].get("test_accuracy"),
        "curve": [(0.0, result["rounds"][0].get("test_accuracy"))] + [(r["elapsed_s"], r.get("test_accuracy"))
                                                                      for r in records],
    }


def bench_real(target: float, quick: bool, work: Path, slow_delay: float | None = None,
               rounds: int | None = None) -> dict[str, Any]:
    from cloud.export.exporter import load_run
    from cloud.export.trainable import TrainableConfig, export_trainable
    from cloud.train.training import TrainConfig, train

    run = work / "init-run"
    train(TrainConfig(model="mlp-small", data="digits", epochs=1, patience=None, seed=0), run, progress=False)
    bundle = work / "bundle"
    export_trainable(load_run(run), bundle, TrainableConfig())
    if slow_delay is None:
        print("calibrating: 4 devices, no slow one, 3 synchronous rounds …", flush=True)
        calib = run_deploy("sync", work / "calibrate", bundle, 3, 0.0, None)
        base = calib["exchange_s_median"]  # a device's update as the server sees it: send, train, reply
        delay = 4.0 * base  # a 5x slower device: its update takes 1 + 4 normal update times
        print(f"a normal device's update takes {base:.2f} s; slowing one device by {delay:.2f} s", flush=True)
    else:
        base, delay = slow_delay / 4.0, slow_delay
    rounds = rounds or (6 if quick else 12)
    runs = []
    for mode, steps, buffer in (("sync", rounds, None), ("async", 3 * rounds, {"buffer_size": 2, "concurrency": 4})):
        print(f"running {mode} with one slow device, up to {steps} steps …", flush=True)
        runs.append(run_deploy(mode, work / f"real-{mode}", bundle, steps, delay, target, buffer))
    return {"normal_update_s": base, "slow_delay_s": delay, "target": target, "runs": runs}


def plot_real(real: dict[str, Any], path: Path) -> None:
    from federated.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in real["runs"]:
        label = "sync rounds" if r["mode"] == "sync" else f"async FedBuff K={r['buffer']['buffer_size']}, M={r['buffer']['concurrency']}"
        ax.plot(*zip(*r["curve"]), marker=".", label=label)
    ax.axhline(real["target"], color="grey", linestyle="--", linewidth=0.8, label=f"target {real['target']:.0%}")
    ax.set_xlabel("wall-clock seconds (4 LiteRT devices, one 5× slower)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "sim", "real"), default="all")
    parser.add_argument("--quick", action="store_true", help="two simulator settings, a lower target, fewer rounds")
    parser.add_argument("--target", type=float, default=None, help="simulator target accuracy (default 0.90; quick 0.80)")
    parser.add_argument("--cap", type=int, default=None, help="server steps at most per simulator setting (default 400)")
    parser.add_argument("--real-target", type=float, default=0.85)
    parser.add_argument("--real-rounds", type=int, default=None, help="sync rounds (async: 3x as many steps); default 12")
    parser.add_argument("--slow-delay", type=float, default=None,
                        help="seconds injected per update on the slow device (default: 4x a calibrated normal update)")
    parser.add_argument("--sweep", action="store_true",
                        help="--part sim: the FedBuff settings searched for the target (writes federated_async_sweep.json)")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/federated_async[_sweep].json")
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / ("federated_async_sweep.json" if args.sweep else "federated_async.json")
    if args.sweep and args.part != "sim":
        parser.error("--sweep goes with --part sim")

    from rich.console import Console
    from rich.table import Table

    target = args.target or (0.80 if args.quick else 0.90)
    cap = args.cap or (120 if args.quick else 400)
    report: dict[str, Any] = {}
    if args.out.exists():
        report = json.loads(args.out.read_text())
    console = Console(width=170)
    with tempfile.TemporaryDirectory(prefix="edgeloop-async-bench-") as tmp:
        work = Path(tmp)
        if args.part in ("all", "sim"):
            rows = bench_sim(target, cap, args.quick, work, args.sweep)
            sync = [r for r in rows if r["setting"].startswith("sync") and r["reached"]]
            best = min(sync, key=lambda r: r["sim_seconds"]) if sync else None
            table = Table(title=f"Simulator: MNIST-5k CNN, 100 clients, Dirichlet α=0.3, 20% 10× slower; to {target:.0%}")
            for col in ("setting", "reached", "server steps", "simulated s", "vs best sync", "client updates",
                        "MB down", "MB up", "late", "wall s"):
                table.add_column(col, justify="right")
            for r in rows:
                ratio = f"{best['sim_seconds'] / r['sim_seconds']:.2f}×" if best and r["reached"] else "-"
                table.add_row(r["setting"], "yes" if r["reached"] else "no", str(r["server_steps"]),
                              f"{r['sim_seconds']:.1f}", ratio, str(r["client_updates"]), f"{r['bytes_down'] / 1e6:.1f}",
                              f"{r['bytes_up'] / 1e6:.1f}", str(r["late"]), f"{r['wall_s']:.0f}")
            console.print(table)
            fedbuff = [r for r in rows if r["setting"].startswith("FedBuff") and r["reached"]]
            if best and fedbuff:
                fastest = min(fedbuff, key=lambda r: r["sim_seconds"])
                met = fastest["sim_seconds"] <= 0.5 * best["sim_seconds"]
                print(f"target: FedBuff within half the simulated time of the best sync setting: {'met' if met else 'NOT met'} "
                      f"({fastest['sim_seconds']:.1f} s vs {best['sim_seconds']:.1f} s, "
                      f"{best['sim_seconds'] / fastest['sim_seconds']:.2f}× faster)")
            from federated.plots import plot_runs

            png = plot_runs({r["setting"]: r["history"] for r in rows},
                            args.out.parent / ("federated_async_sweep.png" if args.sweep else "federated_async_sim.png"),
                            target, x="time")
            print(f"plot: {png}")
            report["sim"] = {"quick": args.quick, "target": target, "cap": cap, "rows": rows}
        if args.part in ("all", "real"):
            real = bench_real(args.real_target, args.quick, work, args.slow_delay, args.real_rounds)
            table = Table(title=f"Real rounds: 4 LiteRT devices over Flower, one 5× slower ({real['slow_delay_s']:.1f} s "
                                f"injected per update); to {args.real_target:.0%}")
            for col in ("mode", "reached", "steps to target", "wall s to target", "vs sync", "updates to target",
                        "median s/step", "accuracy start → end"):
                table.add_column(col, justify="right")
            sync_s = real["runs"][0]["wall_s_to_target"]
            for r in real["runs"]:
                ratio = f"{sync_s / r['wall_s_to_target']:.2f}×" if sync_s and r["wall_s_to_target"] else "-"
                table.add_row(r["mode"], "yes" if r["reached"] else "no", str(r["steps_to_target"]),
                              f"{r['wall_s_to_target']:.1f}" if r["wall_s_to_target"] else "-", ratio,
                              str(r["updates_to_target"]), f"{r['round_s_median']:.2f}",
                              f"{100 * r['accuracy_initial']:.1f}% → {100 * r['accuracy_final']:.1f}%")
            console.print(table)
            plot_real(real, args.out.parent / "federated_async_real.png")
            print(f"plot: {args.out.parent / 'federated_async_real.png'}")
            report["real"] = {"quick": args.quick, "args": {"slow_delay": args.slow_delay, "real_rounds": args.real_rounds,
                                                            "real_target": args.real_target}, **real}
    report["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
