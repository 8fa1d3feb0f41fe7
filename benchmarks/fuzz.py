"""Fuzz at scale (issue 12): random bytes and random JSON to every endpoint of a real server, random
server replies to the agent's HTTP client, and random manifests and signatures to the bundle loader.

The same driver as the tests (``tests/fuzz_driver.py``), with thousands of cases instead of 150.
A run passes when no request gets a 5xx and nothing raises outside the documented errors.

    .venv/bin/python benchmarks/fuzz.py                      # 3000 requests, 1000 replies, 5000 bundles
    .venv/bin/python benchmarks/fuzz.py --scale 0.1          # a tenth of that

Prints a table and writes ``benchmarks/results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every count (default 1)")
    parser.add_argument("--seconds", type=float, default=300.0, help="time cap per target")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 0 < args.scale <= 100:
        parser.error(f"--scale must be in (0, 100], got {args.scale}")

    import shutil

    from cloud.release.canary import write_canary
    from cloud.release.signing import keygen, load_private_key, sign_bundle
    from tests.conftest import SHIPPED
    from tests.fuzz_driver import fuzz_bundle_loader, fuzz_client, fuzz_service
    from tests.service_helpers import ServiceProcess, setup_service

    counts = {"service": int(3000 * args.scale), "client": int(1000 * args.scale), "bundle": int(5000 * args.scale)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeloop-fuzz-") as tmp:
        root = Path(tmp)
        _, registry, key, _, tokens = setup_service(root / "svc", ("fuzzer",))
        registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
        start = time.monotonic()
        failure = None
        with ServiceProcess(root / "svc", extra=("--rate", "100000", "--burst", "100000"),
                            admin_token="fuzz-admin-token-0123456789") as svc:
            try:
                codes = fuzz_service(svc.url, tokens["fuzzer"], svc.admin_token, counts["service"], args.seconds,
                                     args.seed)
            except AssertionError as exc:
                codes, failure = {}, str(exc)[:500]
        rows.append({"target": "service endpoints", "cases": sum(codes.values()), "seconds": time.monotonic() - start,
                     "outcomes": {str(k): v for k, v in sorted(codes.items())}, "passed": failure is None,
                     "failure": failure})

        start = time.monotonic()
        outcomes = fuzz_client(counts["client"], args.seconds, args.seed)
        rows.append({"target": "agent HTTP client", "cases": sum(outcomes.values()),
                     "seconds": time.monotonic() - start, "outcomes": dict(outcomes), "passed": True, "failure": None})

        template = root / "signed"
        shutil.copytree(SHIPPED / "mnist-cnn-int8", template)
        write_canary(template, n=2)
        sign_bundle(template, load_private_key(keygen(root / "keys")[0]))
        start = time.monotonic()
        outcomes = fuzz_bundle_loader(root, template, counts["bundle"], args.seconds, args.seed)
        rows.append({"target": "bundle loader + signature check", "cases": outcomes["manifest ok"]
                     + outcomes["manifest BundleError"], "seconds": time.monotonic() - start,
                     "outcomes": dict(outcomes), "passed": True, "failure": None})

    print(f"{'target':<34}{'cases':>8}{'seconds':>9}  outcomes")
    for r in rows:
        print(f"{r['target']:<34}{r['cases']:>8}{r['seconds']:>9.1f}  "
              + ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items()) + ("" if r["passed"] else f"  FAILED {r['failure']}"))
    out = ROOT / "benchmarks" / "results" / "fuzz.json"
    out.write_text(json.dumps({"scale": args.scale, "seed": args.seed, "python": platform.python_version(),
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
