"""``edgeloop device …`` (also ``python -m device …``): predict, bench, info, bundles.

Imports numpy, the interpreter and rich only; never TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from device.errors import EdgeloopError
from device.runtime.resolve import resolve_bundle


def _runtime(args: argparse.Namespace) -> Any:
    from device.runtime.native_log import quiet_native_output
    from device.runtime.runtime import Runtime

    with quiet_native_output(stdout=False):  # LiteRT's "Created XNNPACK delegate" INFO line
        return Runtime(resolve_bundle(args.bundle), num_threads=args.threads)


def cmd_predict(args: argparse.Namespace) -> int:
    from device.runtime.images import read_input

    runtime = _runtime(args)
    results: list[dict[str, Any]] = []
    for item in args.inputs:
        raw = read_input(item, runtime.input_spec.shape, invert=args.invert)
        preds = runtime.classify(raw, k=args.top_k)
        for i, pred in enumerate(preds):
            results.append({"input": item if len(preds) == 1 else f"{item}[{i}]", **pred.to_json()})
    if args.json:
        print(json.dumps({"bundle": runtime.describe(), "predictions": results}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    info = runtime.describe()
    title = f"{info.get('name', runtime.path.name)} {info.get('version', '')} ({info.get('mode', 'raw .tflite')}, {runtime.backend})"
    table = Table(title=title)
    table.add_column("input")
    table.add_column("label", justify="right")
    table.add_column("confidence", justify="right")
    table.add_column(f"top-{args.top_k}")
    for r in results:
        top = ", ".join(f"{t['label']}:{t['probability']:.2f}" for t in r["top"])
        table.add_row(r["input"], r["label"], f"{r['confidence']:.3f}", top)
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from device.runtime.bench import latency_summary, random_raw_input, time_calls

    runtime = _runtime(args)
    x = random_raw_input((args.batch, *runtime.input_spec.shape), runtime.input_spec.raw_dtype, seed=0)
    times = time_calls(runtime.predict, x, runs=args.runs, warmup=args.warmup)
    summary = {"bundle": str(runtime.path), "backend": runtime.backend, "threads": args.threads,
               **latency_summary(times, batch=args.batch)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{runtime.path}  backend={runtime.backend}  threads={args.threads or 'default'}  batch={args.batch}")
    print(f"warm-up {args.warmup} runs, then {args.runs} timed runs of Runtime.predict")
    print(
        f"median {summary['median_ms']:.3f} ms   p90 {summary['p90_ms']:.3f} ms   p99 {summary['p99_ms']:.3f} ms   "
        f"mean {summary['mean_ms']:.3f} ms   throughput {summary['throughput_per_s']:.0f} samples/s"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    info = runtime.describe()
    if runtime.manifest is not None:
        info["manifest"] = runtime.manifest.to_json()
    print(json.dumps(info, indent=2))
    return 0


def cmd_bundles(args: argparse.Namespace) -> int:
    from models import bundles

    for name in bundles.names():
        print(f"{name}\t{bundles.path(name)}")
    return 0


def cmd_fl_client(args: argparse.Namespace) -> int:
    import os

    from device.fl.client import supernode_argv
    from device.fl.loopback import free_port
    from device.fl.trainer import DeviceTrainer, load_local_data
    from device.runtime.native_log import quiet_native_output

    bundle = resolve_bundle(args.bundle)
    with quiet_native_output(stdout=False):
        trainer = DeviceTrainer(bundle)  # fails now, with a clear message, for a non-trainable bundle
    data = load_local_data(args.data, trainer.manifest)
    port = args.clientappio_port or free_port()
    fault_options = {k: v for k, v in (("delay", args.fault_delay), ("marker", args.fault_marker)) if v}
    argv = supernode_argv(args.server, bundle, str(args.data), port, root_certificates=args.root_certificates,
                          seed=args.seed, fault=args.fault, fault_options=fault_options)
    print(f"joining {args.server} with {trainer.manifest.name} ({len(data)} local samples, train batch "
          f"{trainer.batch}); ClientAppIo on 127.0.0.1:{port}", flush=True)
    os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.task_poll_interval)
    # the checks above loaded LiteRT; the long-lived supervisor needs none of it: exec a lean one (same PID)
    settings = {"argv": argv, "poll_interval": args.poll_interval, "max_backoff": args.max_backoff,
                "lean_launcher": not args.stock_clientapp, "zygote": not args.no_zygote}
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "device.fl.client", "supervise", json.dumps(settings)])
    return 0  # not reached


def build_parser(prog: str = "edgeloop device") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run edgeloop bundles with LiteRT (no TensorFlow).")
    sub = parser.add_subparsers(dest="command", required=True)

    def bundle_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle", help="bundle directory, .tflite file, or shipped bundle name (see 'bundles')")
        p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: the interpreter's)")

    p = sub.add_parser("predict", help="classify image files or .npy arrays")
    bundle_args(p)
    p.add_argument("inputs", nargs="+", help="image files (PNG/JPEG/…) or .npy arrays in raw units")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--invert", action="store_true", help="invert images (dark digit on light paper -> MNIST style)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("bench", help="latency: warm-up, then median/p90/p99 and throughput")
    bundle_args(p)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="describe a bundle or .tflite as JSON")
    bundle_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fl-client", help="join federated rounds as a Flower SuperNode, training in LiteRT")
    p.add_argument("--server", required=True, help="the SuperLink's Fleet address, e.g. 127.0.0.1:9093")
    p.add_argument("--data", required=True, help="local data: an .npz (x, y), an image folder, or scheme:PATH")
    p.add_argument("--bundle", required=True, help="a trainable bundle (edgeloop cloud export --trainable)")
    p.add_argument("--root-certificates", default=None, help="CA certificate (PEM) to reach a TLS SuperLink")
    p.add_argument("--clientappio-port", type=int, default=0, help="local port for the ClientApp (default: a free one)")
    p.add_argument("--seed", type=int, default=0, help="local shuffling seed")
    p.add_argument("--poll-interval", type=float, default=0.05, help="SuperNode idle poll, seconds")
    p.add_argument("--max-backoff", type=float, default=2.0, help="longest wait between reconnection attempts, seconds")
    p.add_argument("--task-poll-interval", type=float, default=0.05, help="SuperExec poll for new ClientApp tasks, seconds")
    p.add_argument("--stock-clientapp", action="store_true",
                   help="start each round's ClientApp with Flower's own flwr-clientapp (slower, more memory)")
    p.add_argument("--no-zygote", action="store_true",
                   help="start each round's ClientApp as a fresh process instead of forking a warm one")
    # fault injection for the fault tests: send NaN or wrong-shape weights, or stall before training
    p.add_argument("--fault", choices=("nan", "wrong-shape", "slow"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--fault-delay", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fault-marker", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_fl_client)

    p = sub.add_parser("bundles", help="list the pretrained bundles shipped with edgeloop")
    p.set_defaults(func=cmd_bundles)

    from device.agent.cli import register as register_agent  # edgeloop device run

    register_agent(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "edgeloop device") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return int(args.func(args))
    except (EdgeloopError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
