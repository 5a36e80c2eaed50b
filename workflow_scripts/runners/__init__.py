"""Backends: one Runner per backend, all with the same small interface.

A runner runs arrays: `prepare` puts a preprocessed batch where the backend wants it
(device memory, contiguous layout), `infer` runs the model and waits for it to finish,
`to_numpy` brings outputs back. The bench loop times `infer` alone, so "model only" means
the same thing for every backend. Adding a backend is one module here and one entry in
BACKENDS.
"""

from __future__ import annotations

import importlib
import importlib.util
import resource
import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BackendSpec:
    """What the DAG must know about a backend without importing it."""

    module: str  # workflow_scripts.runners.<module>
    cls: str
    artifact: str  # which artifact it runs: "checkpoint" (torch module), "onnx" or "engine" (TensorRT .plan)
    precisions: tuple[str, ...]
    requires: tuple[str, ...]  # importable modules it needs; absent → reported unavailable
    needs_cuda: bool = False  # only meaningful on a CUDA target
    missing: str = ""  # what the summary says when they are absent (default: names the modules)
    requires_dist: tuple[str, ...] = ()  # installed distributions it needs (same module, other wheel)


INT8_PRECISIONS = ("int8_minmax", "int8_entropy", "int8_percentile")  # int8_<calibration method>

BACKENDS: dict[str, BackendSpec] = {
    "torch": BackendSpec("torch_runner", "TorchRunner", "checkpoint", ("fp32", "fp16"), ("torch",)),
    "torch-cudagraph": BackendSpec(
        "torch_runner", "TorchCudaGraphRunner", "checkpoint", ("fp32", "fp16"), ("torch",), needs_cuda=True
    ),
    "torch-compile": BackendSpec("torch_runner", "TorchCompileRunner", "checkpoint", ("fp32", "fp16"), ("torch",)),
    "torch-compile-max": BackendSpec(
        "torch_runner", "TorchCompileMaxRunner", "checkpoint", ("fp32", "fp16"), ("torch",)
    ),
    "onnxruntime": BackendSpec("ort_runner", "OrtRunner", "onnx", ("fp32", *INT8_PRECISIONS), ("onnxruntime",)),
    "onnxruntime-gpu": BackendSpec(
        "ort_runner",
        "OrtGpuRunner",
        "onnx",
        ("fp32", "fp16", *INT8_PRECISIONS),
        ("onnxruntime",),
        needs_cuda=True,
        requires_dist=("onnxruntime-gpu",),
    ),
    "openvino": BackendSpec("openvino_runner", "OpenVinoRunner", "onnx", ("fp32", *INT8_PRECISIONS), ("openvino",)),
    "tensorrt": BackendSpec(
        "tensorrt_runner",
        "TensorrtRunner",
        "engine",
        ("fp32", "fp16", "int8", "best"),
        ("tensorrt", "torch"),
        missing="TensorRT not installed on this machine",
    ),
}


def backend_available(name: str) -> tuple[bool, str]:
    """Whether `name`'s modules are installed here (cheap: nothing is imported), and why not."""
    spec = BACKENDS[name]
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        what = spec.missing or "not installed on this machine"
        return False, f"{name}: {what} (missing Python module {', '.join(missing)})"
    absent = [d for d in spec.requires_dist if not _installed(d)]
    if absent:
        return False, f"{name}: not installed on this machine (missing package {', '.join(absent)})"
    return True, ""


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


def runner_file(name: str) -> str:
    """Source file of backend `name`'s runner, relative to the repository."""
    return f"workflow_scripts/runners/{BACKENDS[name].module}.py"


def get_runner_class(name: str) -> type[Runner]:
    spec = BACKENDS[name]
    return getattr(importlib.import_module(f"workflow_scripts.runners.{spec.module}"), spec.cls)


class Runner:
    """Base class: subclasses set `backend` and implement the four methods."""

    backend = "base"

    def __init__(
        self, model: Any, precision: str, device: str = "cpu", threads: int | None = None, options: dict | None = None
    ) -> None:
        self.precision = precision
        self.device = device
        self.threads = threads
        self.options = dict(options or {})

    def prepare(self, batch: np.ndarray) -> Any:
        """Put a float32 NCHW batch where `infer` reads it (not timed as model time)."""
        raise NotImplementedError

    def infer(self, prepared: Any) -> Any:
        """Run the model once on a prepared batch and return when the result is ready."""
        raise NotImplementedError

    def to_numpy(self, outputs: Any) -> list[np.ndarray]:
        """Outputs as host float32 arrays, in the model's output order."""
        raise NotImplementedError

    def setup(self, prepared: Any) -> None:
        """One-off work before warmup (compiling, graph capture); recorded apart in `setup_seconds`."""

    setup_seconds: dict[str, float] = {}

    def timed_infer(self, prepared: Any) -> tuple[Any, float]:
        """`infer` and the seconds it took (host clock; GPU runners use device events)."""
        t0 = time.perf_counter()
        out = self.infer(prepared)
        return out, time.perf_counter() - t0

    def memory(self) -> dict[str, int | None]:
        """Peak memory: this process's resident set, and the GPU's where the runner has one."""
        return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_gpu_bytes": None}

    def versions(self) -> dict[str, str]:
        """Library versions that determine this runner's numbers."""
        return {}

    # Runners that time their work on the device (CUDA events) append one ms value per `infer` here;
    # the bench loop clears it after warmup and reports it beside the host timer.
    device_times_ms: list[float] | None = None

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.to_numpy(self.infer(self.prepare(batch)))
