"""``edgeloop federated simulate | partition | plot``: the simulator's commands.

Kept apart from :mod:`federated.cli` so other command groups can be added there independently.
TensorFlow is imported only inside ``simulate``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from federated.compress import METHODS
from federated.partition import ALL_SCHEMES
from federated.server import AGGREGATORS
from federated.server_opt import STRATEGIES


def _batch(value: str) -> int | None:
    if value.lower() in ("full", "0", "inf"):
        return None
    return int(value)


def add_commands(sub: Any) -> None:
    sim = sub.add_parser("simulate", help="simulate federated training of a registry model on many clients",
                         description="Simulate FedAvg-family training: sample clients, train them locally in one compiled "
                                     "TensorFlow call per round, aggregate on the numpy server.")
    g = sim.add_argument_group("data and model")
    g.add_argument("--model", default="cnn", help="registry model (cnn, mlp, mlp-small)")
    g.add_argument("--data", default="mnist5k", help="mnist5k, digits, an .npz or an image folder")
    g.add_argument("--clients", type=int, default=100)
    g.add_argument("--partition", choices=ALL_SCHEMES, default="iid", help="resample: clients draw samples, repeats allowed")
    g.add_argument("--samples-per-client", type=int, default=None, help="resample: samples each client draws")
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (dirichlet, quantity)")
    g.add_argument("--shards-per-client", type=int, default=2)
    g.add_argument("--test-fraction", type=float, default=0.2)
    g.add_argument("--seed", type=int, default=0)
    g = sim.add_argument_group("rounds and clients")
    g.add_argument("--rounds", type=int, default=50)
    g.add_argument("--fraction", type=float, default=0.1, help="fraction C of clients sampled per round")
    g.add_argument("--local-epochs", type=int, default=1)
    g.add_argument("--batch", type=_batch, default=10, help="local batch size, or 'full'")
    g.add_argument("--lr", type=float, default=0.1, help="client SGD learning rate")
    g.add_argument("--no-client-shuffle", action="store_true", help="local batches in data order")
    g.add_argument("--engine", choices=("auto", "vmap", "loop", "ray"), default="auto",
                   help="client training: all clients' steps at once (vmap, dense models), a graph loop over clients, "
                        "or chunks of clients as Ray tasks (ray; auto inside each task)")
    g.add_argument("--ray-address", default=None, help="HOST:PORT of a running Ray cluster's head (ray start --head); "
                                                       "default: start a local instance on 127.0.0.1")
    g.add_argument("--ray-cpus", type=int, default=2, help="CPUs (worker processes) of the local Ray instance")
    g.add_argument("--ray-chunks", type=int, default=None, help="Ray tasks per round (default: one per CPU of the cluster)")
    g.add_argument("--ray-object-store-mb", type=int, default=256, help="object store of the local Ray instance, MiB")
    g.add_argument("--dropout", type=float, default=0.0, help="probability a sampled client drops out")
    g.add_argument("--straggler-prob", type=float, default=0.0)
    g.add_argument("--straggler-slowdown", type=float, default=4.0)
    g.add_argument("--deadline", type=float, default=None, help="in local steps of a normal client")
    g.add_argument("--min-clients", type=int, default=1, help="fewer valid updates refuse the round")
    g.add_argument("--byzantine", type=int, default=0, help="the first N clients send random weights")
    g.add_argument("--byzantine-scale", type=float, default=10.0)
    g = sim.add_argument_group("server")
    g.add_argument("--strategy", choices=(*STRATEGIES, "fedbuff"), default="fedavg",
                   help="a server optimizer for synchronous rounds, or fedbuff (buffered asynchronous, on the clock)")
    g.add_argument("--server-lr", type=float, default=1.0)
    g.add_argument("--server-momentum", type=float, default=0.9)
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.99)
    g.add_argument("--tau", type=float, default=1e-3)
    g.add_argument("--mu", type=float, default=0.0, help="FedProx proximal term")
    g.add_argument("--aggregator", choices=AGGREGATORS, default="mean")
    g.add_argument("--trim-beta", type=float, default=0.1)
    g.add_argument("--krum-byzantine", type=int, default=1)
    g.add_argument("--multi-krum-m", type=int, default=None)
    g.add_argument("--max-update-norm", type=float, default=None)
    g.add_argument("--dp-clip", type=float, default=None, help="turn on DP-FedAvg with this clip norm")
    g.add_argument("--dp-noise", type=float, default=1.0, help="DP noise multiplier z")
    g.add_argument("--dp-delta", type=float, default=1e-5)
    g.add_argument("--compression", choices=METHODS, default="none")
    g.add_argument("--topk-fraction", type=float, default=0.1)
    g = sim.add_argument_group("asynchronous FedBuff and the simulated clock",
                               "--strategy fedbuff, or any of these flags, runs on an event-driven simulated clock; "
                               "metrics.jsonl then also has sim_seconds and client_updates")
    g.add_argument("--server-optimizer", choices=STRATEGIES, default="fedavg",
                   help="with --strategy fedbuff: the server optimizer applied to each full buffer")
    g.add_argument("--concurrency", type=int, default=20, help="FedBuff: clients training at once (M)")
    g.add_argument("--buffer-size", type=int, default=10, help="FedBuff: arrivals per server step (K)")
    g.add_argument("--staleness", default="polynomial:0.5",
                   help="FedBuff staleness weight: constant, polynomial:A (1/(1+s)^A) or hinge:A:B")
    g.add_argument("--max-staleness", type=int, default=None, help="FedBuff: refuse (and count) staler updates")
    g.add_argument("--speed", default=None, help="client speeds: equal or lognormal:SIGMA")
    g.add_argument("--slow-fraction", type=float, default=None, help="this fraction of clients is --slow-factor slower")
    g.add_argument("--slow-factor", type=float, default=10.0)
    g.add_argument("--steps-per-second", type=float, default=10.0, help="local SGD steps per simulated second at speed 1")
    g.add_argument("--bandwidth", type=float, default=1e6, help="bytes per simulated second, each way")
    g.add_argument("--latency", type=float, default=0.0, help="simulated seconds per message")
    g.add_argument("--availability", default=None, help="always, or onoff:ON:OFF (seconds online, then offline)")
    g.add_argument("--deadline-s", type=float, default=None, help="sync on the clock: a round ends after this long")
    g.add_argument("--timed", action="store_true", help="run a synchronous strategy on the simulated clock")
    g = sim.add_argument_group("output")
    g.add_argument("--out", help="directory for metrics.jsonl, accuracy.png and the per-round checkpoint")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--eval-every", type=int, default=1)
    g.add_argument("--export-mode", choices=("float32", "float16", "dynamic", "int8"), default=None,
                   help="export the final global model as a verified device bundle (needs --out)")
    g.add_argument("--json", action="store_true")
    sim.set_defaults(func=cmd_simulate)

    part = sub.add_parser("partition", help="show how a data set splits among clients")
    part.add_argument("--data", default="mnist5k")
    part.add_argument("--clients", type=int, default=100)
    part.add_argument("--partition", "--scheme", dest="scheme", choices=ALL_SCHEMES, default="iid", help="same as simulate's --partition")
    part.add_argument("--samples-per-client", type=int, default=None, help="resample: samples each client draws")
    part.add_argument("--alpha", type=float, default=0.5)
    part.add_argument("--shards-per-client", type=int, default=2)
    part.add_argument("--test-fraction", type=float, default=0.2)
    part.add_argument("--seed", type=int, default=0)
    part.add_argument("--show", type=int, default=10, help="clients listed in the table")
    part.add_argument("--plot", help="write a PNG of the label histogram per client")
    part.add_argument("--json", action="store_true")
    part.set_defaults(func=cmd_partition)

    plot = sub.add_parser("plot", help="plot test accuracy against rounds (or simulated time and client updates)")
    plot.add_argument("runs", nargs="+", help="--out directories (or metrics.jsonl files) of simulations")
    plot.add_argument("--out", required=True, help="PNG to write")
    plot.add_argument("--target", type=float, default=None, help="draw a target accuracy line")
    plot.add_argument("--x", choices=("auto", "rounds", "time"), default="auto",
                      help="time: accuracy against simulated seconds and against client updates, side by side "
                           "(auto: time when every run has them)")
    plot.set_defaults(func=cmd_plot)


def is_timed(args: argparse.Namespace) -> bool:
    """FedBuff, or any clock flag, runs on the simulated clock (:mod:`federated.async_sim`)."""
    return bool(args.strategy == "fedbuff" or args.timed or args.speed or args.slow_fraction or args.availability
                or args.deadline_s is not None)


def timed_config_from_args(args: argparse.Namespace):
    from federated.async_sim import TimedConfig
    from federated.clock import ClockConfig
    from federated.fedbuff import BufferConfig

    clock = ClockConfig(steps_per_second=args.steps_per_second, speed=args.speed or "equal",
                        slow_fraction=args.slow_fraction or 0.0, slow_factor=args.slow_factor,
                        bandwidth=args.bandwidth, latency_s=args.latency, availability=args.availability or "always")
    buffer = BufferConfig(buffer_size=args.buffer_size, concurrency=args.concurrency, staleness=args.staleness,
                          max_staleness=args.max_staleness)
    return TimedConfig(mode="fedbuff" if args.strategy == "fedbuff" else "sync", buffer=buffer, clock=clock,
                       deadline_s=args.deadline_s)


def config_from_args(args: argparse.Namespace):
    from federated.dp import DPConfig
    from federated.server import ServerConfig
    from federated.simulate import SimulationConfig

    server = ServerConfig(
        strategy=args.server_optimizer if args.strategy == "fedbuff" else args.strategy, server_lr=args.server_lr, server_momentum=args.server_momentum, beta1=args.beta1,
        beta2=args.beta2, tau=args.tau, proximal_mu=args.mu, aggregator=args.aggregator, trim_beta=args.trim_beta,
        krum_byzantine=args.krum_byzantine, multi_krum_m=args.multi_krum_m, max_update_norm=args.max_update_norm,
        min_clients=args.min_clients,
        dp=None if args.dp_clip is None else DPConfig(args.dp_clip, args.dp_noise, args.dp_delta),
    )
    return SimulationConfig(
        model=args.model, data=args.data, clients=args.clients, fraction=args.fraction, local_epochs=args.local_epochs,
        batch=args.batch, lr=args.lr, rounds=args.rounds, partition=args.partition, alpha=args.alpha,
        shards_per_client=args.shards_per_client, seed=args.seed, client_shuffle=not args.no_client_shuffle,
        test_fraction=args.test_fraction, dropout=args.dropout, straggler_prob=args.straggler_prob,
        straggler_slowdown=args.straggler_slowdown, deadline=args.deadline, compression=args.compression,
        topk_fraction=args.topk_fraction, byzantine=args.byzantine, byzantine_scale=args.byzantine_scale,
        eval_every=args.eval_every, engine="auto" if args.engine == "ray" else args.engine, server=server,
        samples_per_client=args.samples_per_client,
    )


def ray_config_from_args(args: argparse.Namespace):
    """The Ray settings of ``--engine ray`` (``None`` for the local engines, which take no --ray-* flag)."""
    from federated.errors import ConfigError

    if args.engine != "ray":
        if args.ray_address is not None or args.ray_chunks is not None:
            raise ConfigError("--ray-address and --ray-chunks need --engine ray")
        return None
    from federated.ray_engine import RayConfig

    return RayConfig(address=args.ray_address, num_cpus=args.ray_cpus, chunks=args.ray_chunks,
                     object_store_mb=args.ray_object_store_mb)


def _fmt_row(row: dict[str, Any]) -> str:
    acc = f"{row['test_accuracy']:.4f}" if row.get("test_accuracy") is not None else "-"
    loss = f"{row['train_loss']:.4f}" if row.get("train_loss") is not None else "-"
    eps = f"  ε {row['epsilon']:.3g}" if row.get("epsilon") is not None else ""
    refused = "  REFUSED" if row.get("refused") else ""
    return (f"round {row['round']:>4}  train loss {loss}  test acc {acc}  clients {row['accepted']}/{row['selected']}"
            f" (dropped {row['dropped']}, late {row['late']}, rejected {len(row['rejected'])})  "
            f"↓{row['bytes_down'] / 1e6:.2f} MB ↑{row['bytes_up'] / 1e6:.2f} MB  {row['seconds']:.3f}s{eps}{refused}")


def _fmt_timed_row(row: dict[str, Any]) -> str:
    acc = f"{row['test_accuracy']:.4f}" if row.get("test_accuracy") is not None else "-"
    loss = f"{row['train_loss']:.4f}" if row.get("train_loss") is not None else "-"
    stale = f"  staleness {row['staleness_mean']:.2f} (max {row['staleness_max']:.0f})" if "staleness_mean" in row else ""
    eps = f"  ε {row['epsilon']:.3g}" if row.get("epsilon") is not None else ""
    refused = "  REFUSED" if row.get("refused") else ""
    return (f"step {row['round']:>4}  t={row['sim_seconds']:10.1f} s  updates {row['client_updates']:>5}  train loss {loss}  "
            f"test acc {acc}  accepted {row['accepted']}{stale}  lost {row['lost_dropout'] + row['lost_offline']}  "
            f"late {row['late']}  stale-refused {row['stale_refused']}  ↓{row['total_bytes_down'] / 1e6:.1f} MB "
            f"↑{row['total_bytes_up'] / 1e6:.1f} MB{eps}{refused}")


def cmd_simulate(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from federated.errors import ConfigError
    from federated.simulate import export_model, simulate

    config = config_from_args(args)
    timed = timed_config_from_args(args) if is_timed(args) else None
    ray_config = ray_config_from_args(args)
    if timed is not None and ray_config is not None:
        raise ConfigError("--engine ray trains synchronous rounds; the simulated-clock modes (--strategy fedbuff, "
                          "--speed, --slow-fraction) run on the local engine")
    if args.export_mode and not args.out:
        raise ConfigError("--export-mode needs --out (the bundle is written under OUT/bundles/)")
    if not args.json:
        how = (f"fedbuff (K={timed.buffer.buffer_size}, M={timed.buffer.concurrency}, {timed.buffer.staleness}, "
               f"server {config.server.strategy})" if timed and timed.mode == "fedbuff" else config.server.strategy)
        print(f"simulating {how} on {config.data}/{config.model}: {config.clients} clients "
              f"({config.partition}), C={config.fraction:g}, E={config.epochs}, B={config.batch_size or 'full'}, "
              f"lr={config.lr:g}, {config.rounds} {'server steps' if timed else 'rounds'}, seed {config.seed}"
              + (" on the simulated clock" if timed else "") + (f" → {args.out}" if args.out else ""))
    if timed is not None:
        from federated.async_sim import simulate_timed

        result = simulate_timed(config, timed, out=args.out, resume=args.resume, progress=not args.json,
                                stop_after=args.stop_after,
                                on_round=None if args.json else lambda row: print(_fmt_timed_row(row), flush=True))
    else:
        pool = None
        if ray_config is not None:
            from federated.ray_engine import ray_pool

            pool = ray_pool(ray_config)
            if not args.json:
                print("training the clients on " + (f"the Ray cluster at {ray_config.address}" if ray_config.address
                                                    else f"a local Ray instance ({ray_config.num_cpus} CPUs, 127.0.0.1)"))
        result = simulate(config, out=args.out, resume=args.resume, progress=not args.json, stop_after=args.stop_after,
                          on_round=None if args.json else lambda row: print(_fmt_row(row), flush=True), pool=pool)
    export = None
    if args.export_mode and len(result.history) == config.rounds:
        from device.runtime.native_log import quiet_native_output

        with quiet_native_output(stdout=False):  # LiteRT's XNNPACK INFO line
            v = export_model(config, result.final_weights, args.out, args.export_mode)
        export = {"bundle": str(Path(args.out) / "bundles"), **v.to_json()}
    last = result.history[-1] if result.history else {}
    if args.json:
        print(json.dumps({"config": config.to_json(), "timed": timed.to_json() if timed else None,
                          "engine": args.engine, "rounds_done": len(result.history), "last": last,
                          "out": args.out, "export": export}, indent=2, default=str))
    else:
        if args.out:
            print(f"metrics in {Path(args.out) / 'metrics.jsonl'}, plot {Path(args.out) / 'accuracy.png'}")
        if export:
            print(f"{args.export_mode} bundle verified and written under {export['bundle']}: "
                  f"accuracy {100 * export['tflite_accuracy']:.2f}% (Keras {100 * export['keras_accuracy']:.2f}%)")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    import numpy as np

    from cloud.train.data import load_dataset, stratified_split
    from federated.partition import PartitionConfig, partition, summary

    ds = load_dataset(args.data, args.seed)
    train, _ = stratified_split(ds, args.test_fraction, args.seed)
    parts = partition(train.y, PartitionConfig(args.scheme, args.clients, args.alpha, args.shards_per_client, args.seed,
                                               args.samples_per_client))
    s = summary(train.y, parts, len(ds.labels))
    if args.plot:
        from federated.plots import plot_partition

        plot_partition(np.asarray(s["histogram"]), args.plot, f"{args.data}: {args.scheme}, {args.clients} clients")
    if args.json:
        print(json.dumps({"data": args.data, "scheme": args.scheme, **s}))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.data} ({s['samples']} training samples) → {args.clients} clients, {args.scheme}")
    table.add_column("client")
    table.add_column("samples", justify="right")
    for label in ds.labels:
        table.add_column(label, justify="right")
    for i, row in enumerate(s["histogram"][: args.show]):
        table.add_row(str(i), str(sum(row)), *[str(v) if v else "·" for v in row])
    console = Console()
    console.print(table)
    spc, cpc = s["samples_per_client"], s["classes_per_client"]
    console.print(f"samples per client: min {spc['min']}, median {spc['median']:g}, max {spc['max']}; "
                  f"classes per client: min {cpc['min']}, median {cpc['median']:g}, max {cpc['max']}"
                  + (f"; plot: {args.plot}" if args.plot else ""))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from federated.plots import plot_runs
    from federated.simulate import read_history

    runs = {}
    for run in args.runs:
        path = Path(run)
        label = path.name if path.is_dir() else path.parent.name
        runs[label if label not in runs else str(path)] = read_history(path)
    print(f"wrote {plot_runs(runs, args.out, args.target, x=args.x)}")
    return 0
