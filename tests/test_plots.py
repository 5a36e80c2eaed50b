"""Plots a person reads, and the Pareto front of latency against accuracy that the plot draws and the summary lists."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from PIL import Image

from workflow_scripts.core.pareto import pareto_front
from workflow_scripts.plots import plot_accuracy, plot_latency
from workflow_scripts.summary import pareto_lines, picture_lines


def _points(*rows) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": m,
                "backend": "ort",
                "precision": p,
                "batch": 1,
                "p50_ms": ms,
                "score": s,
                "metric_label": "mAP50-95",
                "task": "detection",
            }
            for m, p, ms, s in rows
        ]
    )


def _names(front: pd.DataFrame) -> list[str]:
    return [f"{r['model']} {r['precision']}" for _, r in front.iterrows()]


def test_the_pareto_front_keeps_only_configurations_no_other_is_both_faster_and_more_accurate():
    pts = _points(
        ("a", "int8", 7.7, 0.885),  # fastest
        ("a", "fp32", 13.3, 0.889),  # slower but more accurate: on the front
        ("a", "torch", 23.2, 0.889),  # as accurate as fp32, slower: dominated
        ("b", "int8", 8.0, 0.730),  # slower and less accurate than a int8: dominated
        ("b", "fp32", 40.0, 0.95),  # the most accurate: on the front however slow
    )
    assert _names(pareto_front(pts)) == ["a int8", "a fp32", "b fp32"]


def test_equal_configurations_are_both_on_the_front_and_rows_without_a_score_are_left_out():
    pts = _points(("a", "x", 5.0, 0.8), ("a", "y", 5.0, 0.8), ("a", "z", 1.0, math.nan))
    assert _names(pareto_front(pts)) == ["a x", "a y"]
    assert pareto_front(pts.iloc[0:0]).empty


def test_the_summary_lists_the_front_fastest_first():
    pts = _points(("a", "fp32", 13.3, 0.889), ("a", "int8", 7.7, 0.885), ("b", "int8", 8.0, 0.73))
    (line,) = pareto_lines(pts)
    assert line.index("**a ort int8** (7.70 ms, 0.8850)") < line.index("**a ort fp32** (13.30 ms, 0.8890)")
    assert "b ort" not in line and "mAP50-95 ↑" in line


def test_an_errors_front_keeps_the_lowest_error_within_each_latency():
    pts = _points(("a", "bf16", 5.0, 0.002), ("a", "fp32", 9.0, 0.0), ("a", "int4", 7.0, 0.01))
    assert _names(pareto_front(pts, higher_is_better=False)) == ["a bf16", "a fp32"]
    # read as a score, the error-free baseline would look worst and the largest error best
    assert _names(pareto_front(pts)) == ["a bf16", "a int4"]


def test_the_accuracy_plot_gives_each_task_its_own_panel_with_its_metric_and_direction(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    det = _points(("d", "fp32", 13.3, 0.889), ("d", "int8", 7.7, 0.885))
    vla = _points(("v", "bf16", 20.0, 0.0004), ("v", "fp32", 30.0, 0.0))
    vla[["task", "metric_label"]] = ["vla", "action MSE vs FP32"]
    trk = _points(("t", "fp32", 2.0, 0.35), ("t", "int8", 1.0, 0.30))
    trk[["task", "metric_label"]] = ["tracking", "success AUC"]
    unstable = _points(("d", "int8", 3.0, 0.95))
    unstable["stable"] = False  # faster and more accurate on paper, but disturbed: never on the front
    pts = pd.concat([det, vla, trk, unstable], ignore_index=True)
    pts["gate_passed"] = True
    figures = []
    monkeypatch.setattr("workflow_scripts.plots.save_figure", lambda fig, path: figures.append(fig))
    plot_accuracy("cpu", pts, tmp_path / "acc.png")
    (fig,) = figures
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert set(axes) == {"detection", "tracking", "vla"}
    assert axes["detection"].get_ylabel() == "mAP50-95 (higher is better ↑)"
    assert axes["tracking"].get_ylabel() == "success AUC (higher is better ↑)"
    assert axes["vla"].get_ylabel() == "action MSE vs FP32 (lower is better ↓)"
    steps = {t: next(ln for ln in ax.get_lines() if ln.get_label() == "Pareto front") for t, ax in axes.items()}
    assert list(steps["vla"].get_ydata()[:2]) == [0.0004, 0.0]  # the error-free fp32 is on its front
    assert 0.95 not in list(steps["detection"].get_ydata())  # the unstable point is left off
    assert list(steps["detection"].get_ydata()[:2]) == [0.885, 0.889]
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "d ort int8 († unstable)" in texts
    plt.close(fig)


def test_the_accuracy_plot_draws_the_front_as_a_step_line_and_names_every_point_outside_the_axes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    pts = _points(("a", "fp32", 13.3, 0.889), ("a", "int8", 7.7, 0.885), ("b", "int8", 8.0, 0.73))
    pts["gate_passed"] = [True, True, False]
    figures = []
    monkeypatch.setattr("workflow_scripts.plots.save_figure", lambda fig, path: figures.append(fig))
    plot_accuracy("cpu", pts, tmp_path / "acc.png")
    (fig,) = figures
    (ax,) = fig.axes  # one task: one panel
    (step,) = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert step.get_drawstyle() == "steps-post" and list(step.get_ydata()[:2]) == [0.885, 0.889]
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert "b ort int8 (FAILS the gate)" in texts and "Pareto front" in texts
    assert not ax.texts  # no labels beside the points to overlap
    plt.close(fig)


def test_latency_is_plotted_per_batch_and_per_image_on_log_axes(tmp_path):
    bench = pd.DataFrame(
        [
            {
                "model": "a",
                "backend": "ort",
                "precision": "fp32",
                "batch": b,
                "p50_ms": 10.0 * b**0.8,
                "p99_ms": 12.0 * b,
            }
            for b in (1, 4, 16)
        ]
    )
    out = tmp_path / "lat.png"
    plot_latency("cpu", bench, out)
    with Image.open(out) as im:
        assert im.width > im.height > 300


def test_the_summary_links_each_targets_pictures_per_model(tmp_path):
    out = tmp_path / "results" / "summary.md"
    pics = [
        tmp_path / "results" / t / "pictures" / m / f"{r}.png"
        for t in ("cpu", "edge")
        for m in ("b", "a")
        for r in ("torch_fp32", "onnxruntime_int8_minmax")
    ]
    lines = picture_lines(pics, "cpu", out)
    assert lines[2] == (
        "- a: [onnxruntime int8_minmax](cpu/pictures/a/onnxruntime_int8_minmax.png), [torch fp32](cpu/pictures/a/torch_fp32.png)"
    )
    assert lines[3].startswith("- b: ") and not any("edge/" in line for line in lines)
    assert picture_lines([Path("results/plots/cpu_latency_vs_batch.png")], "cpu", out) == []


def test_a_target_with_nothing_timed_still_gets_its_plots_saying_so(tmp_path):
    """A target whose only backend is not installed here (TensorRT on a CPU machine) has no rows at all."""
    from workflow_scripts import plots

    pngs = [tmp_path / "a.png", tmp_path / "b.png"]
    plots.main(
        ["--target", "gpu", "--bench", "--accuracy", "--latency-png", str(pngs[0]), "--accuracy-png", str(pngs[1])]
    )
    assert all(p.stat().st_size > 1000 for p in pngs)
