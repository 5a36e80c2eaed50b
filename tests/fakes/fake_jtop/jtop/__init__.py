"""A FAKE `jtop` package (jetson-stats' client) for tests off a Jetson: `jtop(interval=s)` as a context manager whose
`ok()` waits one interval and whose `stats` is the real reading in $FAKE_JTOP_STATS (a JSON file, see
tests/fixtures/jtop/README.md). Put its parent directory first on sys.path to use it."""

import json
import os
import time


class JtopException(Exception):
    pass


class jtop:  # noqa: N801 (jetson-stats' own class name)
    def __init__(self, interval=1.0):
        self.interval = float(interval)
        path = os.environ.get("FAKE_JTOP_STATS")
        if not path:
            raise JtopException("The jtop.service is not active. Please run:\nsudo systemctl restart jtop.service")
        with open(path) as fh:
            self._stats = json.load(fh)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def ok(self):
        time.sleep(self.interval)
        return True

    @property
    def stats(self):
        return dict(self._stats)
