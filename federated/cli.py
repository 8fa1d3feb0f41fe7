"""``edgeloop federated …``: federated learning commands."""

from __future__ import annotations

import argparse


def build_parser(prog: str = "edgeloop federated") -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog,
        description="Federated learning (FedAvg family). The simulator and real rounds are not built yet; "
        "this group has no commands in this release.",
    )


def main(argv: list[str] | None = None, prog: str = "edgeloop federated") -> int:
    parser = build_parser(prog)
    parser.parse_args(argv)
    parser.print_help()
    return 2
