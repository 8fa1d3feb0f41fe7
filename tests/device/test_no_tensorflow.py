"""The device side never imports TensorFlow, Keras or the cloud package."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES, ROOT

FORBIDDEN = ("tensorflow", "keras", "cloud", "fastapi", "sklearn", "mlxtend", "matplotlib")


def _fresh(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = """
import json, sys
{body}
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))
"""


@pytest.mark.parametrize(
    "body",
    [
        "import device",
        "import device.cli, device.runtime.images, device.runtime.bench, edgeloop",
        # a whole prediction, through the CLI entry point
        f"import device.cli; device.cli.main(['predict', 'mnist-cnn-int8', r'{EXAMPLES / 'digit-1.png'}', '--json'])",
    ],
)
def test_device_imports_no_tensorflow(body: str) -> None:
    loaded = set(_fresh(PROBE.format(body=body)))
    assert "device" in loaded
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)


def test_edgeloop_device_command_imports_no_tensorflow() -> None:
    code = (
        "import sys, runpy; sys.argv = ['edgeloop', 'device', 'bundles']\n"
        "import edgeloop\n"
        "try:\n    edgeloop.main(['device', 'bundles'])\nfinally:\n"
        "    import json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(_fresh(code))
    assert not loaded & set(FORBIDDEN)


def test_device_source_has_no_forbidden_imports() -> None:
    """Static check: no module under device/ imports a forbidden package, even lazily."""
    offenders = []
    for path in sorted((ROOT / "device").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders
