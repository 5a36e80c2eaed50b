"""What machine and software a number was measured on."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

LIBRARIES = (
    "numpy",
    "torch",
    "torchvision",
    "ultralytics",
    "onnx",
    "onnxruntime",
    "openvino",
    "onnxsim",
    "onnxslim",
    "pycocotools",
    "snakemake",
)


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU instructions that make INT8 matrix products faster than FP32 (without them, INT8 kernels
# widen to 16 bits first and are often slower than FP32)
INT8_INSTRUCTIONS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


# the vector instruction sets that decide how INT8 and FP32 kernels run (x86: SSE4.2 … AMX; ARM: NEON, dotprod)
VECTOR_INSTRUCTIONS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)


def cpu_int8_instructions() -> str:
    """The INT8 dot-product instruction sets this CPU reports ('' where none, or unknown)."""
    return ",".join(f for f in INT8_INSTRUCTIONS if f in _cpu_flags())


def cpu_vector_instructions() -> str:
    """The vector instruction sets of VECTOR_INSTRUCTIONS this CPU reports, comma-separated ('' where unknown)."""
    return ",".join(f for f in VECTOR_INSTRUCTIONS if f in _cpu_flags())


def device_info(device: str) -> dict[str, str | None]:
    """Device and driver names for `device` ('cpu', 'cuda', 'cuda:0')."""
    info = {
        "device": device,
        "cpu": cpu_name(),
        "cpu_int8_instructions": cpu_int8_instructions(),
        "cpu_vector_instructions": cpu_vector_instructions(),
        "cpu_count": str(os.cpu_count()),
        "gpu": None,
        "driver": None,
    }
    if device.startswith("cuda"):
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
        except Exception:  # a machine without a driver still gets its JSON
            pass
    return info


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


# The project's code, for the content hash that stands in for a commit outside its own checkout
CODE_FILES = ("workflow_scripts/**/*.py", "Snakefile", "rules/*.smk", "config/schema.yaml")


def project_root() -> Path:
    """The directory holding workflow_scripts/ (the project this module belongs to)."""
    here = Path(__file__).resolve()
    return next(p for p in here.parents if (p / "workflow_scripts").is_dir())


def _git(root: Path, *args: str) -> str | None:
    """A git command's output in `root`, or None (no git, not a checkout, an error)."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_hash(root: Path) -> str:
    """sha256 over the project's code files (CODE_FILES), by relative path in sorted order."""
    files = sorted({f for pattern in CODE_FILES for f in root.glob(pattern) if f.is_file()})
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


@functools.cache
def code_version(root: Path | None = None) -> dict[str, str]:
    """Which code made a number: {"kind": "git", "value": HEAD, '-dirty' if tracked files changed} when the
    project root is the top level of a git checkout; else {"kind": "content-hash", "value": code_hash(root)}.

    A copy of the project that is not a checkout, or lies inside another repository, must not report
    that repository's commit: git answers from the nearest enclosing checkout, so its top level is checked.
    """
    root = Path(root or project_root()).resolve()
    top = _git(root, "rev-parse", "--show-toplevel")
    if top and Path(top).resolve() == root:
        head = _git(root, "rev-parse", "HEAD")
        if head:
            dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
            return {"kind": "git", "value": head + ("-dirty" if dirty else "")}
    return {"kind": "content-hash", "value": code_hash(root)}


def git_commit() -> str | None:
    """HEAD of the project's own checkout (with '-dirty' if tracked files changed); None outside one."""
    version = code_version()
    return version["value"] if version["kind"] == "git" else None


def interpreter() -> dict[str, str]:
    """The Python that ran this job (a target's `python` may differ from Snakemake's)."""
    return {"executable": sys.executable, "version": platform.python_version()}


def environment(device: str) -> dict:
    """Device, libraries, the interpreter, code version (git commit, or a content hash outside a checkout) and a UTC
    timestamp."""
    return {
        **device_info(device),
        "interpreter": interpreter(),
        "platform": platform.platform(),
        "libraries": library_versions(),
        "git_commit": git_commit(),
        "code_version": dict(code_version()),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (3.10: no dt.UTC)
    }


def check_target_device(target: str, device: str, gpu_pin: str | None) -> None:
    """Refuse to time a target on the wrong hardware: no GPU for a cuda target, or another GPU than pinned."""
    from workflow_scripts.core import machine
    from workflow_scripts.core.io import PlanforgeError

    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise PlanforgeError(
            f"target {target}: device {device} but torch sees no CUDA GPU here; run it on its GPU machine "
            f"(e.g. --profile profiles/server) or drop the target"
        )
    name = torch.cuda.get_device_name(torch.device(device))
    if gpu_pin and not machine.matches(gpu_pin, name):  # a regex (config.gpu_pattern): "H100", "H100|H200"
        raise PlanforgeError(
            f"target {target}: pinned to GPU '{gpu_pin}' (targets.{target}.gpu) but this machine's GPU is "
            f"'{name}'; run it on a {gpu_pin} or use the target that matches this GPU"
        )


@contextlib.contextmanager
def transformers_checks_off():
    """transformers' shape checks off, through their documented production switch TRANSFORMERS_DISABLE_TORCH_CHECK=1.

    `torch_compilable_check` reads a tensor's value (`torch._check_tensor_all`, a device-to-host
    `.item()`): it breaks a CUDA graph capture, and under torch.compile it is a graph break that
    splits D-FINE's forward into a dozen graphs. The eager forward before capture / compile has run them.
    """
    key = "TRANSFORMERS_DISABLE_TORCH_CHECK"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
