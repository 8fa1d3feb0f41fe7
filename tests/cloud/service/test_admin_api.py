"""The admin API: every endpoint refuses no token, a device token and a wrong token; with the admin token
the CLI runs publish, promote, rollback, rollout, device add/revoke, forget and export on a remote server.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import SHIPPED, run_cli
from tests.service_helpers import ServiceProcess, setup_service

pytestmark = pytest.mark.service

ADMIN = "admin-token-for-the-test-0123456789"
ENDPOINTS = [("GET", "/v1/admin/versions"), ("POST", "/v1/admin/versions"),
             ("POST", "/v1/admin/channels/stable/promote"), ("POST", "/v1/admin/channels/stable/rollback"),
             ("POST", "/v1/admin/rollouts"), ("GET", "/v1/admin/rollouts"), ("GET", "/v1/admin/rollouts/stable"),
             ("POST", "/v1/admin/rollouts/stable/abort"), ("POST", "/v1/admin/devices"),
             ("POST", "/v1/admin/devices/cam/revoke"), ("DELETE", "/v1/admin/devices/cam/samples"),
             ("GET", "/v1/admin/samples"), ("GET", "/v1/admin/drift")]


def _cli(svc: ServiceProcess, *args: str) -> str:
    out = run_cli("cloud", *args, "--server", svc.url, "--admin-token-file", str(svc.data_dir / "admin.token"),
                  timeout=120)
    assert out.returncode == 0, (args, out.stderr)
    return out.stdout


def test_admin_endpoints_refuse_everything_but_the_admin_token(tmp_path: Path) -> None:
    _, registry, key, _, tokens = setup_service(tmp_path, ("cam",))
    registry.publish(SHIPPED / "mnist-cnn-int8", "stable", key)
    with ServiceProcess(tmp_path, admin_token=ADMIN) as svc, httpx.Client(base_url=svc.url, timeout=30) as http:
        for method, path in ENDPOINTS:
            for headers in ({}, {"Authorization": f"Bearer {tokens['cam']}"}, {"Authorization": f"Bearer {ADMIN}x"},
                            {"Authorization": "Basic " + "Y2FtOg=="}):
                r = http.request(method, path, headers=headers, json={})
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
        # the device token still works where it belongs, and nothing above changed anything
        assert http.get("/v1/channels/stable/current", headers={"Authorization": f"Bearer {tokens['cam']}"}).status_code == 200
        assert [v["version"] for v in http.get("/v1/admin/versions", headers=svc.admin).json()] == [1]


def test_admin_endpoints_are_off_without_an_admin_token(tmp_path: Path) -> None:
    setup_service(tmp_path, ("cam",))
    with ServiceProcess(tmp_path) as svc:
        r = httpx.get(svc.url + "/v1/admin/versions", headers={"Authorization": "Bearer anything-at-all-0123456"})
        assert r.status_code == 404


def test_the_cli_runs_the_fleet_on_a_remote_server(tmp_path: Path) -> None:
    data = tmp_path / "svc"
    setup_service(data, ())
    with ServiceProcess(data, admin_token=ADMIN) as svc:
        v1 = json.loads(_cli(svc, "publish", str(SHIPPED / "mnist-cnn-int8"), "--channel", "stable", "--json"))
        v2 = json.loads(_cli(svc, "publish", str(SHIPPED / "mnist-cnn-float32"), "--channel", "", "--json"))
        versions = json.loads(_cli(svc, "versions", "--json"))
        assert [v["version"] for v in versions] == [v2["version"], v1["version"]] and versions[1]["signed"]
        token = json.loads(_cli(svc, "add-device", "cam", "--json"))["token"]
        auth = {"Authorization": f"Bearer {token}"}
        current = httpx.get(svc.url + "/v1/channels/stable/current", headers=auth).json()
        assert current["version"] == v1["version"] and current["statement"]["sequence"] == 1

        assert "stable → v2" in _cli(svc, "promote", "2", "--channel", "stable")
        assert httpx.get(svc.url + "/v1/channels/stable/current", headers=auth).json()["version"] == 2
        assert "rolled back to v1" in _cli(svc, "rollback", "--channel", "stable")
        rolled = httpx.get(svc.url + "/v1/channels/stable/current", headers=auth).json()
        assert rolled["version"] == 1 and rolled["statement"]["sequence"] == 3  # re-signed, newer than v2's

        started = json.loads(_cli(svc, "rollout", "2", "--stages", "50,100", "--hold", "1h", "--json"))
        assert started["status"] == "running" and started["percent"] == 50
        assert "paused" in _cli(svc, "rollout", "pause", "stable")
        assert "running" in _cli(svc, "rollout", "resume", "stable")
        status = json.loads(_cli(svc, "rollout", "abort", "stable", "--json"))
        assert status["status"] == "aborted" and [d["action"] for d in status["decisions"]] == \
            ["start", "pause", "resume", "abort"]

        x = np.zeros((28, 28, 1), np.uint8)
        from device.agent.collector import encode_input
        batch = {"samples": [{"id": f"s{i}", "input": encode_input(x), "prediction": 1, "confidence": 0.5,
                              "label": 1, "model_version": "1", "timestamp": 1e9} for i in range(3)]}
        r = httpx.post(svc.url + "/v1/samples", json=batch, headers={**auth, "Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 200 and r.json()["stored"] == 3
        exported = httpx.get(svc.url + "/v1/admin/samples", headers=svc.admin).text.splitlines()
        assert sorted(json.loads(line)["id"] for line in exported) == ["s0", "s1", "s2"]
        assert json.loads(_cli(svc, "forget-device", "cam", "--json"))["deleted"] == 3
        assert httpx.get(svc.url + "/v1/admin/samples", headers=svc.admin).text == ""

        assert json.loads(_cli(svc, "revoke-device", "cam", "--json"))["revoked"]
        assert httpx.get(svc.url + "/v1/channels/stable/current", headers=auth).status_code == 401
        bad = run_cli("cloud", "promote", "99", "--server", svc.url, "--admin-token-file",
                      str(svc.data_dir / "admin.token"))
        assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "no version 99" in bad.stderr
