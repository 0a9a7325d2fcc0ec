"""The house: every import of the four packages, walked from the source, flows one way, without a cycle.

Imports inside functions count too (they are dependencies all the same, only deferred). Packages
may import their own private modules and the public faces of the packages below them:

    nas.cli, nas.serve  ->  nas.workers  ->  nas.refine  ->  nas.search  ->  nas._errors/_fields/_lru/_artifacts
    nas  ->  objectives  ->  search_spaces;   nas  ->  storage
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "objectives", "storage", "nas")

#: Layer of a module (by prefix; the longest prefix wins). A module may import only from layers
#: numbered at most its own, and within its own layer only its own package's modules.
LAYERS = {
    "search_spaces": 0,
    "objectives": 1,
    "storage": 1,
    "nas._errors": 2,
    "nas._fields": 2,
    "nas._version": 2,
    "nas._lru": 2,
    "nas._artifacts": 3,
    "nas.search": 4,
    "nas.refine": 5,
    "nas._export": 5,
    "nas._report": 5,
    "nas.workers": 6,
    "nas.serve": 7,
    "nas.cli": 8,
    "nas": 9,  # the lazy public face
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[_module_name(path)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a ``from pkg import x`` counts ``pkg.x`` when that is a
    module, else ``pkg``)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: no dependency when the code runs
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(name: str) -> tuple[int, str]:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best], best


def test_the_walk_sees_the_house():
    graph = _graph()
    assert {"nas.search", "nas.workers.ray", "nas.serve", "nas.cli", "objectives", "search_spaces"} <= set(graph)
    assert "nas.search" in graph["nas.workers._worker"]  # relative imports resolved
    trainer = graph["objectives.train._train"]
    assert "search_spaces._build" in trainer or "search_spaces" in trainer
    assert "search_spaces._blocks" in graph["search_spaces._spec"]


def test_no_import_cycle_anywhere():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_flow_one_way():
    wrong = []
    for name, targets in _graph().items():
        layer, room = _layer(name)
        for target in targets:
            t_layer, t_room = _layer(target)
            if t_layer > layer or (t_layer == layer and t_room != room):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the layers: " + "; ".join(sorted(wrong))


def test_packages_import_each_other_through_their_faces():
    """Across packages (and from one room of ``nas`` to another) only public faces are imported."""
    behind = []
    for name, targets in _graph().items():
        own = name.split(".")[0]
        room = _layer(name)[1]
        for target in targets:
            private = any(part.startswith("_") for part in target.split(".")[1:])
            shared = ("nas._errors", "nas._fields", "nas._version", "nas._lru", "nas._artifacts", "nas._export",
                      "nas._report")
            other_package = target.split(".")[0] != own
            other_room = own == "nas" and _layer(target)[1] not in (room, *shared)
            if private and (other_package or other_room):
                behind.append(f"{name} imports {target}")
    assert not behind, behind


def test_tests_bench_and_readme_use_public_faces():
    """Private modules stay private: tests, benchmarks and the README import the packages' faces
    (a test may reach behind one only to monkeypatch a module's global)."""
    private = []
    for folder in ("tests", "bench"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES \
                        and any(part.startswith("_") for part in node.module.split(".")[1:]):
                    private.append(f"{path.name}: from {node.module} import ...")
    readme = (ROOT / "README.md").read_text()
    assert "nas._" not in readme
    assert not private, private


def test_test_modules_never_import_each_other():
    """Shared helpers live in conftest.py (fixtures, runners) or a helper module (``*_kit.py``,
    ``kit_*.py``, ``lightnas_pg.py``), so a test module can move, split or go without breaking another."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.name} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not offenders, offenders
