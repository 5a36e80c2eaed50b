"""What each part may import (ARCHITECTURE.md), checked on the source: a new import across a wall fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PKG = REPO / "workflow_scripts"
STEP_CLIS = {p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "config")}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("workflow_scripts")}


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "workflow_scripts"
    if parts[1] in STEP_CLIS:
        return "step CLI"
    return parts[1]


def _modules(part: str) -> list[Path]:
    return sorted((PKG / part).rglob("*.py"))


FORBIDDEN = {
    "runners": {"models", "step CLI", "serving", "tasks", "plan"},
    "models": {"runners", "step CLI", "serving", "tensorrt", "plan"},
    "power": {"tensorrt", "step CLI", "models", "runners", "serving"},
    "serving": {"step CLI"},
    "tasks": {"step CLI", "serving", "runners"},
    "core": {"step CLI", "serving", "plan", "tensorrt", "power", "runners", "models", "pipeline", "tasks"},
    "pipeline": {"step CLI", "serving", "plan"},
    "tensorrt": {"step CLI", "serving", "models"},
}


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_each_part_imports_only_what_the_architecture_allows(part):
    bad = []
    for path in _modules(part):
        for module in _imports(path):
            if _part(module) in FORBIDDEN[part]:
                bad.append(f"{path.relative_to(REPO)} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_package_has_no_loose_libraries_beside_the_step_clis():
    """Top-level modules are step CLIs (each has main) or the config; libraries live in their packages."""
    for path in PKG.glob("*.py"):
        if path.stem in ("__init__", "config"):
            continue
        assert "def main(" in path.read_text(), f"{path.relative_to(REPO)} is not a step CLI; move it to a package"


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` (module → modules it imports) as a path that ends where it starts, or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


@pytest.mark.parametrize("part", ["serving"])
def test_a_package_has_no_import_cycle(part):
    """No circle among a package's modules, counting imports inside functions too (a deferred import hides a circle
    from Python, not from a reader): serving's repository → tracking → sweep → repository was one."""
    names = {f"workflow_scripts.{part}.{p.stem}" for p in _modules(part) if p.stem != "__init__"}
    graph = {
        f"workflow_scripts.{part}.{path.stem}": _imports(path) & names
        for path in _modules(part)
        if path.stem != "__init__"
    }
    assert not _cycle(graph), " → ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
