"""The package's plan, checked: no import cycle, no reach into another module's private names,
short functions, a small facade, engines named by their folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "refimpl"
MAX_FUNCTION_LINES = 60
MAX_FACADE_LINES = 250


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def imported_modules(name: str, tree: ast.AST, top_level_only: bool) -> set[str]:
    """The refimpl modules ``name`` imports (``from refimpl.a import b`` names module a.b when b is one)."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("refimpl"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    found.discard(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level imports", "imports inside functions too"])
def test_no_import_cycle_inside_refimpl(top_level_only):
    graph = {name: imported_modules(name, tree, top_level_only) for name, tree in TREES.items()}
    cycle = find_cycle(graph)
    print(f"{sum(map(len, graph.values()))} import edges between {len(graph)} modules; cycle: {cycle}")
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# the standard library's pure-Python unpickler (its find_class hook makes the torch reader safe), and
# numba's own internals, which have no public API: where a function's disk cache lives, whether its
# thread pool has started
ALLOWED_PRIVATE = {
    ("pickle", "_Unpickler"),
    ("quantize_rows_serial", "_cache"),
    (None, "_cache_path"),
    ("parallel", "_is_initialized"),
}


def private_reaches(tree: ast.AST) -> list[str]:
    """``obj._name`` on anything but self/cls, and ``from refimpl.x import _name``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls") and (owner, node.attr) not in ALLOWED_PRIVATE:
                found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("refimpl"):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name[:1] == "_" != a.name[1:2]]
    return found


def test_no_module_reaches_into_another_modules_private_names():
    reaches = {name: r for name, tree in TREES.items() if (r := private_reaches(tree))}
    assert not reaches, reaches


def test_tests_do_not_reach_into_private_names_of_the_model():
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name == "test_layout.py":
            continue
        text = path.read_text(encoding="utf-8")
        for private in ("._pipeline", "._tokenizer", "._lock", "._engines"):
            assert private not in text, f"{path.name} reaches into {private}"


def test_no_function_is_longer_than_sixty_lines():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_the_facade_stays_small():
    lines = len(MODULES["refimpl.model"].read_text(encoding="utf-8").splitlines())
    print(f"refimpl/model.py: {lines} lines")
    assert lines <= MAX_FACADE_LINES


def test_engines_are_named_by_their_folders():
    from refimpl.engines import ENGINES, engine_class

    folders = sorted(p.name for p in (PACKAGE / "engines").iterdir() if (p / "__init__.py").exists())
    assert sorted(ENGINES) == folders
    for name in ENGINES:
        assert engine_class(name).name == name
        assert engine_class(name).__module__ == f"refimpl.engines.{name}"
