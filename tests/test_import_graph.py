"""No import circles anywhere in the package: the module-level imports of ``src/sdgate`` (read from
the source; imports inside functions and under ``TYPE_CHECKING`` are deferred, so they cannot form
a circle at import time) make a graph without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports when it is imported (a ``from pkg import submodule``
    is an edge to the submodule: ``pkg`` itself is always imported first, as every parent is)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    deps: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if isinstance(node, ast.Try | ast.If) else [node]:
            if isinstance(inner, ast.Import):
                deps.update(alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom):
                if inner.level:
                    base = package[: len(package) - inner.level + 1]
                    target = ".".join(base + ([inner.module] if inner.module else []))
                else:
                    target = inner.module or ""
                names = [f"{target}.{alias.name}" for alias in inner.names]
                subs = [name for name in names if name in modules]
                deps.update(subs)
                if len(subs) < len(inner.names):
                    deps.add(target)
    return {d for d in deps if d in modules and d != module}


def find_cycles(root: Path) -> list[list[str]]:
    modules = _modules(root)
    graph = {m: _imported(m, p, modules) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_the_package_has_no_import_circles() -> None:
    assert find_cycles(SRC) == []


def test_the_check_finds_a_circle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("from pkg.a import thing\n")
    (pkg / "c.py").write_text("def late():\n    from pkg import a\n")  # deferred: no edge
    assert find_cycles(tmp_path) == [["pkg.a", "pkg.b"]]
