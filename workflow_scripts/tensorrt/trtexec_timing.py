"""Timing an engine with trtexec where the TensorRT Python bindings are missing (the trtexec timing path).

`trtexec --loadEngine` runs the engine with the bench settings (warm-up, at least `iterations` inferences
and `min_seconds`, `--useCudaGraph` where the target asks for it, the DLA core it was built for) and
exports its per-inference times (`--exportTimes`) and per-layer profile (`--exportProfile`), which
trtexec_report.py parses. The timer is trtexec's GPU compute time (`computeMs`: the engine's enqueue on the
GPU, no host-device copies), read on the same statistics and stability criteria as every other bench row.

The power sampler runs from trtexec's "Starting inference" line to the next line it prints (its report,
after the warm-up and the timed inferences): the GPU is busy throughout, so the mean power is that of the
loop, and the energy is that mean power times the timed span.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from workflow_scripts.core.io import PlanforgeError, read_json
from workflow_scripts.core.load import GpuProbe, LoadProbe, contention_verdict, loop_verdict, wait_for_quiet
from workflow_scripts.core.metrics import stability_verdict
from workflow_scripts.power import get_sampler
from workflow_scripts.tensorrt import engines
from workflow_scripts.tensorrt.trtexec_report import parse_profile, parse_times

TIMER = (
    "trtexec's GPU compute time (computeMs of --exportTimes: the engine on the GPU, no host-device copies, no "
    "pre/post-processing), one record per inference after trtexec's time-based warm-up (--warmUp ms)"
)
STARTED = "Starting inference"  # trtexec prints it before the warm-up; the report follows the timed run
_WARMUP_DONE = re.compile(r"Warmup completed (\d+) queries over (\d+(?:\.\d+)?) ms")


def timing_command(
    exe: str,
    engine: Path,
    sidecar: dict,
    batch: int,
    imgsz: int,
    warmup_ms: int,
    iterations: int,
    duration_s: float,
    cuda_graph: bool,
    times: Path,
    profile: Path,
) -> list[str]:
    """The trtexec command that times `engine` at `batch` (TensorRT 10 flag names)."""
    settings = sidecar["settings"]
    cmd = [
        exe,
        f"--loadEngine={engine}",
        f"--shapes={settings['input']}:{batch}x3x{imgsz}x{imgsz}",
        f"--warmUp={warmup_ms}",
        f"--iterations={iterations}",
        f"--duration={duration_s:g}",
        f"--exportTimes={times}",
        f"--exportProfile={profile}",
        "--separateProfileRun",  # the per-layer profile in its own run: profiling never slows the timed one
    ]
    if cuda_graph:
        cmd.append("--useCudaGraph")
    if settings.get("dla_core") is not None:
        cmd.append(f"--useDLACore={settings['dla_core']}")
    return cmd


def run_timed(cmd: list[str], sampler: Any) -> tuple[str, float, float]:
    """Run trtexec with `sampler` beside its inference; its output and the sampler's start and stop times."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    started = stopped = 0.0
    sampling = False
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if sampling:
                sampler.stop()
                stopped, sampling = time.monotonic(), False
            elif STARTED in line and not started:
                sampler.start()
                started, sampling = time.monotonic(), True
    finally:
        if sampling:
            sampler.stop()
            stopped = time.monotonic()
        proc.wait()
    output = "".join(lines)
    if proc.returncode == 0 and not started:
        raise PlanforgeError(f"{cmd[0]}: printed no '{STARTED}' line; is it TensorRT's trtexec?")
    if proc.returncode != 0:
        errors = [ln for ln in output.splitlines() if "[E]" in ln or "FAILED" in ln]
        last = (errors or output.strip().splitlines() or ["no output"])[-1].strip()
        raise PlanforgeError(f"{cmd[1].split('=', 1)[1]}: trtexec timing failed ({proc.returncode}): {last}")
    return output, started, stopped


def _power(sampler: Any, inferences: int, timed_span_s: float) -> dict:
    """The sampler's reading, its energy restated over the timed span (mean power × span)."""
    reading = sampler.result(inferences)
    mean_w = reading.get("mean_power_w")
    if mean_w is None:
        return reading
    energy = mean_w * timed_span_s
    return {
        **reading,
        "energy_j": round(energy, 4),
        "energy_per_inference_j": energy / inferences if inferences else None,
        "inferences_per_joule": inferences / energy if energy else None,
        "energy_window": "mean power from trtexec's 'Starting inference' to its report (warm-up and timed run, the "
        "GPU busy throughout) × the timed span of the exported inferences",
    }


def time_engine(
    exe: str,
    engine: Path,
    batch: int,
    imgsz: int,
    warmup: int,
    iterations: int,
    min_seconds: float,
    options: dict,
    power: str,
    device: str,
    stability: Any,
    identity: dict | None = None,
) -> dict[str, Any]:
    """Time `engine` with trtexec (up to `stability.attempts` runs until one is stable); the bench record's timing
    fields. A run is disturbed by its spread, or by other processes: on the CPUs (trtexec's own CPU time, a child
    this process waits for, is not another's), or on the GPU (NVML's lists, where the driver has them; this
    process never touches the GPU, so the one process listed beside trtexec's own is another). Before timing a
    contended run again the bench waits for the machine to go quiet, at most `stability.quiet_wait_s` in all."""
    sidecar = engines.check_engine(engine, identity or engines.machine_identity(exe))
    # trtexec's warm-up is a duration: the bench's min_seconds/2, at least trtexec's own 200 ms default
    warmup_ms = max(200, int(min_seconds * 500))
    duration_s = math.ceil(min_seconds) if min_seconds else 0
    runs: list[dict] = []
    gpu = GpuProbe(device, on_gpu=False) if device.startswith("cuda") else None
    wait_left = stability.quiet_wait_s
    with tempfile.TemporaryDirectory(prefix="trtexec-") as tmp:
        for n in range(1, stability.attempts + 1):
            times, profile = Path(tmp) / f"times{n}.json", Path(tmp) / f"profile{n}.json"
            cmd = timing_command(
                exe, engine, sidecar, batch, imgsz, warmup_ms, iterations, duration_s,
                bool(options.get("cuda_graph")), times, profile,
            )  # fmt: skip
            sampler = get_sampler(power, device=device)
            probe = LoadProbe(children=True).start()
            if gpu is not None:
                gpu.start()
            output, started, stopped = run_timed(cmd, sampler)
            load = probe.stop()
            if gpu is not None:
                load["gpu"] = gpu.stop()
            t = parse_times(read_json(times), str(times))
            records = read_json(times)
            span_s = (max(r["endComputeMs"] for r in records) - min(r["startComputeMs"] for r in records)) / 1e3
            verdict = loop_verdict(
                stability_verdict(t["gpu_compute_ms"], stability.max_cv, stability.max_p99_over_p50),
                contention_verdict(load, stability.max_other_cpus),
            )
            warm = _WARMUP_DONE.search(output)
            runs.append(
                {
                    "attempt": n,
                    "command": cmd,
                    "times": t,
                    "profile": parse_profile(read_json(profile), str(profile)) if profile.is_file() else None,
                    "compute_s": sum(r["computeMs"] for r in records) / 1e3,
                    "span_s": span_s,
                    "warmup_done": int(warm.group(1)) if warm else None,
                    "verdict": verdict,
                    "power": _power(sampler, batch * t["inferences"], span_s),
                    "sampled_s": round(stopped - started, 4) if started else None,
                    "load": load,
                    "quiet_wait": None,
                    "output_tail": output.strip().splitlines()[-25:],
                }
            )
            if verdict["stable"]:
                break
            if verdict["contended"] and wait_left > 0 and n < stability.attempts:
                w = wait_for_quiet(stability.max_other_cpus, wait_left, gpu=gpu)
                wait_left -= w["waited_s"]
                runs[-1]["quiet_wait"] = w
    best = min(runs, key=lambda r: r["verdict"]["score"])
    v, t = best["verdict"], best["times"]
    n = t["inferences"]
    reason = None
    if not v["stable"]:
        reason = (
            f"disturbed in each of {len(runs)} trtexec runs (reported: the least disturbed, attempt "
            f"{best['attempt']}: {v['reason']})"
        )
    return {
        "timed_by": "trtexec",
        "warmup": warmup,
        "warmup_done": best["warmup_done"],
        "iterations": n,
        "min_seconds": min_seconds,
        "timer": {
            "model": TIMER,
            "model_loop": f"trtexec --warmUp={warmup_ms} ms, then at least --iterations="
            f"{iterations} inferences and --duration={duration_s} s",
            "power": _power.__doc__,
        },
        "latency_ms": t["gpu_compute_ms"],
        "device_latency_ms": t["gpu_compute_ms"],
        "host_latency_ms": t["latency_ms"],  # trtexec's latency: H2D + compute + D2H
        "enqueue_ms": t["enqueue_ms"],
        "throughput_items_per_s": round(batch * n / best["compute_s"], 3),
        "throughput_wall_items_per_s": round(batch * n / best["span_s"], 3) if best["span_s"] > 0 else None,
        "stable": v["stable"],
        "dispersion": {"timer": "gpu_compute_ms", "cv": v["cv"], "p99_over_p50": v["p99_over_p50"]},
        "load": best["load"],
        "stability": {
            "reason": reason,
            "criteria": dataclasses.asdict(stability),
            "timer": "gpu_compute_ms",
            "reported_attempt": best["attempt"],
            "reported_reason": v["reason"],
            "contended": v["contended"],
            "attempts": [
                {
                    "attempt": r["attempt"],
                    "iterations": r["times"]["inferences"],
                    "latency_ms": r["times"]["gpu_compute_ms"],
                    "stable": r["verdict"]["stable"],
                    "reason": r["verdict"]["reason"],
                    "score": r["verdict"]["score"],
                    "contended": r["verdict"]["contended"],
                    "load": r["load"],
                    "quiet_wait": r["quiet_wait"],
                }
                for r in runs
            ],  # fmt: skip
        },
        "power": best["power"],
        "trtexec": {
            "executable": exe,
            "command": best["command"],
            "layer_profile": best["profile"],
            "h2d_ms_mean": t["h2d_ms_mean"],
            "d2h_ms_mean": t["d2h_ms_mean"],
            "output_tail": best["output_tail"],
        },
        "engine_builder": sidecar.get("builder"),
        "dla_layers": sidecar.get("dla_layers"),
    }
