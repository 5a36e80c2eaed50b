"""Shared fixtures: a copy of the workflow on a tiny config, run once for real by snakemake."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO_CHECKPOINT = Path(os.environ.get("PLANFORGE_TEST_CHECKPOINT", REPO / "weights" / "yolo-demo.pt"))
COPY_ITEMS = ("Snakefile", "rules", "workflow_scripts", "config", "profiles", "envs", "report", "pyproject.toml")

# The suite runs beside itself (and beside whatever else the machine runs): the workflow tests check the DAG and
# the summary's wiring, not the machine, so other processes never flag their rows nor make them wait for quiet.
# Contention in the verdict is tests/test_stability.py's subject, the reference kernel tests/test_reference.py's and
# the run-to-run check tests/test_repeatability.py's.
CONTENTION_NOT_JUDGED = {
    "max_other_cpus": 1000.0,
    "quiet_wait_s": 0,
    "max_reference_slowdown": None,
    "max_change_from_last_run": None,
}
# Where the default's verdict runs (bench.stability.max_reference_slowdown, max_change_from_last_run), the histories
# it reads are the suite's own, not this machine user's (~/.cache/planforge/).
_HISTORY = tempfile.mkdtemp(prefix="planforge-history-")
os.environ.setdefault("PLANFORGE_REFERENCE_FILE", os.path.join(_HISTORY, "reference.json"))
os.environ.setdefault("PLANFORGE_ROWS_FILE", os.path.join(_HISTORY, "rows.json"))

TINY_CONFIG = {
    "datasets": {
        "tiny": {
            "kind": "synthetic",
            "seed": 3,
            "splits": {"train": 0, "val": 6, "calib": 2},
            "image_size": [96, 160],
            "max_objects": 3,
        }
    },
    "models": {
        "a": {"family": "yolo", "checkpoint": "ckpt/a.pt", "dataset": "tiny", "imgsz": 160},
        "b": {"family": "yolo", "checkpoint": "ckpt/b.pt", "dataset": "tiny", "imgsz": 160},
    },
    "export": {"check_images": 2},
    "targets": {
        "cpu": {
            "device": "cpu",
            "threads": 1,
            "backends": {"torch": ["fp32"], "onnxruntime": ["fp32"]},
            "batch_sizes": [1, 2],
        },
        "edge": {"device": "cpu", "threads": 1, "backends": {"onnxruntime": ["fp32"]}, "batch_sizes": [1]},
    },
    "bench": {"warmup": 1, "iterations": 3, "stability": CONTENTION_NOT_JUDGED},
    "accuracy": {"batch": 4},
}


def make_workflow_copy(dest: Path, config: dict | None = None) -> Path:
    """A self-contained copy of the workflow (its own code, config and checkpoints) in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in COPY_ITEMS:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / item)
    (dest / "ckpt").mkdir(exist_ok=True)
    for name in ("a", "b"):
        shutil.copy2(DEMO_CHECKPOINT, dest / "ckpt" / f"{name}.pt")
    write_config(dest, config or TINY_CONFIG)
    return dest


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI in `workdir` (the copy's own code is first on the import path)."""
    env = {**(env or os.environ), "PYTHONPATH": str(workdir), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def planned_outputs(workdir: Path, *targets: str) -> set[str]:
    """Outputs of every job a dry run would run (the `all` rule excluded)."""
    proc = snakemake(workdir, "-n", *targets)
    text = proc.stdout + proc.stderr
    outputs: set[str] = set()
    for block in re.split(r"\n(?=\[.*\]\n|(?:local)?(?:rule|checkpoint) )", text):
        m = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        out = re.search(r"^\s+output: (.+)$", block, re.M)
        if out:
            outputs.update(o.strip() for o in out.group(1).split(","))
    return outputs


# The quick tier (`python -m pytest -m "not slow"`, README) leaves out these files, the slowest of the suite (each over
# 20 s in the CI run of 2026-12-07: whole workflows, a real tritonserver, a Slurm cluster, training), and every test
# marked `workflow`. CI runs them all.
SLOW_FILES = {
    "test_bad_input.py",
    "test_dfine_family.py",
    "test_engines.py",
    "test_int8_workflow.py",
    "test_jetson.py",
    "test_pi0_vla.py",
    "test_plugin_backend.py",
    "test_serving.py",
    "test_serving_stop.py",
    "test_serving_tracking.py",
    "test_slurm_cluster.py",
    "test_staleness.py",
    "test_tracking.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES or item.get_closest_marker("workflow"):
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session):
    """A module whose tests mostly wait (tests/test_slurm_cluster.py: snakemake polling a Slurm cluster) defines
    `start_early(config, items)`; once the selected tests are known it starts that waiting in a thread
    (tests/_early.py), beside the files run before it."""
    if session.config.option.collectonly:
        return
    by_module: dict = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "start_early"):
            by_module.setdefault(module, []).append(item)
    for module, items in by_module.items():
        module.start_early(session.config, items)


@pytest.fixture(scope="session")
def built_workflow(tmp_path_factory) -> Path:
    """The tiny workflow run once end to end; tests copy it before changing anything."""
    if not DEMO_CHECKPOINT.is_file():
        pytest.fail(f"{DEMO_CHECKPOINT} is missing: it ships with the repository")
    work = make_workflow_copy(tmp_path_factory.mktemp("built") / "wf")
    snakemake(work, "results/summary.md")
    return work


def copy_built(built: Path, dest: Path) -> Path:
    """A private copy of a built workflow, mtimes and snakemake metadata included, to change freely."""
    shutil.copytree(built, dest, symlinks=True)
    return dest


@pytest.fixture
def workflow_copy(built_workflow: Path, tmp_path: Path) -> Path:
    return copy_built(built_workflow, tmp_path / "wf")


@pytest.fixture(autouse=True)
def _no_cached_power_mode():
    """The Jetson power mode is cached per process (`core.machine.power_mode`): a test that sets one through
    PLANFORGE_POWER_MODE must not leave it to the next test."""
    from workflow_scripts.core import machine

    machine.power_mode.cache_clear()
    yield
    machine.power_mode.cache_clear()
