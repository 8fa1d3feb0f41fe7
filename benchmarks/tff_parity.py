"""Does edgeloop's FedAvg give TensorFlow Federated's weights? And how fast is each per round?

The simulator's exact plan (client data, initial weights, clients per round in order; no in-client
shuffling) runs three ways: TFF 0.87 ``build_weighted_fed_avg`` through
``tff.simulation.run_training_process`` in ``.venv-tff`` (its own process group, ended afterwards,
since TFF leaves ``worker_binary`` servers listening), edgeloop's ``simulate``, and a float64 numpy
FedAvg as an independent oracle. Asserts max |Δw| between TFF and edgeloop <= 1e-5 (exit 1 if
not) and reports seconds per round: round 1 (tracing included) and the median of later rounds.

Default workload: sklearn digits, mlp-small (64-32-10), 10 IID clients, 5 per round, 20 rounds,
E = 1, B = 20, client SGD lr 0.1, server lr 1.0.

Run: ``make tff-parity`` (builds ``.venv-tff`` from ``federated/parity/requirements-tff.lock``),
or ``.venv/bin/python benchmarks/tff_parity.py [--rounds N …]``. Writes
``benchmarks/results/tff_parity.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--partition", default="iid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", default="auto", choices=("auto", "vmap", "loop"), help="the simulator's client engine")
    p.add_argument("--tff-venv", type=Path, default=ROOT / ".venv-tff")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds the TFF process may run")
    p.add_argument("--out", type=Path, default=RESULTS / "tff_parity.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from federated.parity.check import TOLERANCE, run_parity
    from federated.parity.errors import ParityError, TFFRunError
    from federated.simulate import SimulationConfig

    console = Console() if sys.stdout.isatty() else Console(width=120)
    config = SimulationConfig(model="mlp-small", data="digits", clients=args.clients, fraction=args.fraction,
                              local_epochs=args.epochs, batch=args.batch, lr=args.lr, rounds=args.rounds,
                              partition=args.partition, seed=args.seed, client_shuffle=False,
                              engine=args.engine)
    try:
        with tempfile.TemporaryDirectory(prefix="tff-parity-") as tmp:
            report = run_parity(config, tmp, tff_venv=args.tff_venv, timeout=args.timeout)
    except (ParityError, TFFRunError) as exc:
        console.print(f"[red]tff-parity: {exc}")
        return 1

    table = Table(title=f"FedAvg parity: {config.data}, {config.model}, {config.clients} clients × {config.fraction} "
                        f"per round, {config.rounds} rounds, E={config.local_epochs}, B={config.batch}, lr {config.lr}")
    for col in ("engine", "round 1 (s)", "later rounds, median (s)", "test accuracy", "max |Δw| vs TFF"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    vs_tff = {"tff": 0.0, "edgeloop": report.diffs["tff-edgeloop"], "numpy": report.diffs["tff-numpy"]}
    for key in ("tff", "edgeloop", "numpy"):
        run = getattr(report, key)
        table.add_row(run.engine, f"{run.first_round_seconds:.4f}", f"{run.steady_round_seconds:.4f}",
                      f"{run.test_accuracy:.4f}", "—" if key == "tff" else f"{vs_tff[key]:.2e}")
    console.print(table)
    speedup = report.tff.steady_round_seconds / report.edgeloop.steady_round_seconds
    console.print(f"TFF: {report.tff_versions}; process wall {report.tff_wall_seconds:.1f} s "
                  f"(build_weighted_fed_avg {report.tff_build_seconds:.1f} s); "
                  f"{len(report.tff_leftover_pids)} process(es) left in its group after it exited, ended "
                  f"(pids {', '.join(map(str, report.tff_leftover_pids)) or '-'}); "
                  + ("it ran in a loopback-only network namespace" if report.tff_network_isolated
                     else "[yellow]no network namespace here: worker_binary listened on all interfaces while it ran"))
    console.print(f"edgeloop vs numpy oracle: max |Δw| {report.diffs['edgeloop-numpy']:.2e}; training moved the weights by "
                  f"up to {report.diffs['initial-final']:.3f}; edgeloop is {speedup:.1f}x TFF's speed per later round")
    verdict = "PASS" if report.passed else "FAIL"
    console.print(f"[bold]{verdict}[/]: max |Δw| TFF vs edgeloop = {report.diffs['tff-edgeloop']:.2e} "
                  f"(tolerance {TOLERANCE:.0e})")

    engines = {}
    for key in ("tff", "edgeloop", "numpy"):
        run = getattr(report, key)
        engines[key] = {"engine": run.engine, "round_seconds": run.round_seconds,
                        "first_round_seconds": run.first_round_seconds,
                        "later_rounds_median_seconds": run.steady_round_seconds, "test_accuracy": run.test_accuracy}
    payload = {
        "benchmark": "tff_parity",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "config": config.to_json(),
        "tolerance": TOLERANCE,
        "max_abs_diff": report.diffs,
        "passed": report.passed,
        "engines": engines,
        "edgeloop_speedup_vs_tff_later_rounds": speedup,
        "tff_versions": report.tff_versions,
        "tff_process_wall_seconds": report.tff_wall_seconds,
        "tff_build_seconds": report.tff_build_seconds,
        "tff_network_isolated": report.tff_network_isolated,
        "tff_leftover_processes_ended": len(report.tff_leftover_pids),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
