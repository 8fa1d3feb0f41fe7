"""``edgeloop cloud …``: train, export, profile, ship-bundles.

TensorFlow is imported inside the commands, after TF's own log level is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from device.errors import EdgeloopError
from federated.errors import FederatedError


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def cmd_train(args: argparse.Namespace) -> int:
    from cloud.train.data import parse_image_size
    from cloud.train.training import TrainConfig, absolute_data, train

    config = TrainConfig(
        model=args.model,
        data=absolute_data(args.data),
        optimizer=args.optimizer,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        epochs=args.epochs,
        patience=args.patience or None,
        min_delta=args.min_delta,
        seed=args.seed,
        image_size=parse_image_size(args.image_size) if args.image_size else None,
        color=args.color,
        label_column=_label_column(args.label_column),
    )
    out = Path(args.out or f"runs/{Path(config.data).stem}-{config.model}")

    def announce(splits) -> None:  # after the model and the data have been checked, before anything is written
        if args.json:
            return
        if splits.train.note:
            print(f"data {splits.train.note}")
        print(f"training {config.model} on {args.data} → {out}  "
              f"(optimizer {config.optimizer} lr {config.lr:g}, batch {config.batch_size}×{config.accumulate}, "
              f"{config.epochs} epochs, seed {config.seed})", flush=True)

    metrics = train(config, out, resume=args.resume, progress=not args.json, stop_after=args.stop_after,
                    announce=announce)
    if args.json:
        print(json.dumps({"run": str(out), **metrics}, indent=2))
    elif metrics["finished"]:
        print(f"run saved in {out} (model.keras, metrics.json); export it with: edgeloop cloud export {out}")
    else:
        print(f"stopped after epoch {metrics['epochs_done']}; continue with the same command plus --resume")
    return 0


def _label_column(values: list[str] | None) -> str | None:
    """``--label-column`` given once or repeated, each possibly comma-separated: one comma-separated string."""
    return ",".join(values) if values else None


def cmd_export(args: argparse.Namespace) -> int:
    from device.runtime.native_log import quiet_native_output

    with quiet_native_output(stdout=False):  # LiteRT's XNNPACK INFO line; replayed if export fails
        return _export(args)


def _source_options(args: argparse.Namespace):
    from cloud.export.source import SourceOptions, parse_preprocess
    from cloud.train.data import parse_image_size

    return SourceOptions(
        data=args.data, labels=args.labels, task=args.task,
        preprocess=parse_preprocess(args.preprocess) if args.preprocess else None,
        image_size=parse_image_size(args.image_size) if args.image_size else None,
        color=args.color, label_column=_label_column(args.label_column),
    )


def _export(args: argparse.Namespace) -> int:
    from cloud.export.exporter import ExportConfig, export_all_modes, export_bundle, load_run
    from cloud.export.report import metrics_text, plot_accuracy_vs_size, print_table, write_json

    if args.io is not None and not args.all_modes and args.mode != "int8":
        raise ValueError(f"--io sets the tensor type of an int8 export; --mode is {args.mode}")
    config = ExportConfig(mode=args.mode, compat=args.compat, name=args.name, version=args.version,
                          created=args.created, io=args.io, metadata=not args.no_metadata)
    run = load_run(args.run, _source_options(args))
    if not args.json:
        for note in run.notes:
            print(note)
    if args.trainable:
        return _export_trainable(args, run)
    out_root = Path(args.out or (run.run_dir / "bundles"))
    if not args.all_modes:
        target = Path(args.out) if args.out else out_root / config.bundle_name(run.config)
        verification = export_bundle(run, target, config)
        if args.json:
            print(json.dumps({"bundle": str(target), **verification.to_json()}, indent=2, default=str))
        else:
            v = verification
            print(f"{config.mode} bundle ({run.task}, {run.kind}, {config.io_for(run.splits.train.layout)} input) "
                  f"verified on {v.samples} samples and written to {target}: {v.size_bytes / 1024:.1f} KiB, "
                  f"{metrics_text(v)}max |Δ output| {v.max_abs_logit_diff:.2e}, "
                  f"median latency {v.median_latency_ms:.3f} ms ({v.backend})")
        return 0
    results = export_all_modes(run, out_root, config,
                               on_mode=None if args.json else lambda m: print(f"exporting {m} …", flush=True))
    rows = [r.row() for r in results]
    out_root.mkdir(parents=True, exist_ok=True)
    title = (f"{run.config.model} on {Path(run.config.data).name}: export modes, verified in LiteRT on "
             f"{len(run.splits.test)} test samples")
    write_json(rows, out_root / "export-report.json", {"run": str(run.run_dir), "compat": config.compat})
    plot_accuracy_vs_size(rows, out_root / "export-report.png", title)
    if args.json:
        print(json.dumps({"modes": rows}, indent=2))
    else:
        print_table(rows, title, run.task)
        print(f"report: {out_root / 'export-report.json'}, plot: {out_root / 'export-report.png'}")
    return 0 if all(r["passed"] for r in rows) else 1


def _export_trainable(args: argparse.Namespace, run) -> int:
    from cloud.export.trainable import TrainableConfig, export_trainable

    config = TrainableConfig(optimizer=args.train_optimizer, learning_rate=args.train_lr, train_batch=args.train_batch)
    target = Path(args.out) if args.out else run.run_dir / "bundles" / (args.name or f"{Path(run.config.data).stem}-{run.config.model}-trainable")
    v = export_trainable(run, target, config, name=args.name, version=args.version, created=args.created)
    if args.json:
        print(json.dumps({"bundle": str(target), **v.to_json()}, indent=2))
    else:
        print(f"trainable bundle verified and written to {target}: {v.size_bytes / 1024:.1f} KiB, "
              f"{config.optimizer} lr {config.lr:g}, train batch {config.train_batch}; {v.steps} train steps "
              f"LiteRT vs TensorFlow max |Δ weight| {v.max_weight_diff:.1e}, get/set_weights round-trip "
              f"{'exact' if v.roundtrip_exact else 'INEXACT'}, accuracy {100 * v.tflite_accuracy:.2f}%")
    return 0


def _core_args(p: argparse.ArgumentParser) -> None:
    """The ``federated`` core's knobs, shared by fl-server and deploy-local."""
    p.add_argument("--strategy", default="fedavg", help="fedsgd, fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad")
    p.add_argument("--aggregator", default="mean", help="mean, median, trimmed_mean, krum, multi_krum")
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--max-update-norm", type=float, default=None, help="reject updates whose L2 distance exceeds this")
    p.add_argument("--dp-clip", type=float, default=None, help="DP-FedAvg: clip each client's delta to this L2 norm")
    p.add_argument("--dp-noise", type=float, default=1.0, help="DP-FedAvg noise multiplier (with --dp-clip)")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--round-timeout", type=float, default=60.0, help="seconds a round waits for replies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--secure-aggregation", action="store_true",
                   help="Flower SecAgg+: the server sees only the mean of the updates (aggregator mean, no DP)")


def _async_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """FedBuff's knobs for real rounds, shared by fl-server and deploy-local (the simulator's are spelled the same)."""
    g = p.add_argument_group("asynchronous rounds (FedBuff)")
    g.add_argument("--mode", choices=("sync", "async"), default="sync",
                   help="async: no round barrier; a new model every --buffer-size replies (--rounds counts those steps)")
    g.add_argument("--concurrency", type=int, default=None, help="async: devices training at once (default: every device; fl-server: --min-clients)")
    g.add_argument("--buffer-size", type=int, default=2, help="async: replies per server step (K)")
    g.add_argument("--staleness", default="polynomial:0.5", help="async: constant, polynomial:A or hinge:A:B")
    g.add_argument("--max-staleness", type=int, default=None, help="async: refuse (and count) staler updates")
    return g


def fl_server_config(args: argparse.Namespace, out: str, bundle: str):
    from dataclasses import replace

    from cloud.fl.server import FLServerConfig

    core = {"strategy": args.strategy, "aggregator": args.aggregator, "server_lr": args.server_lr,
            "max_update_norm": args.max_update_norm}
    if args.dp_clip is not None:
        core["dp"] = {"clip_norm": args.dp_clip, "noise_multiplier": args.dp_noise}
    min_clients = args.min_clients or getattr(args, "clients", None) or 1
    config = FLServerConfig(out=out, bundle=bundle, rounds=args.rounds, min_clients=min_clients,
                            local_epochs=args.local_epochs, round_timeout_s=args.round_timeout,
                            eval_data=getattr(args, "eval_data", None), seed=args.seed, core=core,
                            secure_aggregation=args.secure_aggregation)
    if getattr(args, "mode", "sync") == "async":
        config = replace(config, mode="async", buffer={
            "buffer_size": args.buffer_size,
            "concurrency": args.concurrency or getattr(args, "clients", None) or min_clients,
            "staleness": args.staleness, "max_staleness": args.max_staleness})
    return config


def cmd_fl_server(args: argparse.Namespace) -> int:
    from cloud.fl.launch import FlowerServer, terminate_as_interrupt
    from cloud.fl.tls import TLS

    config = fl_server_config(args, str(Path(args.out).resolve()), str(Path(args.bundle).resolve()))
    tls = None
    if args.ssl_certfile or args.ssl_keyfile or args.ssl_ca_certfile:
        if not (args.ssl_certfile and args.ssl_keyfile and args.ssl_ca_certfile):
            raise ValueError("TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile together")
        tls = TLS(Path(args.ssl_certfile), Path(args.ssl_keyfile), Path(args.ssl_ca_certfile))
    server = FlowerServer(config, port=args.port, tls=tls)
    with terminate_as_interrupt():
        try:
            server.start()
            if not args.json:
                print(f"SuperLink on {server.address} ({'TLS' if tls else 'insecure, loopback only'}); waiting for "
                      f"{config.min_clients} device(s): edgeloop device fl-client --server {server.address} "
                      f"--bundle {config.bundle} --data ...", flush=True)
            result = server.wait(args.timeout)
        finally:
            server.stop()
    _print_rounds(result, args.json, Path(config.out))
    return 0


def _print_rounds(result: dict, as_json: bool, out: Path) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for r in result["rounds"]:
        if "refused" in r:
            print(f"round {r['round']}: refused: {r['refused']}")
            continue
        acc = f"  test accuracy {100 * r['test_accuracy']:.2f}%" if "test_accuracy" in r else ""
        if r["round"] == 0:
            print(f"round 0 (initial model):{acc}")
            continue
        extra = ""
        if r.get("rejected"):
            extra += "  rejected: " + "; ".join(f"{k}: {v}" for k, v in r["rejected"].items())
        if r.get("dropouts"):
            extra += f"  dropouts: {', '.join(r['dropouts'])}"
        print(f"round {r['round']}: {len(r['accepted'])} accepted, {r['num_samples']} samples, "
              f"{r['round_s']:.2f} s{acc}{extra}")
    print(f"rounds, checkpoint and the final device bundle are in {out} (bundle: {out / 'bundle'})")


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from cloud.train.shapes import SHAPES, ShapesConfig, make_shapes

    config = ShapesConfig(per_class=args.per_class, size=args.size, classes=args.classes, seed=args.seed)
    root = make_shapes(args.out, config)
    print(f"{config.per_class * config.classes} RGB {config.size}x{config.size} images of "
          f"{', '.join(SHAPES[: config.classes])} in {root}; train on them with: "
          f"edgeloop cloud train --model mobilenet-v2 --data {root}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from device.runtime.native_log import quiet_native_output

    with quiet_native_output(stdout=False):  # LiteRT's XNNPACK INFO line
        return _profile(args)


def _profile(args: argparse.Namespace) -> int:
    from cloud.export.profile import ProfileConfig, add_profile, reference_inputs
    from device.errors import BundleError
    from device.runtime.bundle import read_manifest

    config = ProfileConfig(data=args.data, split=args.split)
    bundle = Path(args.bundle)
    if not bundle.is_dir():
        raise BundleError(f"BUNDLE {bundle}: no such bundle directory")
    try:
        manifest = read_manifest(bundle)
    except BundleError as exc:
        raise BundleError(f"BUNDLE {exc}") from None
    profile = add_profile(bundle, reference_inputs(manifest, config))
    if args.json:
        print(json.dumps({"bundle": str(bundle), "profile": profile}, indent=2))
    else:
        print(f"profile of {profile['samples']} samples ({args.data}, split {config.split}) written to "
              f"{bundle / 'manifest.json'}: mean confidence {profile['mean_confidence']:.3f}, input mean "
              f"{', '.join(f'{v:.2f}' for v in profile['input_mean'])}, std "
              f"{', '.join(f'{v:.2f}' for v in profile['input_std'])}")
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    from cloud.export.ship import ShipConfig, ship_bundles

    ship_bundles(ShipConfig(epochs=args.epochs, seed=args.seed), Path(args.run))
    return 0


def build_parser(prog: str = "edgeloop cloud") -> argparse.ArgumentParser:
    from cloud.train.training import OPTIMIZERS
    from device.runtime.bundle import MODES

    parser = argparse.ArgumentParser(prog=prog, description="Train Keras models and export verified TFLite bundles.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a registry model on a data source, with checkpoints")
    p.add_argument("--model", default="cnn",
                   help="registry model: mlp, cnn, mlp-small, cnn1d, mobilenet-v2 (default cnn)")
    p.add_argument("--data", default="mnist5k",
                   help="mnist5k, digits, an .npz (x, y), a .csv (features + a label column) or an image folder")
    p.add_argument("--image-size", default=None, help="image folders: HxW (default: the images' own, most common)")
    p.add_argument("--color", default=None, choices=("rgb", "grayscale"),
                   help="image folders (default: rgb if any image has colour)")
    p.add_argument("--label-column", default=None, action="append", metavar="NAME",
                   help="CSV: the label column (default 'label', or the last); train fits classifiers on one")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per step: effective batch = N × batch")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--patience", type=int, default=3, help="early stopping on val loss; 0 turns it off")
    p.add_argument("--min-delta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run directory (default runs/<data>-<model>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export a trained run, a .keras or an .h5 file as a verified bundle")
    p.add_argument("run", metavar="PATH", help="a training run directory (model.keras + config.json), a .keras or an .h5 file")
    p.add_argument("--mode", default="int8", choices=MODES)
    p.add_argument("--data", default=None,
                   help="calibration and verification data (image folder, .npz, .csv, mnist5k, digits); "
                        "required for a model file, default for a run: its own")
    p.add_argument("--labels", default=None, help="a text file with one label per line (default: the data's)")
    p.add_argument("--preprocess", nargs="+", default=None, metavar="KIND",
                   help="none | scale | standardize MEAN STD (comma-separated per channel); default: what the "
                        "model says (Rescaling/Normalization layers: none), else the data's convention")
    p.add_argument("--task", default=None, choices=("classification", "multilabel", "regression"),
                   help="default: from the final activation (softmax: classification, sigmoid: multilabel)")
    p.add_argument("--io", default=None, choices=("float32", "uint8", "int8"),
                   help="int8 mode: the input/output tensor type (default uint8 for image models, else int8)")
    p.add_argument("--image-size", default=None, help="image folder --data: HxW (default: the model's input)")
    p.add_argument("--color", default=None, choices=("rgb", "grayscale"), help="image folder --data")
    p.add_argument("--label-column", default=None, action="append", metavar="NAME",
                   help="CSV --data: the label column (default 'label', or the last); several, comma-separated or "
                        "the flag repeated, give multi-hot (0/1, --task multilabel) or float (--task regression) "
                        "targets")
    p.add_argument("--no-metadata", action="store_true", help="do not embed TFLite metadata in the .tflite")
    p.add_argument("--all-modes", action="store_true", help="export every mode; print, save and plot a table")
    p.add_argument("--compat", default="litert", choices=("litert", "tflite-runtime"),
                   help="tflite-runtime: a model the legacy tflite-runtime 2.14 can load")
    p.add_argument("--out", default=None, help="bundle directory (or, with --all-modes, the parent directory)")
    p.add_argument("--name", default=None)
    p.add_argument("--version", default="1")
    p.add_argument("--created", default=None, help="ISO 8601 timestamp for the manifest (default: now)")
    p.add_argument("--trainable", action="store_true",
                   help="a float32 bundle that trains on the device (infer/train/evaluate/get_weights/set_weights)")
    p.add_argument("--train-optimizer", default="sgd", choices=("sgd", "adam"), help="with --trainable")
    p.add_argument("--train-lr", type=float, default=None, help="with --trainable (default sgd 0.1, adam 1e-3)")
    p.add_argument("--train-batch", type=int, default=32, help="with --trainable: the fixed on-device batch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fl-server", help="run federated rounds over Flower (SuperLink + ServerApp) on loopback")
    p.add_argument("--bundle", required=True, help="the initial trainable bundle (export --trainable)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-clients", type=int, default=2)
    p.add_argument("--out", required=True, help="run directory: rounds.json, checkpoint.npz, bundles/, bundle/")
    p.add_argument("--port", type=int, default=9093, help="SuperLink port on 127.0.0.1")
    p.add_argument("--eval-data", default=None, help=".npz the server evaluates each new global model on")
    p.add_argument("--ssl-certfile", default=None, help="TLS: the SuperLink's certificate (PEM)")
    p.add_argument("--ssl-keyfile", default=None, help="TLS: its private key")
    p.add_argument("--ssl-ca-certfile", default=None, help="TLS: the CA certificate (clients get it)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    _core_args(p)
    _async_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fl_server)

    p = sub.add_parser("make-shapes", help="write a synthetic coloured-shapes image folder (one subfolder per shape)")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_shapes)

    p = sub.add_parser("profile", help="record the reference data profile (drift monitoring) in an existing bundle")
    p.add_argument("bundle", metavar="BUNDLE", help="an unsigned bundle directory (manifest.json + model.tflite)")
    p.add_argument("--data", required=True,
                   help="what to run the bundle's .tflite on: mnist5k, digits, an .npz, a .csv or an image folder")
    p.add_argument("--split", default="all", choices=("all", "test"),
                   help="all of --data, or the test split the bundle's training run held out and export verified on "
                        "(from the manifest's source.train_config)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("ship-bundles", help="regenerate models/bundles (MNIST CNN, int8 and float32) from a seed")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default="runs/ship", help="where to keep the training run")
    p.set_defaults(func=cmd_ship)

    from cloud.service.cli import register as register_service  # serve, keygen, add-device, publish, … retrain

    register_service(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "edgeloop cloud") -> int:
    _quiet_tf()
    args = build_parser(prog).parse_args(argv)
    try:
        return int(args.func(args))
    except (EdgeloopError, FederatedError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; a training run can be continued with --resume", file=sys.stderr)
        return 130
