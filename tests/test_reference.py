"""The reference kernel beside each CPU loop (workflow_scripts/core/reference.py): the host's speed against this
machine's best, a disturbance the VM's own counters do not show."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workflow_scripts.bench import CallUnit, Loop, measure
from workflow_scripts.core.history import History
from workflow_scripts.core.reference import WINDOW_S, ReferenceProbe, reference_verdict
from workflow_scripts.plan.settings import Stability


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_history_keeps_the_readings_of_the_window_per_key(tmp_path):
    clock = Clock()
    h = History("host|cpu|threads=2", tmp_path / "r.json", WINDOW_S, now=clock)
    assert h.entries() == []
    h.add(2.0, 1.5)
    clock.t += 60
    h.add(1.8)
    assert [v for _, v in h.entries()] == [2.0, 1.5, 1.8]
    assert History("host|cpu|threads=1", tmp_path / "r.json", WINDOW_S, now=clock).entries() == []  # another key
    clock.t += WINDOW_S - 30  # the first two readings are older than the window now
    assert [v for _, v in h.entries()] == [1.8]
    h.add(3.0)
    assert len(json.loads((tmp_path / "r.json").read_text())["host|cpu|threads=2"]) == 2  # old ones dropped


def test_an_unreadable_history_starts_again(tmp_path):
    f = tmp_path / "r.json"
    f.write_text("{not json")
    h = History("k", f, WINDOW_S)
    assert h.entries() == []
    h.add(1.0)
    assert [v for _, v in h.entries()] == [1.0]


def test_the_verdict_flags_a_slowdown_beyond_its_limit_in_figures():
    assert not reference_verdict({"slowdown": 1.14}, 0.15)["disturbed"]
    v = reference_verdict({"slowdown": 1.31}, 0.15)
    assert v["disturbed"] and v["score"] > 1
    assert v["reason"].startswith("a fixed reference kernel ran 1.31× slower than this machine's best (limit 1.15×)")
    assert not reference_verdict({"slowdown": 5.0}, None)["disturbed"]  # not judged
    assert not reference_verdict(None, 0.15)["disturbed"]  # not read (GPU rows)


def _probe(tmp_path, best_ms: float, readings: list[float] | None = None) -> ReferenceProbe:
    probe = ReferenceProbe(threads=1, seconds=0.05)
    probe.history = History(probe.kernel.key, tmp_path / "r.json", WINDOW_S)
    probe.history.add(best_ms)  # this machine's best, as if read earlier
    if readings is not None:  # fake readings: the verdict's logic without the shared machine's own swings
        probe.kernel.read = lambda *_: readings.pop(0)
    return probe


def _measure(probe: ReferenceProbe, quiet_wait_s: float) -> list[dict]:
    """Up to 2 timed loops of a small matrix product, judged on the reference kernel alone (spread and other
    processes never flag them)."""
    limits = Stability(
        max_cv=100.0, max_p99_over_p50=100.0, attempts=2, max_other_cpus=1000.0, quiet_wait_s=quiet_wait_s,
        max_reference_slowdown=0.15,
    )  # fmt: skip
    unit = CallUnit(lambda: np.ones((64, 64)) @ np.ones((64, 64)))
    return measure(unit, None, Loop(1, 5, 0.0, "none", "cpu", 1, limits, None, probe))


def test_a_loop_beside_a_kernel_slower_than_the_machines_best_is_flagged_and_measured_again(tmp_path):
    # a best no real reading reaches: every reading is a slowdown, and waiting does not end it
    attempts = _measure(_probe(tmp_path, 1e-4), quiet_wait_s=1.0)
    assert len(attempts) == 2 and not any(a["verdict"]["stable"] for a in attempts)
    first = attempts[0]
    assert first["verdict"]["slow_host"] and "a fixed reference kernel ran" in first["verdict"]["reason"]
    ref = first["load"]["reference"]
    assert len(ref["readings_ms"]) == 2 and ref["best_ms"] == 1e-4 and ref["slowdown"] > 1.15
    wait = first["quiet_wait"]["reference"]
    assert not wait["fast"] and wait["readings"] >= 1 and wait["waited_s"] <= 1.5


def test_fake_readings_a_kernel_at_the_machines_speed_does_not_flag_the_loop(tmp_path):
    probe = _probe(tmp_path, 1.0, readings=[1.05, 1.12])  # 1.085 on average: 8.5 % above the best
    (only,) = _measure(probe, quiet_wait_s=0)
    assert only["verdict"]["stable"] and not only["verdict"]["slow_host"]
    assert only["load"]["reference"]["slowdown"] == 1.085 and only["load"]["reference"]["best_ms"] == 1.0


def test_fake_readings_a_kernel_slower_only_before_the_loop_still_counts(tmp_path):
    probe = _probe(tmp_path, 1.0, readings=[1.6, 1.0, 1.0, 1.02])  # loop 1 began on a slow host; loop 2 did not
    first, second = _measure(probe, quiet_wait_s=0)
    assert first["verdict"]["slow_host"] and "ran 1.30× slower" in first["verdict"]["reason"]
    assert second["verdict"]["stable"] and second["load"]["reference"]["slowdown"] == 1.01


@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernel_reads_a_positive_median_and_records_its_key(threads, tmp_path):
    probe = _probe(tmp_path, 1e4)
    assert probe.kernel.read(0.02) > 0
    assert f"threads={probe.kernel.threads}" in probe.kernel.key and ReferenceProbe(threads).kernel.threads == threads
