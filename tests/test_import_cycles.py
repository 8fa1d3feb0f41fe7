"""No import circle anywhere in edgeloop's packages: dependencies point one way inside each side too.

Every ``import`` and ``from … import`` counts, lazy ones inside functions included, since a lazy
import still ties the two modules together. Implicit imports of a parent package's ``__init__`` do
not count (Python runs them, but they are not a dependency the code chose).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("device", "cloud", "federated", "models")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module → the modules of ``packages`` it imports (``from pkg import mod`` resolves to ``pkg.mod``)."""
    files = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` where c is an attribute
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    found = cycles(import_graph(ROOT))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_finds_a_lazy_cycle(tmp_path: Path) -> None:
    """The check itself can fail: a circle closed by a function-level import is reported."""
    pkg = tmp_path / "device"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("from device.sub import agent\n")
    (pkg / "sub" / "agent.py").write_text("def run():\n    from device.cli import main\n")
    (pkg / "sub" / "leaf.py").write_text("from . import agent\n")
    graph = import_graph(tmp_path, ("device",))
    assert graph["device.sub.leaf"] == {"device.sub.agent"}
    assert cycles(graph) == [["device.cli", "device.sub.agent"]]


def test_the_layout_is_free_of_the_three_old_circles() -> None:
    graph = import_graph(ROOT)
    assert "device.cli" not in graph["device.agent.cli"]
    assert "cloud.fl.launch" not in graph["cloud.fl.tls"]
    assert not graph["device.fl.zygote"] & {"device.fl.client", "device.fl.clientapp"}
    assert "device.fl.client" not in graph["device.fl.clientapp"]
