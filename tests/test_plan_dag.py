"""The DAG as the rules build it from the plan: every job's rule, outputs, non-code inputs, wildcards, resources
and shell command (its params), for the default config and for a GPU config with every stage on a fake machine
(tests/fakes/plan_machine.py), compared with the recorded snapshot in tests/fixtures/dag/. A change to the plan
or the rules that changes a job shows here as the job's lines before and after.

After a deliberate DAG change, rewrite the snapshots: PLANFORGE_DAG_SNAPSHOT=write python -m pytest
tests/test_plan_dag.py, and review their diff. The jobs' code inputs (workflow_scripts/*.py) are left out of the
snapshot: test_staleness.py checks them, and they change with every moved module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import COPY_ITEMS, REPO

FIXTURES = REPO / "tests" / "fixtures" / "dag"
FAKES = REPO / "tests" / "fakes"
# snapshot name → (config, fake machine mode)
CASES = {
    "default": ("config/config.yaml", "gpu"),
    "gpu": (str(FIXTURES / "gpu.yaml"), "gpu"),
    "gpu_trtexec": (str(FIXTURES / "gpu.yaml"), "trtexec"),
}


def test_rules_ask_the_plan_and_never_read_its_config():
    """The rules name a stage of the plan (PLAN.export, PLAN.quantize, …); the config is the plan's to read."""
    files = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    found = [
        f"{f.relative_to(REPO)}:{n}: {line.strip()}"
        for f in files
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if "PLAN.cfg" in line or ".cfg[" in line or "PLAN.ctx.cfg" in line
    ]
    assert not found, "rules read the config instead of asking the plan:\n" + "\n".join(found)


def test_only_the_engine_stage_names_tensorrt():
    """Engines are one planner (plan/engines.py): the other stages ask it, through Plan.artifact_stage, rather than
    branch on the backend's name; and each stage module stays small."""
    plan_dir = REPO / "workflow_scripts" / "plan"
    named = [
        f"{f.name}:{n}: {line.strip()}"
        for f in sorted(plan_dir.glob("*.py"))
        if f.name != "engines.py"
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if re.search(r"[\"']tensorrt[\"']", line)
    ]
    assert not named, "a stage other than the engine stage branches on TensorRT:\n" + "\n".join(named)
    sizes = {f.name: len(f.read_text().splitlines()) for f in plan_dir.glob("*.py")}
    assert max(sizes.values()) <= 600, sizes


def normalized_jobs(text: str, workdir: Path) -> str:
    """A dry run's jobs, one block each, sorted: no job ids, no code inputs, no temp folders."""
    text = text.split("Building DAG of jobs...", 1)[-1].replace(str(workdir), "WORKDIR")
    blocks, current = [], []
    for line in text.splitlines():
        if re.match(r"\[\w{3} \w{3} ", line) or re.match(r"\s+jobid:", line):
            continue
        if re.match(r"(local)?(rule|checkpoint) \S+:", line) or line.startswith("Job stats"):
            blocks.append(current)
            current = []
        if re.match(r"\s+input:", line):
            kept = [i for i in line.split(": ", 1)[1].split(", ") if not i.startswith("workflow_scripts/")]
            line = "    input: " + ", ".join(kept)
        line = re.sub(r"tmpdir=[^,\s]+", "tmpdir=TMP", line)
        current.append(line.rstrip())
    blocks.append(current)
    jobs = ["\n".join(b).strip() for b in blocks if b and not b[0].startswith(("Job stats", "Using", "Assuming"))]
    return "\n\n".join(sorted(j for j in jobs if j)) + "\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The workflow's files in a folder of their own (no results there: nothing but --forceall decides a job)."""
    work = tmp_path_factory.mktemp("dag")
    for item in (*COPY_ITEMS, "weights"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, work / item)
    trtexec = work / "bin" / "trtexec"
    trtexec.parent.mkdir()
    trtexec.write_text(f"#!{sys.executable}\n" + (FAKES / "trtexec.py").read_text())
    trtexec.chmod(0o755)
    return work


@pytest.mark.parametrize("case", sorted(CASES))
def test_fake_machine_dag_matches_its_snapshot(workdir: Path, case: str):
    config, mode = CASES[case]
    env = {
        **os.environ,
        "PYTHONPATH": str(workdir),
        "PLANFORGE_GPU_NAME": "NVIDIA H100 80GB HBM3",
        "PLANFORGE_TRTEXEC": str(workdir / "bin" / "trtexec"),
        "FAKE_TRTEXEC_VERSION": "100300",
    }
    env.pop("PLANFORGE_PLUGINS", None)
    cmd = [sys.executable, str(FAKES / "plan_machine.py"), mode, "-n", "-p", "--forceall", "--cores", "4", "all"]
    proc = subprocess.run(
        [*cmd, "--configfile", config], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = normalized_jobs(proc.stdout + proc.stderr, workdir)
    snapshot = FIXTURES / f"{case}.txt"
    if os.environ.get("PLANFORGE_DAG_SNAPSHOT") == "write":
        snapshot.write_text(jobs)
    recorded = snapshot.read_text()
    if jobs != recorded:
        before, after = set(recorded.split("\n\n")), set(jobs.split("\n\n"))
        gone, new = sorted(before - after), sorted(after - before)
        raise AssertionError(
            f"the {case} DAG changed ({len(gone)} jobs differ); recorded:\n"
            + "\n\n".join(gone[:3])
            + "\n\nnow:\n"
            + "\n\n".join(new[:3])
        )
