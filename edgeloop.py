"""The ``edgeloop`` command: dispatch to a subcommand group, importing only that group.

``edgeloop device …`` imports ``device.cli`` alone, so it starts fast and never loads
TensorFlow; ``edgeloop cloud …`` imports TensorFlow only when a command needs it.
"""

from __future__ import annotations

import importlib
import os
import sys

GROUPS = {
    "cloud": ("cloud.cli", "train models, export and verify TFLite bundles"),
    "device": ("device.cli", "run bundles with LiteRT: predict, bench, info"),
    "federated": ("federated.cli", "federated learning"),
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: edgeloop {cloud,device,federated} ...\n\nsubcommand groups:")
        for name, (_, help_text) in GROUPS.items():
            print(f"  {name:<10} {help_text}")
        print("\nRun 'edgeloop GROUP --help' for a group's commands.")
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"edgeloop {version('edgeloop')}")
        return 0
    group = GROUPS.get(args[0])
    if group is None:
        print(f"edgeloop: unknown group {args[0]!r}; choose one of {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(group[0])
    try:
        return int(module.main(args[1:], prog=f"edgeloop {args[0]}") or 0)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
