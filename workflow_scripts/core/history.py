"""Small JSON files of this machine's past readings, kept between runs (a cold run removes artifacts/ and
results/, not these): the reference kernel's readings (core/reference.py) and each bench row's last p50
(core/repeatability.py). One file per kind under ~/.cache/planforge/ ($XDG_CACHE_HOME), or where its environment
variable says; entries are per key, timestamped, the newest MAX_ENTRIES kept, and only those within `window_s` count.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MAX_ENTRIES = 400  # per key, the newest kept


def cache_file(name: str, env: str) -> Path:
    """$env if set, else ~/.cache/planforge/<name> ($XDG_CACHE_HOME where set)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "planforge" / name


class History:
    """One key's timestamped values in a JSON file ({key: [[t, value], ...]})."""

    def __init__(self, key: str, path: Path, window_s: float, now=time.time) -> None:
        self.key, self.path, self.window_s, self.now = key, path, window_s, now

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # missing or unreadable: start again (it only ever holds past readings)

    def entries(self) -> list[list]:
        """[[t, value], ...] of this key within the window, oldest first."""
        cutoff = self.now() - self.window_s
        return [e for e in self._load().get(self.key, []) if e[0] >= cutoff]

    def add(self, *values) -> None:
        data = self._load()
        cutoff = self.now() - self.window_s
        rows = [e for e in data.get(self.key, []) if e[0] >= cutoff]
        rows += [[round(self.now(), 3), v] for v in values]
        data[self.key] = rows[-MAX_ENTRIES:]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)  # atomic: a concurrent reader sees the old file or the new one
        except OSError:
            pass  # a read-only home: the verdicts still have this job's own readings
