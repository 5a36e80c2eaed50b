"""Adding a backend is one module plus one registry entry: a test-only module adds one, and nothing else changes."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_CONFIG, make_workflow_copy, planned_outputs, snakemake
from workflow_scripts.core.io import read_json

PLUGIN = "tests.plugins.ort_basic"


def _config() -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["models"] = {"a": config["models"]["a"]}
    config["targets"] = {
        "cpu": {
            "device": "cpu",
            "threads": 1,
            "backends": {"onnxruntime": ["fp32"], "onnxruntime-basic": ["fp32"]},
            "batch_sizes": [1],
        }
    }
    config["accuracy"] = {"batch": 4, "baseline": {"backend": "onnxruntime", "precision": "fp32"}}
    return config


@pytest.fixture
def plugin_workflow(tmp_path, monkeypatch):
    work = make_workflow_copy(tmp_path / "wf", _config())
    shutil.copytree(REPO / "tests" / "plugins", work / "tests" / "plugins")  # the one new module (and its package)
    (work / "tests" / "__init__.py").write_text("")
    monkeypatch.setenv("PLANFORGE_PLUGINS", PLUGIN)
    return work


def test_a_backend_from_one_plugin_module_is_planned_and_run_by_the_same_steps(plugin_workflow):
    outputs = planned_outputs(plugin_workflow, "results/summary.md")
    bench = "results/cpu/bench/a/onnxruntime-basic_fp32_b1.json"
    accuracy = "results/cpu/accuracy/a/onnxruntime-basic_fp32.json"
    assert {bench, accuracy} <= outputs

    snakemake(plugin_workflow, "results/summary.md")
    b = read_json(plugin_workflow / bench)
    assert b["backend"] == "onnxruntime-basic" and b["latency_ms"]["p50"] > 0
    a = read_json(plugin_workflow / accuracy)
    reference = read_json(plugin_workflow / "results/cpu/accuracy/a/onnxruntime_fp32.json")
    # the same ONNX file through the same ONNX Runtime: only graph rewrites differ, so the detections agree
    assert a["map50_95"] == pytest.approx(reference["map50_95"], abs=1e-3)
    assert a["gate"]["passed"]
    assert "onnxruntime-basic" in (plugin_workflow / "results/summary.md").read_text()
    # its module is a code input of its own jobs: editing it makes exactly those (and the report) stale
    module = plugin_workflow / "tests/plugins/ort_basic.py"
    module.write_text(module.read_text() + "\n# edited\n")
    stale = planned_outputs(plugin_workflow, "results/summary.md")
    assert {bench, accuracy} <= stale
    assert not {o for o in stale if "/onnxruntime_fp32" in o}, stale


def test_without_the_plugin_the_config_names_the_known_backends(plugin_workflow, monkeypatch):
    monkeypatch.delenv("PLANFORGE_PLUGINS")
    env = {k: v for k, v in os.environ.items() if k != "PLANFORGE_PLUGINS"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1"],
        cwd=plugin_workflow,
        env={**env, "PYTHONPATH": str(plugin_workflow)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "onnxruntime-basic" in proc.stdout + proc.stderr and "targets.cpu.backends" in proc.stdout + proc.stderr
