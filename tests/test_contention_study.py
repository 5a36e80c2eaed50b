"""benchmarks/contention_study.py's comparer: every row within the tolerance of the quiet run, or flagged."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import contention_study as study


def _row(
    folder: Path, name: str, p50: float, stable: bool = True, other: float = 0.02, attempts=(), slowdowns=()
) -> None:
    f = folder / f"{name}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    reason = None if stable else "other processes used 1.17 of 2 CPUs (limit 0.50)"
    loops = [
        {"latency_ms": {"p50": p}, "load": {"other_cpus_busy": o, "cpus_usable": 2}, "dispersion": {"cv": 0.1}}
        for p, o in (attempts or [(p50, other)])
    ]
    for loop, slowdown in zip(loops, slowdowns):
        loop["load"]["reference"] = {"slowdown": slowdown}
    f.write_text(
        json.dumps(
            {
                "latency_ms": {"p50": p50},
                "stable": stable,
                "load": {"other_cpus_busy": other, "cpus_usable": 2},
                "stability": {"reason": reason, "reported_reason": reason, "attempts": loops},
            }
        )
    )


def test_a_slowed_row_passes_only_when_flagged(tmp_path):
    quiet, busy = tmp_path / "quiet", tmp_path / "contended"
    _row(quiet, "m/ort_fp32_b1", 27.7)
    _row(busy, "m/ort_fp32_b1", 30.0)  # 8 % slower: within 15 %
    _row(quiet, "m/ort_fp32_b4", 50.0)
    _row(busy, "m/ort_fp32_b4", 100.0, stable=False, other=1.17)  # 2× slower, flagged: fine
    lines, ok = study.compare(quiet, busy, 0.15)
    assert ok and lines[-1].startswith("2 rows: 1 within 15% of A, 1 off by more but flagged")
    assert any("| m/ort_fp32_b4 | 50.00 | 100.00 | 2.00 | stable | † other processes used 1.17" in ln for ln in lines)
    _row(busy, "m/ort_fp32_b1", 100.0)  # 3.6× slower and called stable: the check fails
    lines, ok = study.compare(quiet, busy, 0.15)
    assert not ok and "| FAIL |" in lines[4] and "1 off by more and not flagged (FAIL)" in lines[-1]


def test_calibration_finds_the_share_of_cpus_past_which_p50_moves(tmp_path):
    # one row's loops: quiet ones at 10 ms, 10 % of the CPUs taken: +5 %, 30 %: +40 %
    _row(tmp_path / "s", "m/ort_fp32_b1", 10.0, attempts=[(10.0, 0.0), (10.5, 0.2), (14.0, 0.6), (10.2, 0.04)])
    lines = study.calibrate([tmp_path / "s"], 0.15, 0.05)
    assert lines[-1].startswith("Every loop with other processes at or below 0.100 of the usable CPUs stayed within")
    assert "the first beyond: m/ort_fp32_b1 at 0.300 (1.40×)" in lines[-1]


def test_the_reference_check_counts_slow_loops_the_kernel_flagged_and_missed(tmp_path):
    # quiet loops (0.02 of the CPUs): 10 ms with the kernel at speed, 14 ms beside a 1.3× kernel (caught), 13 ms
    # beside a 1.05× kernel (missed); a loop beside a busy process (0.6) is /proc/stat's, not counted here
    _row(
        tmp_path / "s", "m/ort_fp32_b1", 10.0,
        attempts=[(10.0, 0.02), (14.0, 0.02), (13.0, 0.02), (30.0, 1.2)], slowdowns=[1.0, 1.3, 1.05, 2.0],
    )  # fmt: skip
    lines = study.reference_check([tmp_path / "s"], 0.15, 0.075)
    assert lines[0].startswith("3 timed loops of 1 rows")
    assert "| slow | 1 | 1 |" in lines and "| not slow | 0 | 1 |" in lines
    assert lines[-1] == "Slow and not flagged: m/ort_fp32_b1 (1.30×, kernel 1.05×)."
