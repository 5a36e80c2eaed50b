"""One table per axis (backends, precisions, calibration methods, power samplers, families, tasks).

Each entry declares everything about itself; the config schema, the plan and the summary read the
tables instead of repeating names. A new entry is one module plus one `register` call. Modules named
in $PLANFORGE_PLUGINS (comma-separated) are imported when the tables load, so an entry can come from
outside the package (tests/plugins/ holds one) without editing anything here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Generic, TypeVar

from workflow_scripts.core.io import PlanforgeError

T = TypeVar("T")
PLUGINS_ENV = "PLANFORGE_PLUGINS"


class Registry(Generic[T]):
    """Name → entry, in registration order; an unknown name is a one-line error listing the known ones."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        old = self._entries.get(name)
        if old is not None and old != entry:
            raise PlanforgeError(f"{self.axis} {name!r} is registered twice, differently")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise PlanforgeError(f"unknown {self.axis} {name!r}; allowed: {list(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()


_loaded: set[str] = set()


def load_plugins() -> None:
    """Import the modules named in $PLANFORGE_PLUGINS (each registers its entries when imported)."""
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        if name in _loaded:
            continue
        _loaded.add(name)
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PlanforgeError(f"${PLUGINS_ENV}: cannot import plugin {name!r} ({exc})") from None


def resolve(path: str):
    """The object a "module:name" string names (a registry entry's hook, imported only when it is called for)."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise PlanforgeError(f"{path!r}: cannot import it ({exc})") from None
