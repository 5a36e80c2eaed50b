"""Staleness, proved with real snakemake runs on a tiny config: only what changed is rebuilt."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_CONFIG, planned_outputs, snakemake, write_config

SUMMARY = "results/summary.md"  # what users ask for
PICTURES = [
    f"results/{t}/pictures/{m}/{r}.png"
    for t, runs in (("cpu", ("torch_fp32", "onnxruntime_fp32")), ("edge", ("onnxruntime_fp32",)))
    for m in ("a", "b")
    for r in runs
]

pytestmark = pytest.mark.workflow


def _config(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "config" / "config.yaml").read_text())


def _touch_later(path: Path) -> None:
    later = time.time() + 5
    os.utime(path, (later, later))


def test_full_run_writes_every_artifact_of_the_contract(built_workflow: Path):
    w = built_workflow
    for model in ("a", "b"):
        assert (w / f"artifacts/checkpoints/{model}.pt").is_file()
        report = json.loads((w / f"artifacts/onnx/{model}/fp32.json").read_text())
        assert report["opset"] == 17 and report["dynamic_batch"]
        assert report["check"]["max_abs_error"] < 0.05
    bench = json.loads((w / "results/cpu/bench/a/onnxruntime_fp32_b2.json").read_text())
    for key in (
        "warmup",
        "iterations",
        "batch",
        "latency_ms",
        "throughput_items_per_s",
        "timer",
        "preprocess_ms",
        "postprocess_ms",
        "power",
        "environment",
        "config_hash",
        "runner",
    ):
        assert key in bench, key
    assert set(bench["latency_ms"]) == {"mean", "std", "p50", "p90", "p95", "p99", "min", "max"}
    assert bench["iterations"] == 3 and bench["batch"] == 2
    assert bench["environment"]["libraries"]["onnxruntime"]
    acc = json.loads((w / "results/edge/accuracy/a/onnxruntime_fp32.json").read_text())
    assert acc["images"] == 6 and acc["baseline"]["backend"] == "torch"
    summary = (w / "results/summary.md").read_text()
    assert "## Target `cpu`" in summary and "## Target `edge`" in summary
    assert (w / "results/plots/cpu_latency_vs_batch.png").stat().st_size > 1000
    assert set(PICTURES) == {str(p.relative_to(w)) for p in (w / "results").glob("*/pictures/*/*.png")}
    assert "(cpu/pictures/a/onnxruntime_fp32.png)" in summary and "Pareto front at batch 1" in summary


def test_second_run_with_nothing_changed_runs_no_job(workflow_copy: Path):
    assert planned_outputs(workflow_copy, SUMMARY) == set()
    assert planned_outputs(workflow_copy) == set()  # nor the default target: the summary built all of it
    proc = snakemake(workflow_copy, "results/summary.md")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_adding_a_batch_size_schedules_only_the_new_bench_jobs_and_the_summary(workflow_copy: Path):
    cfg = _config(workflow_copy)
    cfg["targets"]["cpu"]["batch_sizes"].append(3)
    write_config(workflow_copy, cfg)
    planned = planned_outputs(workflow_copy, SUMMARY)
    new_bench = {f"results/cpu/bench/{m}/{b}_fp32_b3.json" for m in ("a", "b") for b in ("torch", "onnxruntime")}
    cpu_plots = {"results/plots/cpu_latency_vs_batch.png", "results/plots/cpu_accuracy_vs_latency.png"}
    assert planned == new_bench | cpu_plots | {SUMMARY}
    snakemake(workflow_copy, "results/summary.md")
    assert "| 3 |" in (workflow_copy / "results/summary.md").read_text()
    assert planned_outputs(workflow_copy, SUMMARY) == set()


def test_adding_a_backend_schedules_only_its_bench_jobs_and_the_summary(workflow_copy: Path):
    cfg = _config(workflow_copy)
    cfg["targets"]["edge"]["backends"]["torch"] = ["fp32"]
    write_config(workflow_copy, cfg)
    planned = planned_outputs(workflow_copy, SUMMARY)
    # torch fp32 accuracy on edge already exists: it is the baseline every edge accuracy is compared with
    expected = {"results/edge/bench/a/torch_fp32_b1.json", "results/edge/bench/b/torch_fp32_b1.json"}
    assert {p for p in planned if "/bench/" in p or "/accuracy/" in p} == expected
    assert "results/summary.md" in planned
    assert not any(p.startswith("artifacts/") for p in planned)


def test_replacing_one_checkpoint_makes_only_that_models_artifacts_stale(workflow_copy: Path):
    ckpt = workflow_copy / "ckpt" / "a.pt"
    shutil.copy(ckpt, ckpt.with_suffix(".new"))
    ckpt.with_suffix(".new").replace(ckpt)
    _touch_later(ckpt)
    planned = planned_outputs(workflow_copy, SUMMARY)
    assert "artifacts/checkpoints/a.pt" in planned and "artifacts/onnx/a/fp32.onnx" in planned
    assert "results/cpu/bench/a/torch_fp32_b1.json" in planned and "results/edge/accuracy/a/torch_fp32.json" in planned
    model_b = {p for p in planned if "/b/" in p or p.endswith("/b.pt") or p.endswith("/b.json")}
    assert model_b == set(), model_b
    assert not any("artifacts/data" in p for p in planned)


def test_adding_a_target_schedules_only_its_jobs_and_the_summary(workflow_copy: Path):
    cfg = _config(workflow_copy)
    cfg["targets"]["lab"] = {"device": "cpu", "threads": 2, "backends": {"onnxruntime": ["fp32"]}, "batch_sizes": [1]}
    write_config(workflow_copy, cfg)
    planned = planned_outputs(workflow_copy, SUMMARY)
    assert planned - {SUMMARY} == {
        "results/lab/bench/a/onnxruntime_fp32_b1.json",
        "results/lab/bench/b/onnxruntime_fp32_b1.json",
        "results/lab/accuracy/a/onnxruntime_fp32.json",
        "results/lab/accuracy/b/onnxruntime_fp32.json",
        "results/lab/accuracy/a/torch_fp32.json",
        "results/lab/accuracy/b/torch_fp32.json",
        "results/plots/lab_latency_vs_batch.png",
        "results/plots/lab_accuracy_vs_latency.png",
        "results/lab/pictures/a/onnxruntime_fp32.png",
        "results/lab/pictures/b/onnxruntime_fp32.png",
    }


def test_changing_one_targets_settings_makes_only_that_targets_results_stale(workflow_copy: Path):
    cfg = _config(workflow_copy)
    cfg["targets"]["edge"]["threads"] = 2
    write_config(workflow_copy, cfg)
    planned = planned_outputs(workflow_copy, SUMMARY)
    per_target = {
        p
        for p in planned
        if p.startswith("results/") and p != "results/summary.md" and not p.startswith("results/plots/")
    }
    assert per_target and all(p.startswith("results/edge/") for p in per_target), per_target
    assert not any(p.startswith("artifacts/") for p in planned)


def test_editing_a_runner_reruns_only_that_backends_jobs(workflow_copy: Path):
    runner = workflow_copy / "workflow_scripts/runners/ort_runner.py"
    runner.write_text(runner.read_text() + "\n# edited\n")
    _touch_later(runner)
    planned = planned_outputs(workflow_copy, SUMMARY)
    measured = {p for p in planned if "/bench/" in p or "/accuracy/" in p or "/pictures/" in p}
    assert measured and all("onnxruntime_" in p for p in measured), measured
    assert {p for p in PICTURES if "onnxruntime_" in p} <= measured
    assert not any(p.startswith("artifacts/") for p in planned)


def test_a_picture_is_redrawn_when_its_backends_artifact_changes_and_only_then(workflow_copy: Path):
    onnx = workflow_copy / "artifacts/onnx/a/fp32.onnx"
    onnx.write_bytes(onnx.read_bytes())  # the same model, written again
    _touch_later(onnx)
    planned = planned_outputs(workflow_copy, SUMMARY)
    pictures = {p for p in planned if "/pictures/" in p}
    assert pictures == {"results/cpu/pictures/a/onnxruntime_fp32.png", "results/edge/pictures/a/onnxruntime_fp32.png"}
    assert "results/cpu/bench/a/onnxruntime_fp32_b1.json" in planned  # the same artifact's other readers
    assert not any("torch_" in p or "/b/" in p for p in planned), planned


def test_editing_the_pictures_script_redraws_only_the_pictures_and_the_summary(workflow_copy: Path):
    script = workflow_copy / "workflow_scripts/pictures.py"
    script.write_text(script.read_text() + "\n# edited\n")
    _touch_later(script)
    assert planned_outputs(workflow_copy, SUMMARY) == {SUMMARY, *PICTURES}


def test_asking_for_fewer_pictured_images_redraws_only_the_pictures_and_the_summary(workflow_copy: Path):
    cfg = _config(workflow_copy)
    cfg["pictures"] = {"images": 2}
    write_config(workflow_copy, cfg)
    assert planned_outputs(workflow_copy, SUMMARY) == {SUMMARY, *PICTURES}


def test_editing_the_summary_script_reruns_only_the_summary(workflow_copy: Path):
    script = workflow_copy / "workflow_scripts/summary.py"
    script.write_text(script.read_text() + "\n# edited\n")
    _touch_later(script)
    planned = planned_outputs(workflow_copy, SUMMARY)
    assert planned == {SUMMARY}


def test_editing_the_plotting_script_reruns_only_the_plots_and_the_summary(workflow_copy: Path):
    script = workflow_copy / "workflow_scripts/plots.py"
    script.write_text(script.read_text() + "\n# edited\n")
    _touch_later(script)
    planned = planned_outputs(workflow_copy, SUMMARY)
    assert planned == {SUMMARY} | {
        f"results/plots/{t}_{k}.png" for t in ("cpu", "edge") for k in ("latency_vs_batch", "accuracy_vs_latency")
    }


def test_tiny_config_is_the_one_in_use(built_workflow: Path):
    # guards the fixture itself: the copy's config, not the embedded default, drove the run
    assert _config(built_workflow) == yaml.safe_load(yaml.safe_dump(TINY_CONFIG))


def test_the_html_report_holds_the_summary_and_the_plots(workflow_copy: Path):
    snakemake(workflow_copy, "--report", "report.html")
    html = (workflow_copy / "report.html").read_text()
    for name in ("summary.md", "cpu_latency_vs_batch.png", "edge_accuracy_vs_latency.png", "Pictures"):
        assert name in html, name
    assert "onnxruntime_fp32.png" in html and "torch_fp32.png" in html
