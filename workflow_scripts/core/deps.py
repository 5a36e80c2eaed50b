"""Which source files a step runs, so Snakemake reruns a rule when (and only when) its code changes."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (workflow_scripts/core/deps.py)
PACKAGE = "workflow_scripts"


def _module_file(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imports(path: Path) -> tuple[str, ...]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(PACKAGE)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE) and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
    return tuple(found)


@functools.cache
def code_files(*modules: str) -> tuple[str, ...]:
    """Files (relative to the repository) of `modules` and every project module they import, transitively.

    Modules imported by name at run time (a backend's runner, a family) are not seen here:
    the rules add those by hand with `runner_file` and `family_files`.
    """
    seen: dict[Path, None] = {}
    todo = [f"{PACKAGE}.{m}" if not m.startswith(PACKAGE) else m for m in modules]
    while todo:
        mod = todo.pop()
        path = _module_file(mod)
        if path is None or path in seen:
            continue
        seen[path] = None
        parts = mod.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += list(_imports(path))
    return tuple(sorted(str(p.relative_to(ROOT)) for p in seen))


@functools.cache
def source_file(module: str) -> str:
    """A module's source file: relative to the repository when it lies inside it (the usual case), else absolute."""
    import importlib.util

    path = _module_file(module)
    if path is None:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            from workflow_scripts.core.io import PlanforgeError

            raise PlanforgeError(f"module {module!r} not found; is it installed or on PYTHONPATH?")
        path = Path(spec.origin)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


@functools.cache
def module_files(module: str) -> tuple[str, ...]:
    """A module's source files: its one file, or every module of a package (`source_file`'s form each)."""
    first = source_file(module)
    path = Path(first) if Path(first).is_absolute() else ROOT / first
    if path.name != "__init__.py":
        return (first,)
    return tuple(
        str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in sorted(path.parent.rglob("*.py"))
    )
