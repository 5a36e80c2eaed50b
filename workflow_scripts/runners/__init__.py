"""Backends: one Runner per backend, all with the same small interface.

A runner runs arrays: `prepare` puts a preprocessed batch where the backend wants it
(device memory, contiguous layout), `infer` runs the model and waits for it to finish,
`to_numpy` brings outputs back. The bench loop times `infer` alone, so "model only" means
the same thing for every backend. Adding a backend is one module and one `BACKENDS.register` call
(here, or in a plugin module named in $PLANFORGE_PLUGINS).
"""

from __future__ import annotations

import importlib
import importlib.util
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workflow_scripts.core.deps import source_file
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import PRECISIONS, Precision
from workflow_scripts.core.precisions import parse as parse_precision
from workflow_scripts.core.registry import Registry, load_plugins
from workflow_scripts.core.runner_facts import RunnerFacts


@dataclass(frozen=True)
class BackendSpec:
    """Everything about a backend that the config, the plan and the summary need, without importing it."""

    module: str  # its runner's module: a name under workflow_scripts.runners, or a full dotted path
    cls: str
    artifact: str  # what it runs: "checkpoint" (the family's torch module), "onnx" or "engine" (TensorRT .plan)
    precisions: tuple[str, ...]
    requires: tuple[str, ...]  # importable modules it needs; absent → reported unavailable
    devices: tuple[str, ...] = ("cpu", "cuda")  # device kinds of the targets it runs on
    cuda_precisions: tuple[str, ...] = ()  # precisions it runs only on a cuda device
    options: dict = field(default_factory=dict)  # targets.<t>.backend_options.<name>: every key, with its default
    missing: str = ""  # what the summary says when they are absent (default: names the modules)
    requires_dist: tuple[str, ...] = ()  # installed distributions it needs (same module, other wheel)

    @property
    def module_path(self) -> str:
        return self.module if "." in self.module else f"workflow_scripts.runners.{self.module}"

    def device_problem(self, device: str, precision: str | Precision) -> str | None:
        """Why this backend cannot run `precision` on `device` ('cpu', 'cuda:0'), or None: the one device rule."""
        kind = device.split(":")[0]
        if kind not in self.devices:
            return f"needs a {' or '.join(self.devices)} device; set the target's device or remove this backend"
        precision = str(precision)
        if precision in self.cuda_precisions and kind != "cuda":
            allowed = [p for p in self.precisions if p not in self.cuda_precisions]
            return f"{precision!r} needs a cuda device; allowed on {kind}: {allowed}"
        return None

    def artifact_variant(self, precision: str | Precision) -> str:
        """Which file of its artifact kind it reads for `precision`: the ONNX variant, or the engine's precision."""
        if self.artifact == "onnx":
            return parse_precision(precision).onnx_variant
        return str(precision)


INT8_QDQ = tuple(p for p in PRECISIONS if PRECISIONS[p].calibration)  # int8_<calibration method>
TORCH_OPTIONS = {
    "channels_last": None,  # None: on for cuda
    "fuse_projections": False,  # true: q/k/v and gate/up projections as one GEMM each (core.fusion)
    "compile_mode": None,  # None: the backend's own mode
    "compile_backend": "inductor",  # eager / aot_eager: the same dynamo graphs without code generation
    "cache_dir": "artifacts/inductor_cache",  # inductor's on-disk caches (as torch-compile-graph's); null: /tmp
}

BACKENDS: Registry[BackendSpec] = Registry("backend")
for _name, _spec in {
    "torch": BackendSpec(
        "torch_runner",
        "TorchRunner",
        "checkpoint",
        ("fp32", "fp16", "bf16"),
        ("torch",),
        cuda_precisions=("fp16",),
        options={"channels_last": None, "fuse_projections": False},
    ),
    "torch-cudagraph": BackendSpec(
        "torch_runner",
        "TorchCudaGraphRunner",
        "checkpoint",
        ("fp32", "fp16", "bf16"),
        ("torch",),
        devices=("cuda",),
        options={"channels_last": None, "fuse_projections": False},
    ),
    "torch-compile": BackendSpec(
        "torch_runner",
        "TorchCompileRunner",
        "checkpoint",
        ("fp32", "fp16"),
        ("torch",),
        cuda_precisions=("fp16",),
        options=TORCH_OPTIONS,
    ),
    "torch-compile-max": BackendSpec(
        "torch_runner",
        "TorchCompileMaxRunner",
        "checkpoint",
        ("fp32", "fp16"),
        ("torch",),
        cuda_precisions=("fp16",),
        options=TORCH_OPTIONS,
    ),
    # weight-only quantization of the family's torch module (torchao's quantize_); pip install planforge[torchao]
    "torchao": BackendSpec(
        "torch_runner",
        "TorchAoRunner",
        "checkpoint",
        ("int8_weight", "int4_weight"),
        ("torch", "torchao"),
        cuda_precisions=("int4_weight",),
        options={
            "channels_last": None,
            "group_size": 128,
            # int4: torchao's packing; tile_packed_to_4d runs aten's tinygemm kernel (no extra package), where
            # torchao's own default (plain) needs the separate mslk kernels package
            "int4_packing_format": "tile_packed_to_4d",
            "int4_fallback": "int8",  # a linear tinygemm cannot take (input width not a multiple of group_size)
            "embeddings": "int8",  # embedding tables int8 per row (none: left in the float dtype)
            "cuda_graph": False,  # true: the quantized forward captured once per input shape and replayed (CUDA)
        },
    ),
    # inductor's kernels captured in a plain CUDA graph (runners/torch_runner.py: TorchCompileGraphRunner)
    "torch-compile-graph": BackendSpec(
        "torch_runner",
        "TorchCompileGraphRunner",
        "checkpoint",
        ("fp32", "fp16", "bf16"),
        ("torch",),
        devices=("cuda",),
        options={
            "channels_last": None,  # None: on (cuda)
            "fuse_projections": False,  # true: q/k/v and gate/up projections as one GEMM each (core.fusion)
            "compile_mode": "default",  # or "max-autotune" (bounded: torch_runner.GRAPH_COMPILE_MODES)
            "inductor_config": {},  # more torch._inductor.config settings, e.g. {max_autotune_conv_backends: ATEN,TRITON}
            "cache_dir": "artifacts/inductor_cache",  # inductor's FX-graph / kernel / autotune caches; null: /tmp
        },
    ),
    "onnxruntime": BackendSpec(
        "ort_runner",
        "OrtRunner",
        "onnx",
        ("fp32", *INT8_QDQ),
        ("onnxruntime",),
        options={"graph_optimization": "all", "providers": ["CPUExecutionProvider"]},
    ),
    "onnxruntime-gpu": BackendSpec(
        "ort_runner",
        "OrtGpuRunner",
        "onnx",
        ("fp32", "fp16", *INT8_QDQ),
        ("onnxruntime",),
        devices=("cuda",),
        requires_dist=("onnxruntime-gpu",),
        options={
            "graph_optimization": "all",
            "execution_providers": ["tensorrt", "cuda", "cpu"],
            "trt_engine_cache_path": "artifacts/ort_trt_cache",
            "workspace_mib": 4096,
            "int8_calibration_table": None,
        },
    ),
    "openvino": BackendSpec(
        "openvino_runner",
        "OpenVinoRunner",
        "onnx",
        ("fp32", *INT8_QDQ),
        ("openvino",),
        devices=("cpu",),
        options={"performance_hint": "LATENCY", "num_streams": None},
    ),
    "tensorrt": BackendSpec(
        "tensorrt_runner",
        "TensorrtRunner",
        "engine",
        ("fp32", "fp16", "int8", "best"),
        ("tensorrt", "torch"),
        devices=("cuda",),
        missing="TensorRT not installed on this machine",
        options={"cuda_graph": False},
    ),
}.items():
    BACKENDS.register(_name, _spec)


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


# run by another interpreter: prints the modules and distributions of argv that it lacks, as JSON
_PROBE = """
import importlib.util, json, sys
from importlib import metadata
def installed(d):
    try:
        metadata.version(d)
        return True
    except metadata.PackageNotFoundError:
        return False
modules, dists = sys.argv[1].split(","), sys.argv[2].split(",")
print(json.dumps({"modules": [m for m in modules if m and importlib.util.find_spec(m) is None],
                  "dists": [d for d in dists if d and not installed(d)], "version": sys.version.split()[0]}))
"""


def backend_available_in(python: str, name: str) -> tuple[bool, str]:
    """Whether `name`'s modules are installed for another interpreter (a target's `python`), and why not."""
    import json
    import shutil
    import subprocess

    spec = BACKENDS[name]
    exe = shutil.which(python)
    if exe is None:
        return False, f"{name}: interpreter {python!r} not found; fix targets.<target>.python"
    try:
        out = subprocess.run(
            [exe, "-c", _PROBE, ",".join(spec.requires), ",".join(spec.requires_dist)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = json.loads(out.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return False, f"{name}: interpreter {python!r} could not be asked what it has ({exc})"
    if found["modules"]:
        what = spec.missing or "not installed on this machine"
        return (
            False,
            f"{name}: {what} (missing Python module {', '.join(found['modules'])} for Python {found['version']})",
        )
    if found["dists"]:
        return (
            False,
            f"{name}: not installed for Python {found['version']} (missing package {', '.join(found['dists'])})",
        )
    return True, ""


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


def runner_file(name: str) -> str:
    """Source file of backend `name`'s runner (relative to the repository when inside it)."""
    return source_file(BACKENDS[name].module_path)


def get_runner_class(name: str) -> type[Runner]:
    spec = BACKENDS[name]
    return getattr(importlib.import_module(spec.module_path), spec.cls)


def by_name(batch: dict[str, np.ndarray], types: dict, source) -> dict[str, np.ndarray]:
    """Named input arrays (Pi0) for a graph that declares `types` (name → numpy type): each in its type, in order;
    one line naming the file if the graph needs an input the batch lacks."""
    missing = sorted(set(types) - set(batch))
    if missing:
        raise PlanforgeError(f"{source}: the model needs inputs {missing}; got {sorted(batch)}")
    return {n: np.ascontiguousarray(batch[n], dtype=t) for n, t in types.items()}


class Runner:
    """Base class: subclasses set `backend` and implement the four methods."""

    backend = "base"

    def __init__(
        self,
        model: Any,
        precision: Precision | str,
        device: str = "cpu",
        threads: int | None = None,
        options: dict | None = None,
    ) -> None:
        self.precision = parse_precision(precision)  # the parsed precision (a name is parsed here, once)
        self.device = device
        self.threads = threads
        # every option the backend declares, with its registry default unless given
        declared = BACKENDS[self.backend].options if self.backend in BACKENDS else {}
        self.options = {**declared, **(options or {})}

    def prepare(self, batch: np.ndarray | dict[str, np.ndarray]) -> Any:
        """Put a float32 NCHW batch (or named input arrays) where `infer` reads it (not timed as model time)."""
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

    def facts(self) -> RunnerFacts:
        """How this runner holds and runs its model, for a family that drives the model itself (a tracker between
        frames): the same object on every call, so what a family builds on it is built once per runner."""
        if "_facts" not in self.__dict__:
            self._facts = self.build_facts()
        return self._facts

    def build_facts(self) -> RunnerFacts:
        """`facts` as first built: the backend, precision, device and options; a runner that holds a torch module or
        opens ONNX graphs adds how."""
        return RunnerFacts(self.backend, self.precision, self.device, options=dict(self.options))

    # Runners that time their work on the device (CUDA events) append one ms value per `infer` here;
    # the bench loop clears it after warmup and reports it beside the host timer.
    device_times_ms: list[float] | None = None

    def phase_times_ms(self) -> dict[str, list[float]] | None:
        """Per-phase ms of each call where the model records them (Pi0: prefix, denoise); the bench clears them."""
        return None

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.to_numpy(self.infer(self.prepare(batch)))


load_plugins()  # last: a plugin module imports the names above
