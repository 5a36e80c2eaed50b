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


# Precision names are interpreted in core/precisions.py alone: every other module asks the parsed `Precision`.
PRECISIONS_MODULE = PKG / "core" / "precisions.py"
NOT_A_PRECISION = "# not a precision"  # a line that compares a config or JSON key which only looks like one


def _precision_literals() -> set[str]:
    from workflow_scripts.core.precisions import KINDS, PRECISIONS, qdq_variants

    return {*PRECISIONS, *KINDS, *qdq_variants(), "fp8"}


def _names_a_precision(node: ast.AST, names: set[str]) -> bool:
    """A string constant that is a precision name (or kind), or a tuple / list / set holding one."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in names
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_a_precision(e, names) for e in node.elts)
    return False


def _part_of_a_precision(node: ast.AST, names: set[str], method: str) -> bool:
    """A startswith / endswith argument that is a piece of a precision name: a head of four characters or more
    ('int8', 'int8_'), or a tail from an underscore ('_fb', '_u8u8_fb')."""
    if isinstance(node, ast.Tuple):
        return any(_part_of_a_precision(e, names, method) for e in node.elts)
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return False
    piece = node.value
    if method in ("startswith", "removeprefix"):
        return len(piece) >= 4 and any(n.startswith(piece) for n in names)
    return piece.startswith("_") and any(n.endswith(piece) for n in names)


def precision_branches(path: Path, names: set[str] | None = None) -> list[str]:
    """Where a module branches on a precision name: compares one (==, !=, in, not in), tests a prefix or suffix of
    one (startswith, endswith, removeprefix, removesuffix), matches one in a `case`, or looks a value up in a dict
    literal keyed by precision names. A line that says `# not a precision` is a key that only looks like one."""
    names = _precision_literals() if names is None else names
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        hit = False
        if isinstance(node, ast.Compare):
            hit = any(_names_a_precision(n, names) for n in (node.left, *node.comparators))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method in ("startswith", "endswith", "removeprefix", "removesuffix"):
                hit = any(_part_of_a_precision(a, names, method) for a in node.args)
        elif isinstance(node, ast.MatchValue):
            hit = _names_a_precision(node.value, names)
        elif isinstance(node, ast.Dict):  # a lookup table by precision name
            hit = sum(k is not None and _names_a_precision(k, names) for k in node.keys) >= 2
        if hit and NOT_A_PRECISION not in lines[node.lineno - 1]:
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)[:120]}")
    return found


def test_precision_names_are_interpreted_only_in_core_precisions():
    bad = [b for path in sorted(PKG.rglob("*.py")) if path != PRECISIONS_MODULE for b in precision_branches(path)]
    assert not bad, "ask the parsed Precision (core/precisions.py) instead of the name:\n" + "\n".join(bad)


PLANTED = """
def dtype(precision, record, options):
    if precision == "fp16":
        return 1
    if precision in ("int8", "best"):
        return 2
    if record["precision"].startswith("int8_"):
        return 3
    if options["variant"].endswith("_fb"):
        return 4
    match precision:
        case "bf16":
            return 5
    return {"fp32": 6, "fp16": 7}[precision]

def fine(precision, r):
    if r["backend"] == "onnxruntime" or precision.is_int8:
        return r.get("int8")
    return {k: v for k, v in r.items() if k != "int8"}  # not a precision: the sidecar's INT8 plan key
"""


def test_the_precision_check_finds_each_kind_of_branch_planted_in_a_module(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(PLANTED)
    found = precision_branches(planted)
    assert [int(f.split(":")[1]) for f in found] == [3, 5, 7, 9, 12, 14], found
    assert precision_branches(PRECISIONS_MODULE), "core/precisions.py itself compares names: the check must see them"


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


MAX_LINES = 600
TABLES: set[str] = set()  # modules that are a table (data, not logic) may be longer; none is today


def test_no_module_is_over_600_lines():
    """A module a newcomer can read in one sitting: workflow_scripts/ and benchmarks/ stay at most MAX_LINES."""
    long = [
        f"{p.relative_to(REPO)}: {n} lines"
        for root in (PKG, REPO / "benchmarks")
        for p in sorted(root.rglob("*.py"))
        if p.relative_to(REPO).as_posix() not in TABLES and (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"split these by concern (more than {MAX_LINES} lines):\n" + "\n".join(long)
