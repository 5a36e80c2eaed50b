"""What machine and software a number was measured on."""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import subprocess
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


@functools.cache
def cpu_int8_instructions() -> str:
    """The INT8 dot-product instruction sets this CPU reports ('' where none, or unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return ",".join(f for f in INT8_INSTRUCTIONS if f in flags)


def device_info(device: str) -> dict[str, str | None]:
    """Device and driver names for `device` ('cpu', 'cuda', 'cuda:0')."""
    info = {
        "device": device,
        "cpu": cpu_name(),
        "cpu_int8_instructions": cpu_int8_instructions(),
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


@functools.cache
def git_commit() -> str | None:
    """HEAD of the repository the code runs from, with '-dirty' if tracked files changed."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment(device: str) -> dict:
    """Device, libraries, git commit and a UTC timestamp for a result JSON."""
    return {
        **device_info(device),
        "platform": platform.platform(),
        "libraries": library_versions(),
        "git_commit": git_commit(),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def check_target_device(target: str, device: str, gpu_pin: str | None) -> None:
    """Refuse to time a target on the wrong hardware: no GPU for a cuda target, or another GPU than pinned."""
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
    if gpu_pin and gpu_pin.lower() not in name.lower():
        raise PlanforgeError(
            f"target {target}: pinned to GPU '{gpu_pin}' (targets.{target}.gpu) but this machine's GPU is "
            f"'{name}'; run it on a {gpu_pin} or use the target that matches this GPU"
        )
