"""The ``edgeloop`` command: dispatch to a subcommand group, importing only that group.

``edgeloop device …`` imports ``device.cli`` alone, so it starts fast and never loads
TensorFlow; ``edgeloop cloud …`` imports TensorFlow only when a command needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

GROUPS = {
    "cloud": ("cloud.cli", "train models, export and verify TFLite bundles"),
    "device": ("device.cli", "run bundles with LiteRT: predict, bench, info"),
    "federated": ("federated.cli", "federated learning"),
}
# What a group needs beyond the device extra, and which extra brings it (for a device-only install).
NEEDS = {"cloud": ("tensorflow", "cloud"), "federated": ("tensorflow", "cloud,federated")}
# A missing third-party module -> the extra that installs it.
EXTRAS = {
    "tensorflow": "cloud", "keras": "cloud", "sklearn": "cloud", "mlxtend": "cloud", "matplotlib": "cloud",
    "dp_accounting": "federated", "fastapi": "service", "uvicorn": "service", "sqlalchemy": "service",
    "psycopg": "service", "httpx": "service", "aiohttp": "service", "ai_edge_litert": "device", "PIL": "device",
    "rich": "device", "cryptography": "device",
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing_extra(group: str, command: list[str], exc: ModuleNotFoundError) -> str:
    """One line: which command needs which module, and the extra that installs it."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if module == "flwr":
        extra = "device-fl" if group == "device" else "fl"
    what = " ".join(["edgeloop", group, *command[:1]])
    install = f"pip install 'edgeloop[{extra}]'" if extra else "pip install 'edgeloop[all]'"
    return f"error: '{what}' needs the Python module '{module}', which is not installed here; {install}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: edgeloop {cloud,device,federated} ...\n\nsubcommand groups:")
        for name, (_, help_text) in GROUPS.items():
            module, extra = NEEDS.get(name, ("", ""))
            missing = f" [not installed here: pip install 'edgeloop[{extra}]']" if module and not _installed(module) else ""
            print(f"  {name:<10} {help_text}{missing}")
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
    try:
        module = importlib.import_module(group[0])
        return int(module.main(args[1:], prog=f"edgeloop {args[0]}") or 0)
    except ModuleNotFoundError as exc:  # an extra this install lacks: say which, no traceback
        if (exc.name or "").split(".")[0] in ("cloud", "device", "federated", "models", "edgeloop"):
            raise
        print(_missing_extra(args[0], args[1:], exc), file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
