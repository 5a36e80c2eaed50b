"""Work a test module starts in a thread as soon as the run is collected, so that waiting overlaps the files run
before it. For a module that mostly waits (snakemake polling a Slurm cluster every few seconds): its tests then
check what the thread made, with the same assertions.

The module defines `start_early(config, items)` (called once by tests/conftest.py's pytest_collection_finish when
one of its tests is selected) and starts an `Early` with the steps its selected tests need. A step's failure or
skip is raised again, with its traceback, in each test that asks for that step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Early:
    def __init__(self) -> None:
        self._done: dict[str, tuple[bool, object]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.names: list[str] = []

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, steps: list[tuple[str, Callable[[], object]]]) -> None:
        """Run `steps` in order in one thread (they share one cluster, so never at the same time)."""
        self.names = [name for name, _ in steps]

        def run() -> None:
            for name, step in steps:
                try:
                    outcome = (True, step())
                except BaseException as e:  # noqa: BLE001 (re-raised in the test that asks: skips and failures alike)
                    outcome = (False, e)
                with self._cond:
                    self._done[name] = outcome
                    self._cond.notify_all()

        self._thread = threading.Thread(target=run, name="tests-early", daemon=True)
        self._thread.start()

    def result(self, name: str, timeout: float = 3600) -> object:
        """What step `name` returned, once it has run; its exception (a failure, or pytest's skip) raised again."""
        if name not in self.names:
            raise KeyError(f"no early step {name!r}: steps are {self.names}")
        with self._cond:
            if not self._cond.wait_for(lambda: name in self._done, timeout=timeout):
                raise TimeoutError(f"early step {name!r} still running after {timeout:.0f} s")
            ok, value = self._done[name]
        if not ok:
            raise value
        return value

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
