"""Atomic file writes and the one error type every step reports as a single line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


class PlanforgeError(Exception):
    """A user-facing problem: printed as one line naming the file or key and what to do."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.",
        suffix=suffix if suffix is not None else target.suffix + ".tmp",
        dir=target.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def exception_line(exc: BaseException) -> str:
    """The first line of an exception's message for a one-line error, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks (`hashlib.file_digest` is Python ≥ 3.11)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, with a one-line error naming it if it is missing or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise PlanforgeError(f"{p}: file not found; rerun the rule that makes it")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanforgeError(f"{p}: not valid JSON ({exc}); delete it and rerun") from exc


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays end up in results; keep this module free of a numpy import
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a step's `main`, turning a PlanforgeError into one line on stderr and exit code 1."""
    try:
        main(argv)
    except PlanforgeError as exc:
        print(f"planforge error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure as PNG, whole or not at all, and close it (laid out tight unless it
    already has a layout engine, e.g. `layout="constrained"` for a legend outside the axes)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
