"""The agent is device code: it imports no FastAPI, SQLAlchemy, TensorFlow or cloud module."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FORBIDDEN = {"tensorflow", "keras", "cloud", "fastapi", "starlette", "uvicorn", "sqlalchemy", "pydantic", "httpx",
             "psycopg", "sklearn", "mlxtend", "matplotlib"}

PROBE = """
import json, sys
import device.agent.agent, device.agent.cli, device.agent.client, device.agent.collector, device.agent.health, device.agent.updater
import device.agent.verify_signature, device.cli
device.cli.build_parser()
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))
"""


def test_agent_imports_nothing_from_the_cloud_side() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "device" in loaded and "cryptography" not in loaded  # verification imports it only when it runs
    assert not loaded & FORBIDDEN, loaded & FORBIDDEN


def test_agent_source_has_no_forbidden_imports() -> None:
    offenders = []
    for path in sorted((ROOT / "device" / "agent").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders


def test_device_extra_alone_runs_the_agent_code() -> None:
    """In .venv-device (the device extra only), signature checks and the agent CLI work."""
    python = ROOT / ".venv-device" / "bin" / "python"
    if not python.exists():
        if os.environ.get("EDGELOOP_SKIP_ENVS") == "1":
            pytest.skip(f"{python} is missing and EDGELOOP_SKIP_ENVS=1")
        pytest.fail(f"{python} is missing: run 'make test', which creates it")
    code = ("import importlib.util as u, device.agent.agent, device.agent.verify_signature\n"
            "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
            "k = Ed25519PrivateKey.generate(); m = device.agent.verify_signature.signed_message(b'{}', 'a' * 64, 'b' * 64)\n"
            "k.public_key().verify(k.sign(m), m)\n"
            "print([n for n in ('tensorflow', 'fastapi', 'sqlalchemy') if u.find_spec(n)])")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    helped = subprocess.run([str(python), "-m", "device", "run", "--help"], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert helped.returncode == 0 and "--public-key" in helped.stdout
