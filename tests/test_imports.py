"""The package's import graph: no two modules import each other (at any depth of the code, type-checking
imports included), so each module can be read, and loaded, after the ones it uses."""

from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGE = REPO / "unlearn"


def module_names() -> dict[str, object]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports(path, modules) -> set[str]:
    """The package's modules that `path` imports; `from package import submodule` imports the submodule."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
            if submodules:
                found |= submodules
            if len(submodules) < len(node.names) and node.module in modules:
                found.add(node.module)
    return found


def mutual_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets
                   if b != a and a in graph.get(b, ())})


def test_no_two_modules_import_each_other():
    modules = module_names()
    graph = {name: imports(path, modules) for name, path in modules.items()}
    assert mutual_imports(graph) == []


def test_the_check_finds_a_mutual_import():
    assert mutual_imports({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [("a", "b")]
