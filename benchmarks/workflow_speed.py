"""How fast is the workflow itself? Cold default run, up-to-date dry run, and a ≥500-job dry run.

Writes a JSON (default docs/measured/cpu/workflow_speed.json) with the seconds measured on this
machine; targets from the foundation issue: cold run < 300 s, dry runs < 3 s and < 10 s.

    python benchmarks/workflow_speed.py            # all three (the cold run rebuilds everything)
    python benchmarks/workflow_speed.py --no-cold  # only the dry runs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workflow_scripts.core.envinfo import cpu_name, git_commit, library_versions  # noqa: E402
from workflow_scripts.core.io import write_json  # noqa: E402


def _snakemake(cwd: Path, *args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(cwd)},
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def _job_count(text: str) -> int:
    m = re.search(r"^total\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def large_config(models: int, targets: int, batches: list[int]) -> dict:
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg = copy.deepcopy(base)
    cfg["models"] = {f"m{i:02d}": copy.deepcopy(base["models"]["yolo-demo"]) for i in range(models)}
    cfg["targets"] = {
        f"t{i:02d}": {**copy.deepcopy(base["targets"]["cpu"]), "batch_sizes": list(batches)} for i in range(targets)
    }
    return cfg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-cold", action="store_true", help="skip the cold default run")
    p.add_argument("--out", type=Path, default=REPO / "docs/measured/cpu/workflow_speed.json")
    a = p.parse_args(argv)
    result: dict = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "libraries": library_versions(("snakemake", "torch", "onnxruntime")),
        "git_commit": git_commit(),
    }
    with tempfile.TemporaryDirectory(prefix="planforge-speed-") as tmp:
        work = Path(tmp) / "wf"
        shutil.copytree(
            REPO,
            work,
            ignore=shutil.ignore_patterns(
                ".git", "artifacts", "results", "logs", ".snakemake", "__pycache__", "docs", ".whl"
            ),
        )
        if not a.no_cold:
            seconds, out = _snakemake(work, "--cores", "4", "results/summary.md")
            result["cold_default_run"] = {"seconds": round(seconds, 1), "jobs": _job_count(out), "target_s": 300}
            seconds, out = _snakemake(work, "-n", "results/summary.md")
            assert "Nothing to be done" in out, out[-2000:]
            result["up_to_date_dry_run"] = {"seconds": round(seconds, 2), "target_s": 3}
        cfg = large_config(models=10, targets=6, batches=[1, 2, 4, 8])
        (work / "config/large.json").write_text(json.dumps(cfg))
        seconds, out = _snakemake(work, "-n", "results/summary.md", "--configfile", "config/large.json")
        result["large_dry_run"] = {"seconds": round(seconds, 2), "jobs": _job_count(out), "target_s": 10}
    write_json(a.out, result)
    print(yaml.safe_dump(result, sort_keys=False))


if __name__ == "__main__":
    main()
