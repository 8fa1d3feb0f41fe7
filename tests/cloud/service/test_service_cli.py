"""``edgeloop cloud keygen | add-device | publish | versions | promote | rollback`` as a user runs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import SHIPPED, run_cli

pytestmark = pytest.mark.service


def test_registry_commands(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "svc")]
    keys = run_cli("cloud", "keygen", *data, "--json")
    assert keys.returncode == 0, keys.stderr
    assert (tmp_path / "svc/keys/signing.key").stat().st_mode & 0o777 == 0o600
    again = run_cli("cloud", "keygen", *data)
    assert again.returncode == 1 and "exists" in again.stderr  # a pinned key is never silently replaced

    dev = run_cli("cloud", "add-device", "pi-1", *data, "--json")
    assert dev.returncode == 0
    token = json.loads(dev.stdout)["token"]
    assert len(token) >= 40
    db = b"".join(p.read_bytes() for p in (tmp_path / "svc").glob("edgeloop.sqlite*"))  # the file and its WAL
    assert token.encode() not in db and hashlib.sha256(token.encode()).hexdigest().encode() in db  # stored hashed
    dup = run_cli("cloud", "add-device", "pi-1", *data)
    assert dup.returncode == 1 and "already registered" in dup.stderr

    for bundle, channel in (("mnist-cnn-int8", "stable"), ("mnist-cnn-float32", "stable")):
        out = run_cli("cloud", "publish", str(SHIPPED / bundle), "--channel", channel, *data, "--json")
        assert out.returncode == 0, out.stderr
    listed = json.loads(run_cli("cloud", "versions", *data, "--json").stdout)
    assert [(v["version"], v["channels"], v["signed"]) for v in listed] == [(2, ["stable"], True), (1, [], True)]

    assert run_cli("cloud", "rollback", "--channel", "stable", *data).returncode == 0
    assert json.loads(run_cli("cloud", "versions", *data, "--json").stdout)[1]["channels"] == ["stable"]
    none_left = run_cli("cloud", "rollback", "--channel", "stable", *data)
    assert none_left.returncode == 1 and "no earlier version" in none_left.stderr
    assert run_cli("cloud", "promote", "2", "--channel", "canary", *data).returncode == 0
    missing = run_cli("cloud", "promote", "7", *data)
    assert missing.returncode == 1 and "no version 7" in missing.stderr
