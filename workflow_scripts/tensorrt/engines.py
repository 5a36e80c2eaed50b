"""TensorRT engines without importing TensorRT: what this machine has, what an engine is built from,
the trtexec command line, and the check that refuses an engine built elsewhere.

Everything here is cheap enough to run while Snakemake builds its DAG (a `find_spec`, a `which`,
at most one `trtexec --version` and one `nvidia-smi`/`nvpmodel` call, each cached), and nothing
here needs a GPU, so it is unit-tested on machines without one.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from workflow_scripts.core.io import PlanforgeError, read_json
from workflow_scripts.core.machine import env_value, gpu_name, power_mode
from workflow_scripts.core.precisions import TENSORRT_SCHEME, Precision, calibrated
from workflow_scripts.core.precisions import parse as parse_precision

# JetPack installs trtexec here and does not put it on PATH.
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
NOT_INSTALLED = "TensorRT not installed on this machine"


@functools.cache
def find_trtexec(configured: str | None = None) -> str | None:
    """trtexec to use: $PLANFORGE_TRTEXEC, the config's `trtexec`, PATH, then JetPack's location."""
    for candidate in (env_value("PLANFORGE_TRTEXEC"), configured):
        if candidate:
            found = shutil.which(candidate)
            if not found:
                raise PlanforgeError(f"trtexec {candidate!r}: not an executable file; fix PLANFORGE_TRTEXEC or config")
            return found
    return shutil.which("trtexec") or (JETPACK_TRTEXEC if os.access(JETPACK_TRTEXEC, os.X_OK) else None)


def python_tensorrt() -> bool:
    """Whether `import tensorrt` would find a module (nothing is imported)."""
    return importlib.util.find_spec("tensorrt") is not None


def builder(configured_trtexec: str | None = None) -> str | None:
    """'python' (TensorRT Python API), 'trtexec', or None where neither is installed."""
    if env_value("PLANFORGE_TRTEXEC") is None and python_tensorrt():
        return "python"
    return "trtexec" if find_trtexec(configured_trtexec) else None


def unavailable_reason(configured_trtexec: str | None = None) -> str:
    return (
        f"{NOT_INSTALLED} (no Python module tensorrt, no trtexec on PATH, in $PLANFORGE_TRTEXEC "
        f"or at {JETPACK_TRTEXEC}); engines are not built and not timed"
    )


def version_from_banner(text: str) -> str | None:
    """'10.3.0' from trtexec's banner '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] …'."""
    m = re.search(r"\[TensorRT v(\d+)\]", text)
    if not m:
        return None
    n = int(m.group(1))
    if n >= 100000:  # TensorRT ≥ 10: MMmmpp
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"  # TensorRT 8: Mmpp


def _three(version: str) -> str:
    """'10.3.0' from '10.3.0.26': the build number is not in trtexec's banner, so it is not compared."""
    return ".".join(version.split(".")[:3])


@functools.cache
def tensorrt_version(configured_trtexec: str | None = None) -> str | None:
    """TensorRT version of this machine: the Python package's, else trtexec's banner."""
    if env_value("PLANFORGE_TRTEXEC") is None and python_tensorrt():
        from importlib import metadata

        for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs"):
            try:
                return _three(metadata.version(dist))
            except metadata.PackageNotFoundError:
                continue
        import tensorrt  # JetPack's apt bindings carry no pip metadata

        return _three(tensorrt.__version__)
    exe = find_trtexec(configured_trtexec)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PlanforgeError(f"{exe}: cannot run it ({exc})") from None
    version = version_from_banner(out.stdout + out.stderr)
    if version is None:
        raise PlanforgeError(f"{exe}: `--version` printed no '[TensorRT vNNNN]' banner; is it trtexec?")
    return version


@functools.cache
def tensorrt_version_in(python: str) -> str | None:
    """The TensorRT version another interpreter (a target's `python`) imports, or None where it has no bindings."""
    exe = shutil.which(python)
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-c", "import tensorrt; print(tensorrt.__version__)"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _three(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def machine_identity(
    configured_trtexec: str | None = None, jetson: bool = False, python: str | None = None
) -> dict[str, str | None]:
    """What an engine is tied to: GPU, TensorRT version and (Jetson) power mode.

    `python`: the target's interpreter; its TensorRT bindings' version is the one its jobs build and run with.
    """
    version = tensorrt_version_in(python) if python and env_value("PLANFORGE_TRTEXEC") is None else None
    return {
        "gpu": gpu_name(),
        "tensorrt_version": version or tensorrt_version(configured_trtexec),
        "power_mode": power_mode() if jetson else None,
    }


def onnx_input(model: str, precision: Precision | str, trt: dict) -> str:
    """The ONNX an engine is built from: the QDQ model for explicit INT8, else the FP32 export."""
    if parse_precision(precision).int8_engine and trt["int8"] == "explicit":
        return f"artifacts/onnx/{model}/{calibrated(trt['calibration']).qdq_variant(TENSORRT_SCHEME)}.onnx"
    return f"artifacts/onnx/{model}/fp32.onnx"


def calibration_cache(model: str, precision: Precision | str, trt: dict) -> str | None:
    """The calibration cache an implicit-INT8 engine reads, else None."""
    if parse_precision(precision).int8_engine and trt["int8"] == "implicit":
        return f"artifacts/calib/{model}/{trt['calibration']}.cache"
    return None


def engine_settings(
    model: str,
    precision: Precision | str,
    batch: int,
    imgsz: int,
    input_name: str,
    trt: dict,
    identity: dict[str, str | None],
) -> dict[str, Any]:
    """Everything that changes an engine (the engine rule's params; the sidecar repeats it).

    `input_name` is the model's input tensor, as its family declares it (YOLO `images`, D-FINE `pixel_values`).
    """
    precision = parse_precision(precision)
    shape = [batch, 3, imgsz, imgsz]
    low = 1 if trt["batch_profile"] == "dynamic" else batch
    return {
        "precision": precision.name,
        "input": input_name,
        "shapes": {"min": [low, *shape[1:]], "opt": shape, "max": shape},
        "workspace_mib": trt["workspace_mib"],
        "builder_optimization_level": trt["builder_optimization_level"],
        "dla_core": trt["dla_core"],
        "gpu_fallback": trt["gpu_fallback"] if trt["dla_core"] is not None else None,
        "int8": trt["int8"] if precision.int8_engine else None,
        "calibration_cache": calibration_cache(model, precision, trt),
        "extra_flags": list(trt["extra_flags"]),
        **identity,
    }


def _shape(dims: list[int]) -> str:
    return "x".join(str(d) for d in dims)


def trtexec_command(
    exe: str, settings: dict, onnx: str | Path, engine: str | Path, timing_cache: str | Path | None
) -> list[str]:
    """The trtexec command line that builds `engine` with `settings` (TensorRT 10 flag names; the precision's from
    `Precision.tensorrt`, the table the Python API builder reads too)."""
    name = settings["input"]
    cmd = [
        exe,
        f"--onnx={onnx}",
        f"--saveEngine={engine}",
        *parse_precision(settings["precision"]).tensorrt.trtexec,
        f"--minShapes={name}:{_shape(settings['shapes']['min'])}",
        f"--optShapes={name}:{_shape(settings['shapes']['opt'])}",
        f"--maxShapes={name}:{_shape(settings['shapes']['max'])}",
        f"--memPoolSize=workspace:{settings['workspace_mib']}M",
        f"--builderOptimizationLevel={settings['builder_optimization_level']}",
    ]
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if settings["dla_core"] is not None:
        cmd.append(f"--useDLACore={settings['dla_core']}")
        if settings["gpu_fallback"]:
            cmd.append("--allowGPUFallback")
    if settings["calibration_cache"]:
        cmd.append(f"--calib={settings['calibration_cache']}")
    cmd += settings["extra_flags"]
    cmd.append("--skipInference")  # build only; timing is the bench rule's job
    return cmd


def sidecar_path(engine: str | Path) -> Path:
    return Path(engine).with_suffix(".json")


def rebuild_command(engine: str | Path) -> str:
    return f"snakemake --cores 1 --force {engine}"


def check_engine(engine: str | Path, identity: dict[str, str | None]) -> dict:
    """The engine's sidecar, or a one-line error when it was built for another GPU or TensorRT."""
    side = sidecar_path(engine)
    if not Path(engine).is_file():
        raise PlanforgeError(f"{engine}: engine not found; build it: {rebuild_command(engine)}")
    meta = read_json(side)
    built = {k: meta.get("settings", {}).get(k) for k in ("gpu", "tensorrt_version")}
    here = {k: identity.get(k) for k in ("gpu", "tensorrt_version")}
    if built != here:
        raise PlanforgeError(
            f"{engine}: built for GPU {built['gpu']!r} with TensorRT {built['tensorrt_version']}, but this machine "
            f"has GPU {here['gpu']!r} with TensorRT {here['tensorrt_version']}; rebuild it here: "
            f"{rebuild_command(engine)}"
        )
    return meta


_PLACED = re.compile(r"\[(Dla|Gpu)Layer\]")


def dla_layers(build_log: str) -> dict[str, Any]:
    """How many layers TensorRT placed on DLA and on the GPU, from the build log's 'Layers Running on DLA/GPU'
    lists (printed at INFO level by trtexec and the Python API). A DLA entry is one `{ForeignNode[first...last]}`:
    a run of consecutive ONNX layers fused into one DLA subgraph."""
    placed = _PLACED.findall(build_log)
    if "Layers Running on DLA" not in build_log:
        return {"dla": None, "gpu": None, "source": "build log", "reason": "the build log lists no layer placement"}
    return {"dla": placed.count("Dla"), "gpu": placed.count("Gpu"), "source": "build log", "reason": None}
