"""The serving environment: a real `tritonserver`, its python backend and `perf_analyzer`, on CPU.

The `nvidia-pytriton` wheel ships a `tritonserver` binary and the python backend (no
onnxruntime backend: ONNX models are served by a python-backend model running ONNX Runtime);
0.5.7 is the newest that accepts numpy<2, and the backend stub returns empty outputs under
numpy 2. The working `perf_analyzer` ships in the `tritonclient==2.51.0` wheel, which also
pins numpy<2. So these live in their own virtualenv (never the workflow's own Python), made
here on first use: `PLANFORGE_TRITON_ENV`, default `.venv-triton/` beside the workflow.

torch and transformers (the Pi0 python-backend model) are not installed here: a CUDA torch wheel is
gigabytes. The stub reads them from the workflow's own environment instead: `server_env` names the
running interpreter's site-packages (`PLANFORGE_WORKFLOW_SITE_PACKAGES`), and the generated model.py
puts it on `sys.path` after this environment's site-packages, so numpy still resolves to 1.x here
(torch ≥ 2.3 runs with numpy 1.x) and torch/transformers come from the workflow (the stub's Python
minor version is already the workflow's, see `_link`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.core.deps import ROOT
from workflow_scripts.core.io import PlanforgeError, run_cli, write_json

# The server side's own dependency list (it cannot share the workflow's numpy 2 environment).
REQUIREMENTS = (
    "nvidia-pytriton==0.5.7",
    "numpy>=1.24,<2",
    "tritonclient[http,grpc]==2.51.0",
    "nvidia-cuda-runtime-cu12",
    "onnxruntime>=1.18",
    "opencv-python-headless>=4.8,<4.12",
)
READY = ".planforge-ready"


def default_dir() -> Path:
    return Path(os.environ.get("PLANFORGE_TRITON_ENV") or ROOT / ".venv-triton").resolve()


def _requirements_hash() -> str:
    return hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TritonEnv:
    """Paths of one prepared serving environment and the process environments it needs."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return Path(sysconfig.get_path("purelib", vars={"base": str(self.root), "platbase": str(self.root)}))

    @property
    def pytriton(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def tritonserver(self) -> Path:
        return self.pytriton / "bin" / "tritonserver"

    @property
    def backend_dir(self) -> Path:
        return self.root / "planforge-backends"

    @property
    def perf_analyzer(self) -> Path:
        return self.root / "bin" / "perf_analyzer"

    @property
    def libs(self) -> list[Path]:
        return [
            self.site_packages / "nvidia_pytriton.libs",
            self.root / "planforge-libs",  # libb64.so.0d for perf_analyzer
            self.site_packages / "nvidia" / "cuda_runtime" / "lib",
            Path(sys.base_prefix) / "lib",  # libpython for the python backend stub
        ]

    def _ld_path(self) -> str:
        old = os.environ.get("LD_LIBRARY_PATH", "")
        return ":".join([*(str(p) for p in self.libs), *([old] if old else [])])

    def server_env(self, project: Path = ROOT) -> dict[str, str]:
        """tritonserver's environment: its libraries, and a stub Python that sees the venv and the project."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OMP_", "VIRTUAL_ENV"))}
        env["LD_LIBRARY_PATH"] = self._ld_path()
        # the stub's embedded Python is isolated (ignores PYTHON* variables) and starts on the base
        # interpreter's site-packages: the generated model.py files put these two first
        env["PLANFORGE_PROJECT"] = str(project)
        env["PLANFORGE_SITE_PACKAGES"] = str(self.site_packages)
        # torch / transformers for the Pi0 model: the workflow's own environment, searched after this one
        workflow = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
        env["PLANFORGE_WORKFLOW_SITE_PACKAGES"] = os.pathsep.join(workflow)
        return env

    def client_env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": self._ld_path()}

    def versions(self) -> dict[str, str]:
        out = subprocess.run(
            [str(self.python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
        )
        wanted = {"nvidia-pytriton", "numpy", "tritonclient", "onnxruntime", "opencv-python-headless"}
        return {p["name"]: p["version"] for p in json.loads(out.stdout) if p["name"].lower() in wanted}

    def ready(self) -> bool:
        marker = self.root / READY
        return marker.is_file() and marker.read_text().strip() == _requirements_hash()


def _link(env: TritonEnv) -> None:
    """Backend directory, libb64 and the stub's Python home: links into the installed wheels (idempotent)."""
    for d in (env.root / "planforge-libs", env.backend_dir):
        if d.exists():
            shutil.rmtree(d)
    # The server looks for the stub beside libtriton_python.so; the wheel keeps one stub per Python.
    py = env.backend_dir / "python"
    py.mkdir(parents=True, exist_ok=True)
    src = env.pytriton / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (py / name).symlink_to(src / name)
    stub = env.pytriton / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    if not stub.is_dir():
        have = sorted(p.name for p in stub.parent.iterdir())
        raise PlanforgeError(
            f"{stub.parent}: nvidia-pytriton has python backend stubs for Python {', '.join(have)}, not "
            f"{stub.name}; run the workflow with one of those"
        )
    libpython = sysconfig.get_config_var("INSTSONAME") or ""
    places = [Path(sys.base_prefix) / "lib", Path("/usr/lib/x86_64-linux-gnu"), Path("/lib/x86_64-linux-gnu")]
    if not libpython or not any((p / libpython).exists() for p in places):
        raise PlanforgeError(
            f"{sys.base_prefix}: this Python has no shared libpython ({libpython or 'static build'}), which the "
            "Triton python backend stub loads; use a Python built with --enable-shared (python.org, pyenv with "
            "PYTHON_CONFIGURE_OPTS=--enable-shared, Debian's python3)"
        )
    shutil.copy2(stub / "triton_python_backend_stub", py / "triton_python_backend_stub")
    # perf_analyzer needs libb64.so.0d (Debian libb64-0d); the pytriton wheel bundles the same library.
    libs = env.root / "planforge-libs"
    libs.mkdir(exist_ok=True)
    bundled = sorted((env.site_packages / "nvidia_pytriton.libs").glob("libb64-*.so.0d"))
    if not bundled:
        raise PlanforgeError(f"{env.site_packages}: nvidia_pytriton.libs has no libb64; install Debian libb64-0d")
    (libs / "libb64.so.0d").symlink_to(bundled[0])


def _build(env: TritonEnv, log=print) -> None:
    log(f"creating the serving environment {env.root} (numpy<2; once per machine)")
    venv.EnvBuilder(with_pip=True, clear=True).create(env.root)
    cmd = [str(env.python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PlanforgeError(
            f"{env.root}: pip could not install the serving environment ({' | '.join(tail)}); "
            "it needs PyPI once (then works offline)"
        )
    _link(env)
    (env.root / READY).write_text(_requirements_hash() + "\n")


def ensure(root: Path | None = None, log=print) -> TritonEnv:
    """The serving environment at `root`, created (once, under a lock) if missing or outdated."""
    env = TritonEnv(Path(root).resolve() if root else default_dir())
    if env.ready():
        if not env.backend_dir.is_dir():
            _link(env)
        return env
    env.root.parent.mkdir(parents=True, exist_ok=True)
    lock = env.root.parent / f".{env.root.name}.lock"
    with open(lock, "w") as fh, contextlib.ExitStack():
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not env.ready():
            _build(env, log)
    return env


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-dir", type=Path, default=None, help="default: $PLANFORGE_TRITON_ENV or .venv-triton/")
    p.add_argument("--out", type=Path, required=True, help="JSON naming the environment and its versions")
    a = p.parse_args(argv)
    env = ensure(a.env_dir)
    for binary in (env.tritonserver, env.perf_analyzer):
        if not binary.is_file():
            raise PlanforgeError(f"{binary}: missing from the serving environment; delete {env.root} and rerun")
    write_json(
        a.out,
        {
            "root": str(env.root),
            "requirements": list(REQUIREMENTS),
            "requirements_hash": _requirements_hash(),
            "versions": env.versions(),
        },
    )
    print(f"{a.out}: serving environment {env.root}")


if __name__ == "__main__":
    run_cli(main)
