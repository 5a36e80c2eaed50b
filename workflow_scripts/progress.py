"""Progress for long loops: a tqdm bar on a terminal, plain periodic lines in CI logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, every_s: float = 10.0) -> Iterator[T]:
    """Yield `items`, showing progress on stderr: a bar when it is a terminal, else a line every `every_s`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            print(
                f"{desc}: {done}/{total if total is not None else '?'} ({now - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"{desc}: {done}/{total if total is not None else done} done in {time.monotonic() - start:.1f} s",
        file=sys.stderr,
        flush=True,
    )
