"""``edgeloop federated deploy-local``: one Flower server and N device processes on loopback."""

from __future__ import annotations

import argparse


def cmd_deploy_local(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cloud.cli import _print_rounds, _quiet_tf, fl_server_config

    _quiet_tf()
    from cloud.fl.launch import DeployConfig, deploy_local

    if not args.slow_factor >= 1 or args.slow_base_s < 0:
        raise ValueError(f"--slow-factor must be >= 1 and --slow-base-s >= 0, got {args.slow_factor}, {args.slow_base_s}")
    out = str(Path(args.out).resolve())
    config = DeployConfig(out=out, clients=args.clients, rounds=args.rounds, min_clients=args.min_clients,
                          data=args.data, model=args.model, bundle=args.bundle, partition=args.partition,
                          seed=args.seed, timeout_s=args.timeout, tls=args.tls, slow_clients=args.slow_clients,
                          slow_delay_s=(args.slow_factor - 1.0) * args.slow_base_s)
    server = fl_server_config(args, out, "")  # --mode async: concurrency defaults to every client
    result = deploy_local(config, server, on_event=None if args.json else lambda m: print(m, flush=True))
    _print_rounds(result, args.json, Path(out))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from cloud.cli import _async_args, _core_args

    p = sub.add_parser("deploy-local", help="1 Flower server + N device processes on loopback, each with its own data")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--min-clients", type=int, default=None, help="default: all clients")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="digits", help="digits, mnist5k or an .npz, partitioned among the clients")
    p.add_argument("--model", default="mlp-small", help="registry model when no --bundle is given")
    p.add_argument("--bundle", default=None, help="a trainable bundle to start from (default: train --model 1 epoch)")
    p.add_argument("--partition", default="iid", help="iid, dirichlet, shards, quantity")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--tls", action="store_true", help="TLS between devices and server (a throwaway CA for 127.0.0.1)")
    _core_args(p)
    g = _async_args(p)
    g.add_argument("--slow-clients", type=int, default=0, help="the last N devices are slowed by an injected delay")
    g.add_argument("--slow-factor", type=float, default=5.0,
                   help="a slow device takes this many times a normal device's --slow-base-s per update")
    g.add_argument("--slow-base-s", type=float, default=1.0,
                   help="a normal device's seconds per update on loopback (delay = (factor - 1) x this)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_deploy_local)
