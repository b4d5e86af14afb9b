"""Who may import whom: the floor plan of README's layout table, checked on the source (``ast``, nothing imported).

Every import counts: module level, inside functions, under ``TYPE_CHECKING``.
A failure names the importing file and line and the rule it breaks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "protocol", "operators", "flows", "sinks", "delivery", "gateway", "dispatcher", "cli", "simulate", "web")

ALLOWED: dict[str, set[str]] = {
    "schemas": {"schemas"},
    "protocol": {"protocol"},
    "operators": {"schemas", "operators"},
    "dispatcher": {"schemas", "protocol", "dispatcher"},
}
"""Packages whose imports of ours are limited to these (the others may import any package below them)."""
FORBIDDEN: dict[str, set[str]] = {
    "gateway": {"dispatcher"},
    "delivery": {"dispatcher"},
    "web": {"dispatcher", "gateway", "flows"},
}
"""The server never imports the site client: what they share is in ``protocol/``."""
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {"operators": {"bytewax"}}
"""The engine is plain Python: no Bytewax in ``operators/``."""


@dataclass(frozen=True)
class Import:
    """One import statement's target, as a module name, where it is written."""

    source: str
    target: str
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _ours(name: str) -> str | None:
    """The module of ours that ``name`` is, or lies in (``pkg.mod.attr`` → ``pkg.mod``); ``None`` for third-party."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> Iterator[Import]:
    """Every import in ``module``'s file, resolved to module names (relative imports included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(module, f"{base}.{alias.name}" if _ours(f"{base}.{alias.name}") == f"{base}.{alias.name}" else base,
                             path, node.lineno)


GRAPH: dict[str, list[Import]] = {module: list(dict.fromkeys(imports_of(module))) for module in MODULES}
"""Each module's imports, one per (target, line): ``from x import a, b`` of one module is one edge."""


def _top(name: str) -> str:
    return name.partition(".")[0]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_floor_allows(package: str) -> None:
    problems = []
    for module, found in GRAPH.items():
        if _top(module) != package:
            continue
        for item in found:
            target = _ours(item.target)
            if target is None:
                if _top(item.target) in FORBIDDEN_THIRD_PARTY.get(package, set()):
                    problems.append(f"{item.where()}: {module} imports {item.target} ({package}/ must not import {_top(item.target)})")
                continue
            if package in ALLOWED and _top(target) not in ALLOWED[package]:
                allowed = ", ".join(f"{name}/" for name in sorted(ALLOWED[package]))
                problems.append(f"{item.where()}: {module} imports {target} ({package}/ may import only {allowed} of ours)")
            if _top(target) in FORBIDDEN.get(package, set()):
                problems.append(f"{item.where()}: {module} imports {target} ({package}/ must not import {_top(target)}/)")
    if problems:
        pytest.fail("imports against the floor plan (README, Layout):\n" + "\n".join(problems), pytrace=False)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), by Tarjan's algorithm."""
    edges = {module: sorted({t for item in found if (t := _ours(item.target)) is not None}) for module, found in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in edges[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1 or module in edges[module]:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    lines = []
    for component in _cycles():
        members = set(component)
        lines.append("cycle: " + " ↔ ".join(component))
        lines += [f"  {item.where()}: {item.source} imports {item.target}"
                  for module in component for item in GRAPH[module] if _ours(item.target) in members]
    if lines:
        pytest.fail("import cycles (function-level and TYPE_CHECKING imports count):\n" + "\n".join(lines), pytrace=False)


def test_the_check_sees_every_package_and_resolves_imports() -> None:
    assert {_top(module) for module in MODULES} == set(PACKAGES)
    assert any(_ours(item.target) == "protocol.wire" for item in GRAPH["gateway.auth"])
    assert any(item.target == "bytewax.dataflow" for item in GRAPH["flows.detect"])


def test_test_folders_share_helpers_only_through_tests_support() -> None:
    problems = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        folder = path.relative_to(ROOT / "tests").parts[0] if path.parent != ROOT / "tests" else None
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "tests" and len(parts) > 1 and parts[1] not in ("support", folder):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {name} (shared helpers belong in tests/support/)")
    if problems:
        pytest.fail("test folders importing each other:\n" + "\n".join(problems), pytrace=False)
