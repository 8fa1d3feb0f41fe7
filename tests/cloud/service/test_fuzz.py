"""Random bytes and random JSON to every endpoint of a real server: never a 5xx (issue 12).

Small here (``EDGELOOP_FUZZ_N`` requests, default 150, at most 30 s); ``benchmarks/fuzz.py`` runs thousands.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import SHIPPED
from tests.fuzz_driver import fuzz_service
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service

N = int(os.environ.get("EDGELOOP_FUZZ_N", "150"))


def test_random_requests_to_every_endpoint_never_get_a_5xx(tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("fuzz-svc")
    _, registry, key, _, tokens = setup_service(data, ("fuzzer",))
    registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    with ServiceProcess(data, extra=("--rate", "100000", "--burst", "100000", "--max-request-bytes", "100000"),
                        admin_token="fuzz-admin-token-0123456789") as svc:
        codes = fuzz_service(svc.url, tokens["fuzzer"], svc.admin_token, N, seconds=30, seed=0)
    assert sum(codes.values()) >= min(N, 50)
    assert not [c for c in codes if c >= 500]
    assert {401, 422} <= set(codes)  # it reached both the auth check and the validation behind it
