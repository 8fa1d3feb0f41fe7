"""Random bytes and random JSON to the bundle loader, the signature check and the agent's HTTP client:
only the documented errors come out (issue 12). Small here (``EDGELOOP_FUZZ_N``, default 150, at most
20 s each); ``benchmarks/fuzz.py`` runs thousands."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.conftest import SHIPPED
from tests.fuzz_driver import fuzz_bundle_loader, fuzz_client

N = int(os.environ.get("EDGELOOP_FUZZ_N", "150"))


def test_random_manifests_and_signatures_raise_only_bundle_errors(tmp_path: Path) -> None:
    from cloud.release.canary import write_canary
    from cloud.release.signing import keygen, load_private_key, sign_bundle

    template = tmp_path / "signed"
    shutil.copytree(SHIPPED / "mnist-cnn-int8", template)
    write_canary(template, n=2)
    sign_bundle(template, load_private_key(keygen(tmp_path / "keys")[0]))
    outcomes = fuzz_bundle_loader(tmp_path, template, N, seconds=20, seed=0)
    assert outcomes["manifest BundleError"] > 0 and outcomes["signature UpdateRejected"] == sum(
        v for k, v in outcomes.items() if k.startswith("signature"))


def test_random_server_replies_raise_only_the_clients_errors() -> None:
    outcomes = fuzz_client(N, seconds=20, seed=0)
    assert sum(outcomes.values()) >= min(N, 50)
    assert set(outcomes) <= {"ok", "ServerUnavailable", "RequestRejected", "UpdateRejected"}
    assert outcomes["ServerUnavailable"] > 0
