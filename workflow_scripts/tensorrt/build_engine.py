"""Build one TensorRT engine (.plan) and its sidecar JSON.

The TensorRT 10 Python API builds it where `import tensorrt` works; else trtexec does, with the
same settings (precision, one optimisation profile for the batch, workspace limit, builder
optimisation level, the target's timing cache, DLA core with GPU fallback, INT8 from a QDQ model
or a calibration cache). The sidecar records the settings, the builder, its log and the build time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from workflow_scripts.core.envinfo import interpreter
from workflow_scripts.core.io import PlanforgeError, atomic_path, run_cli, write_json
from workflow_scripts.core.precisions import parse as parse_precision
from workflow_scripts.tensorrt import engines


def _check_inputs(onnx: Path, settings: dict) -> None:
    if not onnx.is_file():
        raise PlanforgeError(f"{onnx}: ONNX model not found; run the rule that makes it")
    cache = settings.get("calibration_cache")
    if cache and not Path(cache).is_file():
        raise PlanforgeError(f"{cache}: calibration cache not found; run the calibration rule for this model")


def build_with_trtexec(
    exe: str, settings: dict, onnx: Path, engine: Path, timing_cache: Path | None
) -> tuple[list[str], str]:
    """Run trtexec; return its command and its output. Fails with trtexec's last error line."""
    with atomic_path(engine) as tmp:
        cmd = engines.trtexec_command(exe, settings, onnx, tmp, timing_cache)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            errors = [ln for ln in output.splitlines() if "[E]" in ln or "FAILED" in ln or "rror" in ln]
            last = (errors or output.strip().splitlines() or ["no output"])[-1].strip()
            raise PlanforgeError(f"{engine}: trtexec failed ({proc.returncode}): {last}")
    return cmd, output


def cache_calibrator(trt: Any, cache: Path) -> Any:
    """An IInt8EntropyCalibrator2 that serves an existing calibration cache and never asks for batches."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # the cache holds every scale, so no data is needed
            return None

        def read_calibration_cache(self) -> bytes:
            return cache.read_bytes()

        def write_calibration_cache(self, cache_bytes) -> None:
            return None

    return CacheCalibrator()


def build_with_python_api(
    trt: Any, settings: dict, onnx: Path, engine: Path, timing_cache: Path | None
) -> tuple[list[str], str]:
    """Build with the TensorRT 10 Python API (`trt` is the imported module); return the calls and the log."""
    if settings["extra_flags"]:
        raise PlanforgeError(
            f"{engine}: tensorrt.extra_flags {settings['extra_flags']} are trtexec flags the Python API builder "
            "cannot apply; build with trtexec (set PLANFORGE_TRTEXEC) or remove them"
        )
    lines: list[str] = []

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            lines.append(f"[{severity}] {msg}")

    logger = Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise PlanforgeError(f"{onnx}: TensorRT cannot parse it ({'; '.join(errors) or 'no detail'})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_mib"] << 20)
    config.builder_optimization_level = settings["builder_optimization_level"]
    flags = parse_precision(settings["precision"]).tensorrt  # the same table gives trtexec its flags
    for flag in flags.builder:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if flags.int8:
        if settings["calibration_cache"]:
            config.int8_calibrator = cache_calibrator(trt, Path(settings["calibration_cache"]))
    if settings["dla_core"] is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings["dla_core"])
        if settings["gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    shapes = settings["shapes"]
    profile.set_shape(settings["input"], shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = [ln for ln in lines if "ERROR" in ln.upper()]
        raise PlanforgeError(f"{engine}: TensorRT could not build the engine ({(errors or ['see the log'])[-1]})")
    with atomic_path(engine) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    return ["tensorrt-python-api", f"tensorrt {trt.__version__}"], "\n".join(lines)


def build(
    onnx: Path, settings: dict, engine: Path, sidecar: Path, timing_cache: Path | None, trtexec: str | None = None
) -> dict:
    """Build `engine` from `onnx` and write `sidecar`; refuse when this machine is not the one in `settings`."""
    _check_inputs(onnx, settings)
    kind = engines.builder(trtexec)
    if kind is None:
        raise PlanforgeError(f"{engine}: {engines.unavailable_reason(trtexec)}")
    here = engines.machine_identity(trtexec, jetson=settings.get("power_mode") is not None)
    for key in ("gpu", "tensorrt_version", "power_mode"):
        if settings.get(key) != here[key]:
            raise PlanforgeError(
                f"{engine}: the workflow planned it for {key} {settings.get(key)!r} but this machine has "
                f"{here[key]!r}; rerun snakemake here so the plan matches the machine"
            )
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if kind == "python":
        import tensorrt as trt

        command, log = build_with_python_api(trt, settings, onnx, engine, timing_cache)
    else:
        command, log = build_with_trtexec(engines.find_trtexec(trtexec), settings, onnx, engine, timing_cache)
    seconds = time.perf_counter() - t0
    record = {
        "engine": str(engine),
        "onnx": str(onnx),
        "settings": settings,
        "builder": kind,
        "command": command,
        "timing_cache": str(timing_cache) if timing_cache else None,
        "build_seconds": round(seconds, 3),
        "engine_bytes": engine.stat().st_size,
        # DLA engines: how many layers (DLA: fused subgraphs) run on DLA and how many fell back to the GPU
        "dla_layers": engines.dla_layers(log) if settings.get("dla_core") is not None else None,
        "interpreter": interpreter(),
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (3.10: no dt.UTC)
        "build_log": log,
    }
    write_json(sidecar, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, required=True, help="ONNX model (FP32 export or QDQ INT8)")
    p.add_argument("--settings", required=True, help="JSON from engines.engine_settings (the rule's params)")
    p.add_argument("--engine", type=Path, required=True, help="output .plan")
    p.add_argument("--sidecar", type=Path, required=True, help="output .json beside it")
    p.add_argument("--timing-cache", type=Path, default=None, help="the target's timing cache (read and updated)")
    p.add_argument("--trtexec", default=None, help="trtexec to use (else $PLANFORGE_TRTEXEC, PATH, JetPack's)")
    a = p.parse_args(argv)
    try:
        settings = json.loads(a.settings)
    except json.JSONDecodeError as exc:
        raise PlanforgeError(f"--settings: not valid JSON ({exc})") from None
    r = build(a.onnx, settings, a.engine, a.sidecar, a.timing_cache, a.trtexec)
    print(r["build_log"])
    print(f"{a.engine}: built by {r['builder']} in {r['build_seconds']:.1f} s ({r['engine_bytes']} bytes)")
    if r["dla_layers"] and r["dla_layers"]["dla"] is not None:
        print(f"{a.engine}: {r['dla_layers']['dla']} layers on DLA, {r['dla_layers']['gpu']} on the GPU")


if __name__ == "__main__":
    run_cli(main)
