"""The package's layering: a module imports only from its own layer or below, and no import cycle exists.

Layers, lowest first (README "Where things live"):
infrastructure + `data` < `evaluation` < `models`, `losses`, `optim` < `retrieval`
< `modules`, `callbacks` (+ checkpoints, loggers, strategies) < `stages`.
Every `import` is counted, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "simlm"
LAYERS: list[tuple[str, ...]] = [
    (
        "simlm",
        "simlm.config",
        "simlm.failures",
        "simlm.progress",
        "simlm.runtime",
        "simlm.launch",
        "simlm.distributed",
        "simlm.data",
    ),
    ("simlm.evaluation",),
    ("simlm.models", "simlm.losses", "simlm.optim"),
    ("simlm.retrieval",),
    ("simlm.modules", "simlm.callbacks", "simlm.checkpoints", "simlm.loggers", "simlm.strategies"),
    ("simlm.stages",),
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Index of the layer holding `module` (the longest matching prefix wins)."""
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py")
    return best


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """`module -> the simlm modules it imports` for every `.py` file under `root`."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "simlm"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                    base = base.rstrip(".")
                if base.split(".")[0] != "simlm":
                    continue
                for alias in node.names:  # `from simlm.x import y` names module simlm.x.y when it is one
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {t for t in targets if t != name}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, targets in graph.items()
        for dst in targets
        if layer_of(dst) > layer_of(src)
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as `[a, b, ..., a]`, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checker itself: a planted upward import and a planted cycle are reported."""
    pkg = tmp_path / "simlm"
    for sub in ("data", "stages"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from simlm.stages.b import g\n")
    (pkg / "stages" / "b.py").write_text("from simlm.data import a\n")
    graph = import_graph(pkg)
    assert upward_imports(graph) == ["simlm.data.a (layer 0) imports simlm.stages.b (layer 5)"]
    assert find_cycle(graph) == ["simlm.data.a", "simlm.stages.b", "simlm.data.a"]


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)
    with pytest.raises(KeyError, match="in no layer"):
        layer_of("simlm_other.x")
