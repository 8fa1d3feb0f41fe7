"""``edgeloop device …`` (also ``python -m device …``): predict, bench, info, bundles.

Imports numpy, the interpreter and rich only; never TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from device.errors import EdgeloopError
from device.runtime.resolve import resolve_bundle


def _threads(args: argparse.Namespace) -> int | None:
    """One ``--threads`` value (predict, info); bench takes a list."""
    from device.runtime.bench import parse_threads

    values = parse_threads(args.threads)
    if len(values) != 1:
        raise ValueError(f"--threads takes one value here (a list like 1,2 is for 'bench'), got {args.threads!r}")
    return values[0]


def _runtime(args: argparse.Namespace, threads: int | None = None) -> Any:
    from device.runtime.native_log import quiet_native_output
    from device.runtime.runtime import Runtime

    with quiet_native_output(stdout=False):  # LiteRT's "Created XNNPACK delegate" INFO line
        return Runtime(resolve_bundle(args.bundle), num_threads=threads, signature=args.signature)


def _split(outputs: dict[str, Any], single: bool) -> list[dict[str, Any]]:
    """Per-sample output mappings from batched outputs."""
    if single:
        return [outputs]
    n = len(next(iter(outputs.values())))
    return [{name: out[i] for name, out in outputs.items()} for i in range(n)]


def cmd_predict(args: argparse.Namespace) -> int:
    from device.runtime.inputs import read_input

    if args.top_k < 1:
        raise ValueError(f"--top-k must be an integer >= 1, got {args.top_k}")
    if args.inputs.count("-") > 1:
        raise ValueError("'-' (JSON on stdin) can be given only once")
    runtime = _runtime(args, _threads(args))
    ranks = runtime.task in ("classification", "multilabel") or (
        runtime.task == "raw" and len(runtime.output_specs) == 1 and len(runtime.output_spec.shape) == 1)
    predictions: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for item in args.inputs:
        raw = read_input(item, runtime.input_specs, invert=args.invert)
        name = "stdin" if item == "-" else item
        if ranks and not (args.json and runtime.task == "raw"):
            preds = runtime.classify(raw, k=args.top_k)
            for i, pred in enumerate(preds):
                predictions.append({"input": name if len(preds) == 1 else f"{name}[{i}]", **pred.to_json()})
            continue
        outputs, single = runtime._run(raw)
        per_sample = _split(outputs, single)
        for i, sample in enumerate(per_sample):
            results.append({"input": name if len(per_sample) == 1 else f"{name}[{i}]",
                            "outputs": {k: np.asarray(v).tolist() for k, v in sample.items()}})
    if args.json:
        doc: dict[str, Any] = {"bundle": runtime.describe()}
        if predictions:
            doc["predictions"] = predictions
        if results:
            doc["results"] = results
        print(json.dumps(doc, indent=2))
        return 0
    info = runtime.describe()
    title = (f"{info.get('name', runtime.path.name)} {info.get('version', '')} ({info.get('mode', 'raw .tflite')}, "
             f"{runtime.task}, {runtime.backend})")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # the legacy tflite-runtime install may lack rich: plain text
        print(title)
        for r in predictions:
            print(f"{r['input']}\t{r['label']}\t{r['confidence']:.3f}")
        for r in results:
            print(f"{r['input']}\t" + "  ".join(f"{k}={_summary(v)}" for k, v in r["outputs"].items()))
        return 0
    table = Table(title=title)
    table.add_column("input")
    if predictions:
        table.add_column("label", justify="right")
        table.add_column("probability" if runtime.task == "classification" else "score", justify="right")
        table.add_column(f"top-{args.top_k}")
        for r in predictions:
            top = ", ".join(f"{t['label']}:{t['probability']:.2f}" for t in r["top"])
            table.add_row(r["input"], r["label"], f"{r['confidence']:.3f}", top)
    else:
        for spec in runtime.output_specs:
            table.add_column(f"{spec.name} {list(spec.shape)}")
        for r in results:
            table.add_row(r["input"], *(_summary(v) for v in r["outputs"].values()))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def _summary(value: Any, show: int = 4) -> str:
    """A short text for one output of one sample: the values if few, else shape and range."""
    arr = np.asarray(value)
    if arr.size <= show:
        return ", ".join(f"{v:.4g}" for v in arr.ravel().tolist())
    return f"{list(arr.shape)} min {arr.min():.4g} max {arr.max():.4g} mean {arr.mean():.4g}"


def cmd_bench(args: argparse.Namespace) -> int:
    from device.runtime.bench import BenchConfig, bare_call, latency_summary, parse_threads, random_inputs, time_interleaved

    config = BenchConfig(runs=args.runs, warmup=args.warmup, batch=args.batch, threads=parse_threads(args.threads))
    rows = []
    runtime = None
    for threads in config.threads:
        runtime = _runtime(args, threads)
        x = random_inputs(runtime.input_specs, config.batch, seed=0)
        call = runtime.predict if len(runtime.output_specs) == 1 else runtime.run
        bare, feeds = bare_call(runtime, x, threads)
        times, bare_times = time_interleaved([(call, x), (bare, feeds)], runs=config.runs, warmup=config.warmup)
        timed, base = latency_summary(times, batch=config.batch), latency_summary(bare_times, batch=config.batch)
        rows.append({"threads": threads, "call": f"Runtime.{call.__name__}", "runtime": timed, "bare": base,
                     "overhead_pct": 100.0 * (timed["median_ms"] / base["median_ms"] - 1.0)})
    assert runtime is not None
    first = rows[0]
    summary = {"bundle": str(runtime.path), "backend": runtime.backend, "threads": first["threads"],
               "task": runtime.task, **first["runtime"], "rows": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{runtime.path}  backend={runtime.backend}  task={runtime.task}  batch={config.batch}  "
          f"{config.runs} timed runs each, interleaved in 5 blocks, {config.warmup} warm-up runs")
    header = (f"{'threads':>7}  {'call':<15} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>10}  "
              f"{'bare invoke ms':>14}  {'overhead':>8}  {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    base_median = first["runtime"]["median_ms"]
    for row in rows:
        r, b = row["runtime"], row["bare"]
        print(f"{row['threads'] or 'default':>7}  {row['call']:<15} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} "
              f"{r['p99_ms']:>9.3f} {r['throughput_per_s']:>10.0f}  {b['median_ms']:>14.3f}  "
              f"{row['overhead_pct']:>+7.1f}%  {base_median / r['median_ms']:>7.2f}x")
    print("bare invoke: set_tensor/invoke/get_tensor on model-ready inputs, same model, backend and threads; "
          "speed-up is against the first --threads value")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    runtime = _runtime(args, _threads(args))
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
        p.add_argument("--threads", default=None,
                       help="interpreter threads (default: the interpreter's); bench takes a list, e.g. 1,2,4")
        p.add_argument("--signature", default=None, help="which signature of a multi-signature model to run")

    p = sub.add_parser("predict", help="run a model on images, .npy/.npz/.csv files or JSON on stdin")
    bundle_args(p)
    p.add_argument("inputs", nargs="+", help="image files (PNG/JPEG/…), .npy or .npz arrays (a sample or a batch), "
                   ".csv (a sample per row), or - for JSON on stdin; raw units")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--invert", action="store_true", help="invert images (dark digit on light paper -> MNIST style)")
    p.add_argument("--json", action="store_true", help="machine-readable output (raw models: every output tensor)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("bench", help="latency of Runtime beside the bare interpreter loop, per --threads value")
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
