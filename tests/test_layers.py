"""The house's shape, read from the source: imports point one way and engine/ has no cycle.

Every import of every module is read with `ast` (function-level imports included: a lazy import
is still a dependency; only `if TYPE_CHECKING:` blocks are left out) and resolved to a module
of the `lsmvec` package, whose folders are mapped as pyproject.toml maps them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"engine": "lsmvec", "wal": "lsmvec.wal", "compaction": "lsmvec.compaction",
           "tools": "lsmvec.tools"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The lsmvec modules `name` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    resolve(alias.name)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:  # `from pkg import module` names a module
                    resolve(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
            visit(child)

    visit(tree)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in ("wal", "compaction", "tools"):
        return parts[1]
    return "engine"


def test_the_package_is_read(graph):
    assert {"lsmvec", "lsmvec.wal", "lsmvec.compaction", "lsmvec.tools.cli",
            "lsmvec.db.core"} <= set(graph)
    assert "lsmvec.db.core" in graph["lsmvec.client"]  # the resolver sees real edges


@pytest.mark.parametrize("lower, allowed", [("wal", {"wal"}), ("compaction", {"wal", "compaction"}),
                                            ("engine", {"wal", "compaction", "engine"})])
def test_layers_import_only_downward(graph, lower, allowed):
    wrong = sorted(f"{mod} -> {dep}" for mod, deps in graph.items() if layer(mod) == lower
                   for dep in deps if layer(dep) not in allowed)
    assert not wrong, wrong


def test_the_disk_side_imports_nothing_above_it(graph):
    """engine/disk/ (store, config, crypto, records, lock file, catalog, file names) is the
    bottom of the engine: it never reaches up into the database or the request side."""
    wrong = sorted(f"{mod} -> {dep}" for mod, deps in graph.items()
                   if mod.startswith("lsmvec.disk.")
                   for dep in deps if dep.startswith(("lsmvec.db", "lsmvec.request")))
    assert not wrong, wrong


def test_no_import_cycle_inside_the_engine(graph):
    engine = {m: {d for d in deps if layer(d) == "engine" and d != "lsmvec"}
              for m, deps in graph.items() if layer(m) == "engine" and m != "lsmvec"}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(engine.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                walk(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(engine):
        if node not in state:
            walk(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_library_code_never_imports_its_tools(graph):
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if layer(m) != "tools"
                   for d in deps if layer(d) == "tools")
    assert not wrong, wrong
