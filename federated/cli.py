"""``edgeloop federated …``: federated learning commands."""

from __future__ import annotations

import argparse
import sys


def build_parser(prog: str = "edgeloop federated") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Federated learning (FedAvg family).")
    sub = parser.add_subparsers(dest="command", required=True)
    from federated.deploy_cli import add_commands as add_deploy_commands
    from federated.sim_cli import add_commands as add_sim_commands

    add_sim_commands(sub)
    add_deploy_commands(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "edgeloop federated") -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from device.errors import EdgeloopError
    from federated.errors import FederatedError

    args = build_parser(prog).parse_args(argv)
    try:
        return int(args.func(args))
    except (FederatedError, EdgeloopError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped (a simulation with --out can be continued "
              "with --resume)", file=sys.stderr)
        return 130
