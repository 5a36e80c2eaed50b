"""results/{target}/serving/coserving.json: the Pi0 model and a detection ensemble in one tritonserver.

One server loads the target's whole repository (on a GPU target every inference model is KIND_GPU on
the one GPU; nothing is swapped in or out). Recorded:

- memory: every python-backend model instance is its own stub process; per Triton model, each stub's RSS
  and PSS (/proc: PSS splits the shared libraries between the processes that map them) and, on a CUDA
  target, its GPU memory from NVML per process (nvidia-ml-py, where installed); grouped per served
  planforge model (a detection model: its pre, inference and post models), after loading and again
  after the traffic below; and the server process itself;
- latency: perf_analyzer (time windows of `WINDOW_MS`, concurrency `serving.concurrency`'s first level,
  the first protocol) on each model alone, then on both at once (two perf_analyzers started together),
  p50/p90/p99 and throughput, and each model's mixed/alone p50 and p99 ratios.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from workflow_scripts.core.data import load_split, read_image
from workflow_scripts.core.envinfo import environment
from workflow_scripts.core.io import PlanforgeError, read_json, run_cli, write_json
from workflow_scripts.plan.settings import ServingSettings
from workflow_scripts.serving.detection import write_image_input
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.perf import parse_perf_csv
from workflow_scripts.serving.served import triton_models_of
from workflow_scripts.serving.server import TritonServer, fresh_log, serve
from workflow_scripts.serving.vla import write_perf_input

WINDOW_MS = 1500  # perf_analyzer time window: alone and mixed runs last about as long, so they overlap
WINDOWS = 3


def _proc_kib(pid: int, file: str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_memory(pid: int) -> dict:
    """RSS and PSS of one process, MiB (PSS: shared pages divided among the processes that map them)."""
    rss, pss = _proc_kib(pid, "status", "VmRSS"), _proc_kib(pid, "smaps_rollup", "Pss")
    return {
        "pid": pid,
        "rss_mib": round(rss / 1024, 1) if rss is not None else None,
        "pss_mib": round(pss / 1024, 1) if pss is not None else None,
    }


def stub_processes(server: TritonServer) -> dict[str, list[int]]:
    """{Triton model: stub pids}: the python backend stubs in the server's process group (argv[1] is the
    model's model.py: <repository>/<model>/<version>/model.py)."""
    out: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            pgid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, IndexError, ValueError):
            continue
        if pgid == server.proc.pid and len(argv) > 1 and argv[0].endswith(b"triton_python_backend_stub"):
            out.setdefault(Path(argv[1].decode()).parent.parent.name, []).append(int(proc.name))
    return out


def gpu_memory_by_pid() -> tuple[dict[int, float], str | None]:
    """{pid: GPU MiB} over every GPU, from NVML's per-process accounting; ({}, why) where it cannot be read."""
    try:
        import pynvml
    except ImportError:
        return {}, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        out: dict[int, float] = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if p.usedGpuMemory is not None:
                    out[int(p.pid)] = out.get(int(p.pid), 0.0) + p.usedGpuMemory / 2**20
        return out, None
    except Exception as exc:  # noqa: BLE001 - NVML errors are reported, not fatal
        return {}, f"NVML: {exc}"


def memory(server: TritonServer, index: dict, models: dict[str, str], cuda: bool) -> dict:
    """Per served model (its stubs) and per Triton model: RSS, PSS and GPU MiB; the server process too."""
    stubs = stub_processes(server)
    gpu, why = gpu_memory_by_pid() if cuda else ({}, "cpu target")
    per_triton = {}
    for name, pids in sorted(stubs.items()):
        rows = [{**process_memory(p), "gpu_mib": round(gpu[p], 1) if p in gpu else None} for p in pids]
        per_triton[name] = rows
    out: dict = {"models": {}, "triton_models": per_triton, "gpu_memory_source": "NVML per process" if not why else why}
    for role, model in models.items():
        names = [n for n in triton_models_of(index["models"][model]) if n in per_triton]
        if not names:
            raise PlanforgeError(
                f"{model}: no python backend stub found for {triton_models_of(index['models'][model])}"
            )
        rows = [r for n in names for r in per_triton[n]]
        out["models"][model] = {
            "role": role,
            "triton_models": names,
            "stubs": len(rows),
            **{k: round(sum(r[k] or 0 for r in rows), 1) for k in ("rss_mib", "pss_mib")},
            "gpu_mib": round(sum(r["gpu_mib"] for r in rows if r["gpu_mib"] is not None), 1) if gpu else None,
        }
    out["server_process"] = {**process_memory(server.proc.pid), "gpu_mib": gpu.get(server.proc.pid)}
    return out


def perf_time_windows(env, server: TritonServer, model: str, protocol: str, concurrency: int, data: str, shape, out):
    """One perf_analyzer run in time windows (stability check off: the windows are the measurement)."""
    cmd = [
        str(env.perf_analyzer),
        *("-m", model, "-u", server.url(protocol), "-i", protocol, "-b", "1"),
        *("--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-mode", "time_windows"),
        *("--measurement-interval", str(WINDOW_MS), "--stability-percentage", "10000", "--max-trials", str(WINDOWS)),
        *("--input-data", data, "-f", str(out), "--verbose-csv"),
        *(("--shape", shape) if shape else ()),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env.client_env(), capture_output=True, text=True)
    t1 = time.perf_counter()
    if proc.returncode != 0 or not Path(out).is_file():
        if not server.alive():
            raise server.failure(f"tritonserver stopped while perf_analyzer measured {model}")
        lines = [ln for ln in (proc.stdout + proc.stderr).strip().splitlines() if ln.strip()][-4:]
        raise PlanforgeError(f"perf_analyzer failed on {model} ({protocol}): " + " | ".join(lines))
    return {**parse_perf_csv(Path(out)), "wall_s": [round(t0, 2), round(t1, 2)]}


def run_coserving(
    repository: Path,
    target: str,
    vla_model: str,
    vla_dataset: Path,
    detection_model: str,
    detection_dataset: Path,
    server_log: Path,
    concurrency: int,
    protocol: str,
    startup_timeout: float,
    env_dir: Path | None = None,
) -> dict:
    env = ensure(env_dir)
    index = read_json(repository / "planforge.json")
    for m in (vla_model, detection_model):
        if m not in index["models"]:
            raise PlanforgeError(f"{repository}: has no model {m!r}; rerun the triton rule")
    cuda = index["device"].startswith("cuda")
    models = {"vla": vla_model, "detection": detection_model}
    served = {vla_model: index["models"][vla_model]["model"], detection_model: None}
    served[detection_model] = index["models"][detection_model]["ensembles"]["serve"]["name"]
    fresh_log(server_log)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="planforge-coserving-") as tmp:
        tmp = Path(tmp)
        write_perf_input(vla_dataset, tmp / "episodes.json")
        split = load_split(detection_dataset, "val")
        shape = write_image_input(read_image(split.image_path(split.images[0])), tmp / "image.json")
        inputs = {vla_model: (str(tmp / "episodes.json"), None), detection_model: (str(tmp / "image.json"), shape)}
        load = [n for m in models.values() for n in triton_models_of(index["models"][m])]
        with serve(env, repository, server_log, timeout=startup_timeout, models=load) as server:
            loaded = memory(server, index, models, cuda)
            alone, mixed = {}, {}
            for m in models.values():
                alone[m] = perf_time_windows(
                    env, server, served[m], protocol, concurrency, *inputs[m], tmp / f"{m}_alone.csv"
                )
            errors: list[BaseException] = []

            def run(m: str) -> None:
                try:
                    mixed[m] = perf_time_windows(
                        env, server, served[m], protocol, concurrency, *inputs[m], tmp / f"{m}_mixed.csv"
                    )
                except BaseException as exc:  # noqa: BLE001 - raised in the main thread below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(m,)) for m in models.values()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            after = memory(server, index, models, cuda)
    spans = [mixed[m]["wall_s"] for m in models.values()]
    overlap = max(0.0, min(s[1] for s in spans) - max(s[0] for s in spans))
    latency = {}
    for m in models.values():
        a, x = alone[m]["latency_ms"], mixed[m]["latency_ms"]
        latency[m] = {
            "served_model": served[m],
            "alone": {**alone[m]["latency_ms"], "throughput_infer_per_s": alone[m]["throughput_infer_per_s"]},
            "mixed": {**mixed[m]["latency_ms"], "throughput_infer_per_s": mixed[m]["throughput_infer_per_s"]},
            "p50_mixed_over_alone": round(x["p50"] / a["p50"], 3),
            "p99_mixed_over_alone": round(x["p99"] / a["p99"], 3),
        }
    return {
        "status": "ok",
        "target": target,
        "device": index["device"],
        "repository": str(repository),
        "models": models,
        "memory_after_load": loaded,
        "memory_after_traffic": after,
        "latency": latency,
        "mixed_overlap_s": round(overlap, 2),
        "mixed_overlap_fraction": round(overlap / max(s[1] - s[0] for s in spans), 3),
        "perf_analyzer": {
            "protocol": protocol,
            "concurrency_each": concurrency,
            "measurement": f"time windows of {WINDOW_MS} ms, {WINDOWS} windows, no stability requirement",
            "mixed": "both perf_analyzers started together, each on its own model",
        },
        "timer": "perf_analyzer end to end per request (client send → server → client receive)",
        "seconds": round(time.perf_counter() - t0, 1),
        "server": {"log": str(server_log), "environment": env.versions()},
        "environment": environment("cpu" if not cuda else index["device"]),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True, help="artifacts/triton/{target}")
    p.add_argument("--target", required=True)
    p.add_argument("--vla-model", required=True)
    p.add_argument("--vla-dataset", type=Path, required=True, help="its episodes (the val split is the payload)")
    p.add_argument("--detection-model", required=True)
    p.add_argument("--detection-dataset", type=Path, required=True, help="one real val image is the payload")
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.ServingSettings")
    p.add_argument("--server-log", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    s = ServingSettings.from_json(a.settings)
    record = run_coserving(
        a.repository,
        a.target,
        a.vla_model,
        a.vla_dataset,
        a.detection_model,
        a.detection_dataset,
        a.server_log,
        s.concurrency[0],
        s.protocols[0],
        s.startup_timeout_s,
    )
    record["config_hash"] = s.config_hash
    write_json(a.out, record)
    mem = record["memory_after_traffic"]["models"]
    print(
        f"{a.out}: "
        + "; ".join(
            f"{m} {mem[m]['pss_mib']:.0f} MiB PSS, p99 alone {v['alone']['p99']:.1f} ms, mixed {v['mixed']['p99']:.1f} ms"
            for m, v in record["latency"].items()
        )
    )


if __name__ == "__main__":
    run_cli(main)
