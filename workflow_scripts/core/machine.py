"""What machine this is: its GPU (or Jetson module) and, on a Jetson, its power mode.

Cheap enough to run while Snakemake builds its DAG (an environment variable, a file read, at most one
`nvidia-smi` and one `nvpmodel` call, each cached). Targets (`targets.<t>.machine`), TensorRT engines and
power samplers all ask here, so none of them imports another.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path


def env_value(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@functools.cache
def gpu_name() -> str:
    """This machine's GPU: $PLANFORGE_GPU_NAME, the Jetson module (device-tree model), else nvidia-smi.

    On a Jetson the module name comes first: JetPack's nvidia-smi says "Orin (nvgpu)" on every Orin,
    but an engine built on an AGX Orin is not the one to time on an Orin Nano.
    """
    override = env_value("PLANFORGE_GPU_NAME")
    if override:
        return override
    try:  # Jetson: "NVIDIA Jetson AGX Orin Developer Kit"
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
        if "jetson" in model.lower():
            return model
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown"


def matches(pattern: str, name: str) -> bool:
    """Whether a machine pattern (a regex, case-insensitive) matches a GPU or Jetson module name."""
    return re.search(pattern, name, re.IGNORECASE) is not None


def runs_here(machine: str | None) -> bool:
    """Whether a target meant for `machine` (a pattern for gpu_name()) runs on this one."""
    return machine is None or matches(machine, gpu_name())


def power_mode_from_nvpmodel(text: str) -> str | None:
    """'MAXN' from `nvpmodel -q` output ('NV Power Mode: MAXN' then the mode id)."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    return m.group(1) if m else None


@functools.cache
def power_mode() -> str | None:
    """The Jetson power mode (nvpmodel), or None off a Jetson."""
    override = env_value("PLANFORGE_POWER_MODE")
    if override:
        return override
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return power_mode_from_nvpmodel(out.stdout + out.stderr)
