"""Time one (model, backend, precision, batch) on one target and write the bench JSON.

The model timer (`Runner.infer` on inputs already in the backend's layout, device synchronised) runs
the task's timed unit (`task.bench_unit`: detection an image batch, vla one action chunk); the task's
host timers (detection: preprocessing and postprocessing) are never mixed into it. A stateful unit that is
not one runner call on fixed inputs (tracking: one frame of a live sequence) gives a `call` to time instead
of `inputs`; it is timed by the host clock and returns host values (so the device is done), through the
same warm-up, stability, load and power handling. Where the model
records its phases (Pi0: prefix and denoising), they are reported apart in `phase_latency_ms`.
A disturbed timed loop (its spread, or other processes on its CPUs or its GPU: bench.stability) is measured
again, after waiting (bounded) for the machine to go quiet where others were the cause; every loop's spread
and the machine's load are recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from workflow_scripts.core import repeatability
from workflow_scripts.core.envinfo import environment
from workflow_scripts.core.io import PlanforgeError, run_cli, write_json
from workflow_scripts.core.isa import int8_record
from workflow_scripts.core.load import (
    GpuProbe,
    LoadProbe,
    contention_verdict,
    loop_verdict,
    usable_cpus,
    wait_for_quiet,
)
from workflow_scripts.core.metrics import latency_stats, stability_verdict
from workflow_scripts.core.reference import ReferenceProbe, reference_verdict
from workflow_scripts.models import FAMILIES, get_family
from workflow_scripts.pipeline import make_runner
from workflow_scripts.plan.settings import BenchSettings, Stability
from workflow_scripts.power import get_sampler
from workflow_scripts.tasks import TASKS, get_task

HOST_ITEMS = 1000  # images the preprocess / postprocess timers see per job (at least 3 batches)

TIMERS = {
    "model": "Runner.infer on a preprocessed batch already in the backend's memory and layout; GPU work "
    "timed with CUDA events and synchronised before the clock is read; no pre/post-processing, no host-device "
    "copies; one-off compilation / graph capture excluded (see setup_seconds)",
    "model_loop": "at least `iterations` timed calls and at least `min_seconds` of them, after at least `warmup` "
    "calls and min_seconds/2 of warm-up; the power sampler covers the timed calls",
    "stability": "dispersion = cv (std/mean) and p99/p50 of the reported timed loop, on the device timer where the "
    "runner has one; contention = other processes' CPU time on the CPUs this process may use (load.other_cpus_busy) "
    "and, on CUDA, other processes on the GPU (load.gpu, NVML); on the CPU, a fixed reference kernel read before "
    "and after the loop against this machine's best (load.reference, core/reference.py: the host's other tenants); "
    "a loop over stability.criteria (max_cv, max_p99_over_p50, max_other_cpus × cpus_usable, another GPU process, "
    "max_reference_slowdown) is disturbed and is warmed up and timed again, up to criteria.attempts loops, after "
    "waiting up to criteria.quiet_wait_s in all (per row) for the machine to go quiet (and the reference kernel to "
    "run at speed) where contention was the cause; the least disturbed (lowest worse-ratio-to-its-limit) is "
    "reported; `stable` is false when none passed, or when its p50 is more than max_change_from_last_run away from "
    "this machine's last clean measurement of the same row (stability.previous_run, core/repeatability.py)",
    "load": "the machine during the reported timed loop: 1-minute load average before/after, CPU counts, and "
    "other_cpu_s = busy CPU-seconds of the CPUs this process may use in /proc/stat minus this process's own "
    "(os.times); on CUDA, `gpu`: other processes on the device (workflow_scripts/core/load.py)",
}


class CallUnit:
    """A task's own timed `call` (tracking: `track` on the next frame of each live sequence) in the place of a
    runner in the timed loop: host clock, no device timer (the call returns host arrays), no phase timers."""

    device_times_ms = None

    def __init__(self, call) -> None:
        self.call = call

    def infer(self, _prepared) -> object:
        return self.call()

    def timed_infer(self, _prepared) -> tuple[object, float]:
        t0 = time.perf_counter()
        out = self.call()
        return out, time.perf_counter() - t0

    def phase_times_ms(self) -> None:
        return None

    def to_numpy(self, outputs):
        return outputs


@dataclasses.dataclass(frozen=True)
class Loop:
    """How a row's timed loops run: at least `warmup` calls (and min_seconds/2) of warm-up, then at least
    `iterations` timed calls (and min_seconds), the power sampler, where, the batch, when a loop counts as
    disturbed, the GPU's process probe (CUDA only) and the reference kernel read beside each loop (CPU only)."""

    warmup: int
    iterations: int
    min_seconds: float
    power: str
    device: str
    batch: int
    stability: Stability
    gpu: GpuProbe | None = None
    reference: ReferenceProbe | None = None


def _attempt(runner, prepared, loop: Loop) -> dict:
    """One warm-up and one timed loop, with its statistics, spread, verdict and the machine's load."""
    t_warm = time.perf_counter()
    done = 0
    while done < loop.warmup or time.perf_counter() - t_warm < loop.min_seconds / 2:
        runner.infer(prepared)
        done += 1
    if runner.device_times_ms is not None:
        runner.device_times_ms.clear()  # warmup does not count on the device timer either
    phases = runner.phase_times_ms()
    for times in (phases or {}).values():
        times.clear()  # nor on the model's phase timers
    if loop.reference is not None:
        time.sleep(0.05)  # the warm-up's worker threads stop spinning before the kernel is read
        loop.reference.start()
    sampler = get_sampler(loop.power, device=loop.device)
    probe = LoadProbe().start()
    if loop.gpu is not None:
        loop.gpu.start()
    sampler.start()
    t_start = time.perf_counter()
    model_times = []
    while len(model_times) < loop.iterations or time.perf_counter() - t_start < loop.min_seconds:
        out, seconds = runner.timed_infer(prepared)
        model_times.append(seconds)
    wall = time.perf_counter() - t_start
    sampler.stop()
    load = probe.stop()
    if loop.gpu is not None:
        load["gpu"] = loop.gpu.stop()
    if loop.reference is not None:
        load["reference"] = loop.reference.stop()
    n = len(model_times)
    stats = latency_stats(model_times)
    device_ms = list(runner.device_times_ms or [])
    device_stats = latency_stats([t / 1e3 for t in device_ms]) if device_ms else None
    # the verdict reads the device timer where the runner has one: the GPU's own spread
    timer = "device_latency_ms" if device_stats else "latency_ms"
    verdict = loop_verdict(
        stability_verdict(device_stats or stats, loop.stability.max_cv, loop.stability.max_p99_over_p50),
        contention(load, loop.stability),
    )
    return {
        "attempt": None,  # numbered by the caller's list position below
        "warmup_done": done,
        "iterations": n,
        "latency_ms": stats,
        "device_latency_ms": device_stats,
        "throughput_items_per_s": round(loop.batch * n / sum(model_times), 3),
        "throughput_wall_items_per_s": round(loop.batch * n / wall, 3),
        "dispersion": {"timer": timer, "cv": verdict["cv"], "p99_over_p50": verdict["p99_over_p50"]},
        "verdict": verdict,
        "load": load,
        "power": sampler.result(loop.batch * n),
        # the model's own phases (Pi0: prefix, denoise) over this loop's timed calls, where it records them
        "phase_latency_ms": {k: latency_stats([t / 1e3 for t in v]) for k, v in phases.items() if v}
        if phases
        else None,
        "model_times": model_times,
        "out": out,
    }


def contention(load: dict, stability: Stability) -> dict:
    """Other processes on the loop's CPUs or GPU (core.load.contention_verdict), or the host slower than its best
    on the reference kernel (core.reference.reference_verdict): disturbed when either is; the higher score."""
    verdicts = [
        contention_verdict(load, stability.max_other_cpus),
        reference_verdict(load.get("reference"), stability.max_reference_slowdown),
    ]
    return {
        "disturbed": any(v["disturbed"] for v in verdicts),
        "reason": "; ".join(v["reason"] for v in verdicts if v["reason"]) or None,
        "score": max(v["score"] for v in verdicts),
        "slow_host": verdicts[1]["disturbed"],
    }


def measure(timed, prepared, loop: Loop) -> list[dict]:
    """Timed loops until one is undisturbed, at most `stability.attempts`. Before measuring again after a loop that
    other processes disturbed, wait for the machine to go quiet: at most `stability.quiet_wait_s` over the row."""
    stability, gpu = loop.stability, loop.gpu
    attempts: list[dict] = []
    wait_left = stability.quiet_wait_s
    for n in range(1, stability.attempts + 1):
        attempt = _attempt(timed, prepared, loop)
        attempt["attempt"] = n
        attempt["quiet_wait"] = None
        attempts.append(attempt)
        v = attempt["verdict"]
        if v["stable"]:
            break
        more = "no attempts left"
        if n < stability.attempts:
            more = "measuring again"
            if v["contended"] and wait_left > 0:
                w = wait_for_quiet(stability.max_other_cpus, wait_left, gpu=gpu)
                wait_left -= w["waited_s"]
                state = "quiet" if w["quiet"] else f"still busy ({w['other_cpus_busy']} CPUs used by others)"
                if v["slow_host"] and loop.reference is not None and wait_left > 0:
                    w["reference"] = loop.reference.wait_for_speed(stability.max_reference_slowdown, wait_left)
                    wait_left -= w["reference"]["waited_s"]
                    r = w["reference"]
                    state += "; reference kernel " + ("at speed" if r["fast"] else f"still {r['slowdown']:.2f}× slow")
                attempt["quiet_wait"] = w
                more = f"waited {w['waited_s']:.1f} s for the machine to go quiet: {state}; measuring again"
        print(f"bench: attempt {n}/{stability.attempts} disturbed ({v['reason']}); {more}", file=sys.stderr)
    return attempts


def _attempt_summary(a: dict) -> dict:
    v = a["verdict"]
    keep = ("attempt", "warmup_done", "iterations", "latency_ms", "device_latency_ms", "throughput_items_per_s")
    return {
        **{k: a[k] for k in keep},
        "stable": v["stable"],
        "reason": v["reason"],
        "score": v["score"],
        "contended": v["contended"],
        "dispersion": a["dispersion"],
        "load": a["load"],
        # after this loop, before the next: the wait for other processes to leave the machine (None: no wait)
        "quiet_wait": a["quiet_wait"],
    }


@dataclasses.dataclass(frozen=True)
class Row:
    """What one bench job times: a model's artifact on a backend, at a precision and batch, on a target."""

    model: str
    family: str
    artifact: Path
    backend: str
    precision: str
    batch: int
    dataset: Path
    target: str


def bench(row: Row, s: BenchSettings) -> dict:
    """Run the three timers and return the bench record (the measurement contract)."""
    fam = get_family(row.family)
    runner = make_runner(
        row.backend, row.artifact, row.family, row.precision, s.device, s.threads, s.backend_options,
        target=row.target, gpu=s.gpu,
    )  # fmt: skip
    # the host-side timers see about HOST_ITEMS items (at least 3 batches): enough for a stable p50
    # without spending minutes letterboxing batch 256 a hundred times
    host_iterations = max(3, min(s.iterations, -(-HOST_ITEMS // row.batch)))
    task = get_task(FAMILIES[row.family].task)
    unit = task.bench_unit(fam, runner, row.dataset, row.batch, s.imgsz, host_iterations, s.conf)
    if "call" in unit:  # a stateful unit the task times itself (tracking)
        timed, prepared = CallUnit(unit["call"]), None
    else:
        timed, prepared = runner, runner.prepare(unit["inputs"])
        runner.setup(prepared)
    gpu_probe = GpuProbe(s.device) if s.device.startswith("cuda") else None
    reference = None
    if s.device == "cpu" and s.stability.max_reference_slowdown is not None:
        reference = ReferenceProbe(s.threads or len(usable_cpus() or ()) or 1)
    loop = Loop(
        s.warmup, s.iterations, float(s.min_seconds), s.power, s.device, row.batch, s.stability, gpu_probe, reference
    )
    attempts = measure(timed, prepared, loop)
    best = min(attempts, key=lambda a: a["verdict"]["score"])  # the stable one, else the least disturbed
    after = unit["after"](timed.to_numpy(best["out"]))
    verdict = best["verdict"]
    reason = None
    if not verdict["stable"]:
        reason = (
            f"disturbed in each of {len(attempts)} timed loops (reported: the least disturbed, attempt "
            f"{best['attempt']}: {verdict['reason']})"
        )
    timing = {
        "warmup": s.warmup,
        "warmup_done": best["warmup_done"],
        "iterations": best["iterations"],
        "min_seconds": float(s.min_seconds),
        "timer": {**TIMERS, **unit["timers"]},
        "latency_ms": best["latency_ms"],
        "phase_latency_ms": best["phase_latency_ms"],
        # CUDA events around the enqueue on the runner's stream (runners that have them); None otherwise
        "device_latency_ms": best["device_latency_ms"],
        "throughput_items_per_s": best["throughput_items_per_s"],
        "throughput_wall_items_per_s": best["throughput_wall_items_per_s"],
        # the measurement contract's dispersion and load, of the reported timed loop
        "stable": verdict["stable"],
        "dispersion": best["dispersion"],
        "load": best["load"],
        "stability": {
            "reason": reason,
            "criteria": dataclasses.asdict(s.stability),
            "timer": best["dispersion"]["timer"],
            "reported_attempt": best["attempt"],
            # the reported loop's own verdict: what disturbed it (spread, other processes), None when stable
            "reported_reason": verdict["reason"],
            "contended": verdict["contended"],
            # every timed loop's summary (not its per-call times, not its power reading)
            "attempts": [_attempt_summary(a) for a in attempts],
        },
        **unit["record"],
        **after,
        "power": best["power"],
    }
    ran = {"setup_seconds": runner.setup_seconds, "memory": runner.memory(), "runner": runner.versions()}
    return record(row, s, timing, ran)


def record(row: Row, s: BenchSettings, timing: dict, ran: dict) -> dict:
    """The bench record, whichever timer made it: what was timed (row), how (`timing`: the timer's statistics,
    stability and power), the runner's facts (`ran`: setup, memory, versions), and the settings and machine."""
    task_name = FAMILIES[row.family].task
    r = {
        "status": "ok",
        "model": row.model,
        "family": row.family,
        "task": task_name,
        "unit": TASKS[task_name].unit,
        "backend": row.backend,
        "precision": row.precision,
        "batch": row.batch,
        "imgsz": s.imgsz,
        "target": row.target,
        "artifact": str(row.artifact),
        **timing,
        **ran,
        "threads": s.threads,
        "backend_options": s.backend_options,
        "environment": environment(s.device),
        "config_hash": s.config_hash,
    }
    previous = repeatability.check(r, row.artifact, s.stability.max_change_from_last_run)
    r["stability"]["previous_run"] = previous
    if previous and previous["reproduced"] is False:  # steady within this run, not from one run to the next
        st = r["stability"]
        r["stable"] = False
        st["reason"] = "; ".join(x for x in (st["reason"], previous["reason"]) if x)
        st["reported_reason"] = "; ".join(x for x in (st.get("reported_reason"), previous["reason"]) if x)
    return r


def bench_with_trtexec(trtexec: str, row: Row, s: BenchSettings) -> dict:
    """The bench record of an engine timed by trtexec (no TensorRT Python bindings here): its GPU compute time,
    the same statistics, stability verdict and power fields; no pre/post-processing timers, no outputs to score."""
    from workflow_scripts.tensorrt.trtexec_timing import time_engine

    timing = time_engine(
        trtexec, row.artifact, row.batch, s.imgsz, s.warmup, s.iterations, float(s.min_seconds), s.backend_options,
        s.power, s.device, s.stability,
    )  # fmt: skip
    timing.update(
        phase_latency_ms=None,
        accuracy={
            "measured": False,
            "reason": "timed by trtexec: no TensorRT Python bindings (and torch) under this job's interpreter, so "
            "no outputs to score; set targets.<target>.python to an interpreter that has them",
        },
    )
    ran = {
        "setup_seconds": {},
        "memory": None,
        "runner": {"timer": "trtexec", "engine": str(row.artifact), "engine_builder": str(timing["engine_builder"])},
    }
    return record(row, s, timing, ran)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--artifact", type=Path, required=True, help="checkpoint or ONNX file the backend runs")
    p.add_argument("--backend", required=True)
    p.add_argument("--precision", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.BenchSettings")
    p.add_argument("--trtexec", default=None, help="time the engine with this trtexec (no TensorRT bindings here)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    s = BenchSettings.from_json(a.settings)
    if a.batch < 1:
        raise PlanforgeError(f"batch {a.batch}: must be at least 1")
    if a.trtexec and a.backend != "tensorrt":
        raise PlanforgeError(f"--trtexec times TensorRT engines only, not backend {a.backend!r}")
    row = Row(a.model, a.family, a.artifact, a.backend, a.precision, a.batch, a.dataset, a.target)
    r = bench_with_trtexec(a.trtexec, row, s) if a.trtexec else bench(row, s)
    if plan := int8_record(a.artifact):  # a QDQ model's: the INT8 plan it was made for (quantize, sensitivity)
        r["int8"] = plan
    write_json(a.out, r)
    d = r["dispersion"]
    print(
        f"{a.out}: p50 {r['latency_ms']['p50']:.2f} ms, p99 {r['latency_ms']['p99']:.2f} ms, "
        f"{r['throughput_items_per_s']:.1f} items/s; cv {d['cv']}, p99/p50 {d['p99_over_p50']}, "
        f"{'stable' if r['stable'] else 'UNSTABLE: ' + r['stability']['reason']}"
    )


if __name__ == "__main__":
    run_cli(main)
