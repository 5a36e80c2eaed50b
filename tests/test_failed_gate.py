"""A failed accuracy gate is marked where a person reads it: the summary's accuracy table and banner, its choice of
the fastest configuration, and the accuracy plot. The verdicts come from the real gate (tasks.gate) on scores,
so a gate that always said "pass" fails these tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._records import accuracy_record, bench_record
from workflow_scripts import summary
from workflow_scripts.core.results import load_tables, merged
from workflow_scripts.plots import plot_accuracy
from workflow_scripts.tasks import TASKS, gate

GATE = 0.95
# (backend, precision, batch-1 p50 ms, mAP50-95): the INT8 row is the fastest and keeps 0.40/0.70 = 0.571
ROWS = [("torch", "fp32", 30.0, 0.70), ("onnxruntime", "fp32", 20.0, 0.69), ("onnxruntime", "int8_minmax", 8.0, 0.40)]


def _bench(backend: str, precision: str, p50: float) -> dict:
    return bench_record(
        backend, precision, p50, stable=True, dispersion={"timer": "latency_ms", "cv": 0.02, "p99_over_p50": 1.1}
    )


def _accuracy(backend: str, precision: str, score: float) -> dict:
    return accuracy_record(backend, precision, score)


@pytest.fixture
def files(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    base = gate(_accuracy("torch", "fp32", ROWS[0][3]), None, GATE)
    bench, acc = [], []
    for backend, precision, p50, score in ROWS:
        record = (
            base
            if (backend, precision) == ("torch", "fp32")
            else gate(_accuracy(backend, precision, score), base, GATE)
        )
        a = tmp_path / f"{backend}_{precision}.acc.json"
        a.write_text(json.dumps(record))
        acc.append(a)
        b = tmp_path / f"{backend}_{precision}_b1.json"
        b.write_text(json.dumps(_bench(backend, precision, p50)))
        bench.append(b)
    return bench, acc


def test_the_real_gate_fails_the_int8_row_and_passes_the_others(files):
    verdicts = {
        (r["backend"], r["precision"]): r["gate"]["passed"] for r in map(json.loads, map(Path.read_text, files[1]))
    }
    assert verdicts == {("torch", "fp32"): True, ("onnxruntime", "fp32"): True, ("onnxruntime", "int8_minmax"): False}


def test_the_summary_marks_the_failed_gate_and_never_picks_the_failed_row(files, tmp_path):
    text = summary.summarise(*files, [], GATE, "torch_fp32", tmp_path / "summary.md", [])
    lines = text.splitlines()
    failed = [line for line in lines if line.startswith("| m | onnxruntime | int8_minmax |")]
    passed = [line for line in lines if line.startswith("| m | onnxruntime | fp32 |")]
    # the timing table and the accuracy table each have the row, with its verdict in the last column
    assert len(failed) == 2 and all(line.rstrip(" |").endswith("**FAIL**") and "0.571" in line for line in failed)
    assert len(passed) == 2 and all(line.rstrip(" |").endswith("pass") and "0.986" in line for line in passed)
    assert "> **ACCURACY GATE FAILED**: m onnxruntime int8_minmax keeps 0.571 of the baseline's mAP50-95" in text
    fastest = [line for line in text.splitlines() if "Fastest at batch 1 that passes the gate" in line]
    assert len(fastest) == 1 and "**m onnxruntime fp32 b1**" in fastest[0], fastest  # not the faster failed INT8


def test_the_accuracy_plot_marks_the_failed_point(files, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr("workflow_scripts.plots.save_figure", lambda fig, path: figures.append(fig))
    _, _, joined = merged(*load_tables(*files, TASKS), "cpu")
    plot_accuracy("cpu", joined, tmp_path / "acc.png")
    labels = [
        t.get_text()
        for fig in figures
        for legend in fig.legends + [ax.get_legend() for ax in fig.axes]
        if legend
        for t in legend.get_texts()
    ]
    for fig in figures:
        plt.close(fig)
    assert "m onnxruntime int8_minmax (FAILS the gate)" in labels, labels
    assert "m onnxruntime fp32" in labels and "m onnxruntime fp32 (FAILS the gate)" not in labels
