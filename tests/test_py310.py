"""The code a target's jobs run under `targets.<t>.python` stays runnable on JetPack 6's Python 3.10.

The files are the import graph of the model-job steps and of what they import by name (plan.jobs.model_job_code),
not a hand list; vermin also reads every runner (they import their backend's library at the top, so only the
TensorRT runner, whose libraries JetPack provides, is imported here). Two checks: vermin reads them for 3.11-only syntax and standard library (datetime.UTC, tomllib,
typing.Self, StrEnum, except*, ...), and the oldest Python here imports them with JetPack 6's numpy and Pillow
(Ubuntu 22.04's python3-numpy 1.21, python3-pil 9.0; numpy 1.21.6 and Pillow 9.0.1 are those lines' wheels).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from workflow_scripts.plan.jobs import model_job_code
from workflow_scripts.runners import BACKENDS, runner_file

OLDEST = "3.10"  # JetPack 6 (every Orin module): Ubuntu 22.04's Python
JETPACK_PINS = ("numpy==1.21.6", "pillow==9.0.1", "pyyaml==6.0.1")


def python_310() -> str | None:
    """A Python 3.10: $PLANFORGE_PYTHON310, else python3.10 on PATH, else pyenv's ($PYENV_ROOT or ~/.pyenv)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [os.environ.get("PLANFORGE_PYTHON310"), shutil.which(f"python{OLDEST}")]
    for candidate in [*candidates, *sorted(glob.glob(f"{root}/versions/{OLDEST}.*/bin/python"), reverse=True)]:
        if candidate and _is_310(candidate):  # a pyenv shim on PATH may name a version it will not run
            return candidate
    return None


def _is_310(python: str) -> bool:
    try:
        out = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == "(3, 10)"


def _vermin(*files: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        # vermin has no __main__: its console script's entry point, in this interpreter
        [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())"]
        + [f"-t={OLDEST}-", "--no-tips", "--violations", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_the_job_code_is_the_import_graph_of_the_model_job_steps():
    files = set(model_job_code())
    expected = {
        "workflow_scripts/bench.py",
        "workflow_scripts/accuracy.py",
        "workflow_scripts/tensorrt/build_engine.py",
        "workflow_scripts/tensorrt/trtexec_timing.py",  # imported by bench inside a function: still in the graph
        "workflow_scripts/runners/tensorrt_runner.py",
        "workflow_scripts/models/yolo.py",
        "workflow_scripts/models/dfine/__init__.py",
        "workflow_scripts/models/dfine/images.py",
        "workflow_scripts/models/dfine/onnx_export.py",
        "workflow_scripts/tasks/detection.py",
        "workflow_scripts/power/tegrastats.py",
        "workflow_scripts/power/jtop_stats.py",
        "workflow_scripts/core/io.py",
        "workflow_scripts/core/metrics.py",
        "workflow_scripts/plan/settings.py",
    }
    assert expected <= files
    assert "workflow_scripts/plan/jobs.py" not in files  # the plan runs in Snakemake's venv only


def test_vermin_finds_no_3_11_only_syntax_or_stdlib_in_the_job_code():
    """The job code, and every runner (a target's other backends run under its interpreter too)."""
    runners = {runner_file(name) for name in BACKENDS if not Path(runner_file(name)).is_absolute()}
    proc = _vermin(*sorted({*model_job_code(), *runners}))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vermin_flags_a_3_11_only_call(tmp_path):
    """The check above can fail: datetime.UTC (3.11) is what build_engine.py and envinfo.py used."""
    bad = tmp_path / "bad.py"
    bad.write_text("import datetime as dt\nprint(dt.datetime.now(dt.UTC))\n")
    proc = _vermin(str(bad))
    assert proc.returncode != 0 and "datetime.UTC" in proc.stdout


@pytest.fixture(scope="session")
def jetpack_python(tmp_path_factory) -> str:
    """A Python 3.10 venv with JetPack 6's numpy/Pillow lines, made once and kept ($PLANFORGE_PY310_VENV or
    ~/.cache/planforge/py310-<pins>): about 7 s the first time."""
    base = python_310()
    if base is None:
        pytest.skip(f"no Python {OLDEST} here (set PLANFORGE_PYTHON310, or put python{OLDEST} on PATH or in pyenv)")
    key = hashlib.sha256(" ".join((base, *JETPACK_PINS)).encode()).hexdigest()[:10]
    venv = Path(os.environ.get("PLANFORGE_PY310_VENV") or Path.home() / ".cache" / "planforge" / f"py310-{key}")
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *JETPACK_PINS], check=True, capture_output=True)
        (venv / ".complete").write_text("\n".join(JETPACK_PINS))
    return str(python)


def test_the_job_code_imports_under_python_3_10_with_jetpack_numpy(jetpack_python):
    modules = [f[: -len(".py")].replace("/", ".").removesuffix(".__init__") for f in model_job_code()]
    probe = (
        "import importlib, sys, numpy\n"
        "assert sys.version_info[:2] == (3, 10), sys.version\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        "print(sys.version.split()[0], numpy.__version__)\n"
    )
    proc = subprocess.run(
        [jetpack_python, "-c", probe], cwd=REPO, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("3.10.") and proc.stdout.split()[1] == "1.21.6"
