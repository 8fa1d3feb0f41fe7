"""A lean ``flwr-clientapp``: Flower's own ClientApp runner, without the SuperNode's server stack.

Flower 1.42's ``flwr-clientapp`` console script imports ``flwr.supernode.cli``, which loads the
whole SuperNode (FastAPI, SQLAlchemy, …) before running one ClientApp task: a process that starts
in 1.36 s instead of 0.87 s and peaks at 144 instead of 127 MB (``benchmarks/federated_deploy.py``,
2-core machine). This entry point makes exactly the same
``run_clientapp`` call with the same arguments. ``edgeloop device fl-client`` puts it first on
the SuperNode's PATH (see :func:`install_launcher`); by default as the tiny client of a warm zygote
(:mod:`device.fl.zygote`), whose forked children run :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path


def main() -> int:
    from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token
    from flwr.supercore.constant import SUPERNODE_DEFAULT_CLIENT_ADDRESS
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    from device.fl.flower_env import fast_object_pulls

    fast_object_pulls()
    parser = argparse.ArgumentParser(description="Run a Flower ClientApp (edgeloop's lean launcher)")
    parser.add_argument("--runtime-api-address", dest="runtime_api_address", default=SUPERNODE_DEFAULT_CLIENT_ADDRESS)
    add_args_flwr_app_common(parser=parser)
    args = parser.parse_args()
    run_clientapp(
        runtime_api_address=args.runtime_api_address,
        token=try_obtain_flwr_app_token(args),
        insecure=args.insecure,
        certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
        parent_pid=args.parent_pid,
        runtime_dependency_install=args.runtime_dependency_install,
    )
    return 0


def install_launcher(bin_dir: Path, zygote: str | None = None) -> Path:
    """Write ``bin_dir/flwr-clientapp`` running :func:`main` with this interpreter; returns ``bin_dir``.

    With ``zygote`` (a Unix socket path), the script is :mod:`device.fl.zygote`'s tiny client, which
    has the warm zygote fork the ClientApp (and falls back to :func:`main` when it is unreachable)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "flwr-clientapp"
    if zygote:
        from device.fl.zygote import write_client

        write_client(str(script), zygote)
    else:
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom device.fl.clientapp import main\nsys.exit(main())\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.environ["PATH"] = str(bin_dir) + os.pathsep + os.environ.get("PATH", "")
    return bin_dir
