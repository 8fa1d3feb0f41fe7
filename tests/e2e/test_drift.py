"""Drift end to end: agents that see inverted digits (the shifted-digits scenario of the retrain loop)
score a PSI far above agents that see digits like those the bundle's profile was made from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from device.agent.agent import Agent, AgentConfig
from device.agent.collector import CollectionPolicy
from tests.conftest import ROOT, SHIPPED, run_cli
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service

PLAIN = ("plain-0", "plain-1", "plain-2")
INVERTED = ("inverted-0", "inverted-1", "inverted-2")


def test_inverted_digits_drift_far_above_the_unshifted_fleet(tmp_path: Path) -> None:
    from cloud.export.profile import add_profile
    from cloud.train.data import load_mnist5k

    digits = load_mnist5k(seed=0)
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED / "mnist-cnn-int8", bundle)
    add_profile(bundle, digits.x[:1000])  # what export records: the data the bundle was verified on
    data = tmp_path / "svc"
    sessions, registry, key, public, tokens = setup_service(data, PLAIN + INVERTED)
    v1 = registry.publish(bundle, "stable", key)
    with ServiceProcess(data, admin_token="drift-admin-token-0123456789",
                        extra=("--rate", "1000", "--burst", "1000")) as svc:
        for i, name in enumerate(PLAIN + INVERTED):
            agent = Agent(AgentConfig(directory=tmp_path / name, server=svc.url, token=tokens[name], channel="stable",
                                      public_key=public, initial_bundle=SHIPPED / "mnist-cnn-int8",
                                      policy=CollectionPolicy("none"), seed=i))
            try:
                assert agent.check_for_update() == "updated"
                images = digits.x[1000 + 200 * i:1200 + 200 * i]
                for x in (255 - images if name in INVERTED else images):
                    agent.predict(x)
                assert agent.send_summaries() == 1
            finally:
                agent.close()
        remote = run_cli("cloud", "drift", "--per-device", "--json", "--server", svc.url,
                         "--admin-token-file", str(data / "admin.token"), timeout=60)
        assert remote.returncode == 0, remote.stderr
        page = httpx.get(svc.url + "/", headers=svc.admin, timeout=30).text
    table = run_cli("cloud", "drift", "--per-device", "--data-dir", str(data), timeout=60)
    assert table.returncode == 0, table.stderr
    rows = {r["device"]: r for r in json.loads(remote.stdout) if r["version"] == str(v1.version)}
    plain = [rows[n]["score"] for n in PLAIN]
    inverted = [rows[n]["score"] for n in INVERTED]
    print(table.stdout)
    (ROOT / "runs" / "issue13").mkdir(parents=True, exist_ok=True)
    (ROOT / "runs" / "issue13" / "drift-table.txt").write_text(table.stdout)
    assert max(plain) < 0.1, plain  # no shift: PSI below the usual 0.1
    assert min(inverted) > 1.0 and min(inverted) > 20 * max(plain), (plain, inverted)
    assert all(rows[n]["input_psi"] > 1.0 for n in INVERTED)
    assert rows[None]["predictions"] == 1200 and rows[None]["level"] == "major"
    assert "id='drift-alert'" in page and f"v{v1.version} PSI" in page
