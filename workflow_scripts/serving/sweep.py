"""results/{target}/serving/{model}.json (+ .csv): a perf_analyzer sweep through a real tritonserver.

For each concurrency level (default 1..8) and protocol (HTTP, gRPC), perf_analyzer sends a fixed
number of requests (one real validation image each) to the model's ensemble (preprocess → model →
postprocess) and reports p50/p90/p95/p99, throughput and where the time went (client send,
network, server queue, compute input/infer/output, client receive). The sweep runs twice: with the
repository's dynamic batching, and on a copy with dynamic batching removed. The bare inference
model at concurrency 1 is measured too, to compare with the in-process ONNX Runtime bench.
A vla model (Pi0) is one python-backend model, swept with val episodes as input data (`serving.vla`).
A tracking model (SAMURAI) is one stateful model behind the sequence batcher, swept with whole val sequences
(`--sequence-length`, concurrency = live sequences; `serving.tracking`).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

from workflow_scripts.core.data import load_split, read_image
from workflow_scripts.core.envinfo import environment
from workflow_scripts.core.io import PlanforgeError, atomic_path, read_json, run_cli, write_json
from workflow_scripts.core.metrics import latency_stats
from workflow_scripts.models import get_family, raw_outputs
from workflow_scripts.pipeline import make_runner
from workflow_scripts.plan.settings import ServingSettings
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.repository import triton_models_of, without_dynamic_batching
from workflow_scripts.serving.server import TritonServer, fresh_log, serve

# perf_analyzer --verbose-csv column → our name (all in microseconds there, milliseconds here)
LATENCY_COLUMNS = {"p50 latency": "p50", "p90 latency": "p90", "p95 latency": "p95", "p99 latency": "p99"}
LATENCY_COLUMNS["Avg latency"] = "mean"
BREAKDOWN_COLUMNS = {
    "Client Send": "client_send",
    "Network+Server Send/Recv": "network_server_send_recv",
    "Server Queue": "server_queue",
    "Server Compute Input": "server_compute_input",
    "Server Compute Infer": "server_compute_infer",
    "Server Compute Output": "server_compute_output",
    "Client Recv": "client_recv",
}
CSV_FIELDS = ["model", "target", "batching", "protocol", "concurrency", "throughput_infer_per_s"]
CSV_FIELDS += [f"{k}_ms" for k in LATENCY_COLUMNS.values()] + [f"{k}_ms" for k in BREAKDOWN_COLUMNS.values()]


def parse_perf_csv(path: Path) -> dict:
    """The one row perf_analyzer writes for one concurrency level, in ms and inferences/s."""
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except OSError:
        rows = []
    if not rows:
        raise PlanforgeError(f"{path}: perf_analyzer wrote no measurement")
    row = rows[0]
    return {
        "concurrency": int(row["Concurrency"]),
        "throughput_infer_per_s": round(float(row["Inferences/Second"]), 3),
        "latency_ms": {name: round(float(row[col]) / 1000, 3) for col, name in LATENCY_COLUMNS.items()},
        "breakdown_ms": {name: round(float(row[col]) / 1000, 3) for col, name in BREAKDOWN_COLUMNS.items()},
    }


def perf_analyzer(
    env,
    server: TritonServer,
    model: str,
    protocol: str,
    concurrency: int,
    requests: int,
    input_data: str,
    shape: str | None,
    workdir: Path,
    stability: float = 25,
    max_trials: int = 6,
    extra_args: tuple[str, ...] = (),
) -> dict:
    """One perf_analyzer run at one concurrency level; a dead server or a failed run raises with the reason.

    Windows of `requests` requests each, until three in a row agree within `stability` % (perf_analyzer's
    own rule). A level that never settles (a busy shared machine) is measured once more with the check
    off and marked `stable: false` rather than failing the sweep. (`--request-count` is not used: its
    throughput is requests per one-second window, not a measurement.)
    """
    out = workdir / f"{model}_{protocol}_c{concurrency}.csv"
    args = (env, server, model, protocol, concurrency, requests, input_data, shape, out)
    row = _perf_run(*args, stability, max_trials, extra_args)
    if row is None:
        row = _perf_run(*args, 10000, 3, extra_args)
    if row is None:
        raise PlanforgeError(f"perf_analyzer: no measurement of {model} ({protocol}, concurrency {concurrency})")
    row["stable"] = row.pop("_stability") == stability
    return row


def _perf_run(
    env, server, model, protocol, concurrency, requests, input_data, shape, out, stability, max_trials, extra
):
    out.unlink(missing_ok=True)
    cmd = [
        str(env.perf_analyzer),
        "-m",
        model,
        "-u",
        server.url(protocol),
        "-i",
        protocol,
        "-b",
        "1",
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(max(requests, 4 * concurrency)),
        "--stability-percentage",
        str(stability),
        "--max-trials",
        str(max_trials),
        "--input-data",
        input_data,
        "-f",
        str(out),
        "--verbose-csv",
    ]
    if shape:
        cmd += ["--shape", shape]
    cmd += list(extra)  # e.g. a sequence model's --sequence-length
    proc = subprocess.run(cmd, env=env.client_env(), capture_output=True, text=True)
    if proc.returncode != 0 and server.alive() and "stable measurement" in proc.stdout + proc.stderr:
        return None
    if proc.returncode != 0 or not out.is_file():
        if not server.alive():
            raise server.failure(
                f"tritonserver stopped (exit code {server.proc.returncode}) during the perf_analyzer sweep of "
                f"{model} ({protocol}, concurrency {concurrency})"
            )
        lines = [ln for ln in (proc.stdout + proc.stderr).strip().splitlines() if ln.strip()][-4:]
        raise PlanforgeError(
            f"perf_analyzer failed on {model} ({protocol}, concurrency {concurrency}, exit {proc.returncode}): "
            + " | ".join(lines)
        )
    return {**parse_perf_csv(out), "_stability": stability}


def write_image_input(image, path: Path) -> str:
    """perf_analyzer --input-data JSON holding one real image; returns the --shape argument."""
    path.write_text(
        json.dumps({"data": [{"IMAGE": {"content": image.reshape(-1).tolist(), "shape": list(image.shape)}}]})
    )
    return f"IMAGE:{image.shape[0]},{image.shape[1]},3"


def in_process_reference(repository: Path, index: dict, model: str, image, iterations: int) -> dict:
    """ONNX Runtime in this process on the repository's own model.onnx, timed right before the sweep.

    The same machine state as the served numbers, so their ratio is the serving overhead (on a shared
    machine a bench JSON from another hour is not comparable). Model only, and pre+model+post on the
    request's image, with the family's functions and the target's thread count.
    """
    entry = index["models"][model]
    precision, infer_model = next(iter(entry["inference_models"].items()))
    fam = get_family(entry["family"])
    runner = make_runner(
        "onnxruntime",
        repository / infer_model / "1" / "model.onnx",
        entry["family"],
        precision,
        "cpu",
        index.get("threads"),
    )
    conf = index["serving"]["conf"]
    inputs, metas = fam.preprocess([image], entry["imgsz"])
    prepared = runner.prepare(inputs)

    def pipeline():
        x, m = fam.preprocess([image], entry["imgsz"])
        fam.postprocess(raw_outputs(fam, runner(x)), m, conf=conf)

    for _ in range(5):
        pipeline()
    model_times, pipe_times = [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        runner.infer(prepared)
        model_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pipeline()
        pipe_times.append(time.perf_counter() - t0)
    return {
        "model_ms": latency_stats(model_times),
        "pipeline_ms": latency_stats(pipe_times),
        "iterations": iterations,
        "runner": runner.versions(),
        "threads": index.get("threads"),
    }


# tasks whose served model is not the detection ensemble: their sweep function (same arguments as below, plus the index)
TASK_SWEEPS = {
    "vla": ("workflow_scripts.serving.vla", "run_vla_sweep"),
    "tracking": ("workflow_scripts.serving.tracking", "run_tracking_sweep"),
}


def run_sweep(
    repository: Path,
    model: str,
    target: str,
    dataset: Path,
    server_log: Path,
    s: ServingSettings,
    env_dir: Path | None = None,
    bench_b1: Path | None = None,
) -> dict:
    """Both sweeps (dynamic batching on, off) and the bare-model row; returns the serving record. `s`: the serving
    job's settings (concurrency levels, protocols, requests per window, stability, ports, startup timeout); a vla
    or tracking model goes to its task's sweep (`TASK_SWEEPS`) with the same arguments."""
    concurrency, protocols, requests = s.concurrency, s.protocols, s.requests
    startup_timeout, http_port, grpc_port = s.startup_timeout_s, s.http_port, s.grpc_port
    stability, max_trials = s.stability_percentage, s.max_trials
    index = read_json(repository / "planforge.json")
    if model not in index["models"]:
        raise PlanforgeError(f"{repository}: has no model {model!r} (it has {sorted(index['models'])}); rerun triton")
    entry = index["models"][model]
    if entry.get("task") in TASK_SWEEPS:  # a python model of its own (Pi0, a tracker): its own client and inputs
        module, name = TASK_SWEEPS[entry["task"]]
        sweep = getattr(importlib.import_module(module), name)
        return sweep(repository, index, model, target, dataset, server_log, s, env_dir)
    env = ensure(env_dir)
    ensemble = entry["ensembles"]["serve"]["name"]
    infer_model = next(iter(entry["inference_models"].values()))
    split = load_split(dataset, "val")
    image = read_image(split.image_path(split.images[0]))
    fresh_log(server_log)
    rows, model_only = [], []
    t0 = time.perf_counter()
    reference = in_process_reference(repository, index, model, image, min(requests, 200))
    with tempfile.TemporaryDirectory(prefix="planforge-serving-") as tmp:
        tmp = Path(tmp)
        shape = write_image_input(image, tmp / "image.json")
        repos = {"on": repository, "off": without_dynamic_batching(repository, tmp / "repo-no-batching")}
        for batching, repo in repos.items():
            with serve(
                env, repo, server_log, http_port, grpc_port, startup_timeout, models=triton_models_of(entry)
            ) as server:
                for protocol in protocols:
                    if batching == "on":
                        r = perf_analyzer(
                            env, server, infer_model, protocol, 1, requests, "random", None, tmp, stability, max_trials
                        )
                        model_only.append({"model": infer_model, "protocol": protocol, **r})
                    for c in concurrency:
                        r = perf_analyzer(
                            env,
                            server,
                            ensemble,
                            protocol,
                            c,
                            requests,
                            str(tmp / "image.json"),
                            shape,
                            tmp,
                            stability,
                            max_trials,
                        )
                        rows.append({"batching": batching, "protocol": protocol, **r})
                        print(
                            f"batching {batching} {protocol} c{c}: p50 {r['latency_ms']['p50']:.2f} ms, "
                            f"p99 {r['latency_ms']['p99']:.2f} ms, {r['throughput_infer_per_s']:.1f} infer/s",
                            flush=True,
                        )
    return {
        "status": "ok",
        "model": model,
        "target": target,
        "ensemble": ensemble,
        "inference_model": infer_model,
        "repository": str(repository),
        "image_shape": list(image.shape),
        "requests_per_window": requests,
        "stability_percentage": stability,
        "max_trials": max_trials,
        "timer": "perf_analyzer end to end per request: client send → server (queue, pre, model, post) → client "
        "receive; batch 1 per request, `concurrency` requests in flight",
        "serving_settings": index.get("serving", {}),
        "sweep": rows,
        "model_only": model_only,
        "in_process_reference": reference,
        "comparison": compare(rows, model_only, reference, read_json(bench_b1) if bench_b1 else None, max(concurrency)),
        "server": {"log": str(server_log), "environment": env.versions()},
        "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment("cpu" if index["device"] == "cpu" else index["device"]),
    }


def compare_batching(rows: list[dict], top: int) -> dict:
    """Per protocol: throughput with dynamic batching on vs off at the top concurrency, and their ratio."""
    out: dict = {}
    for protocol in sorted({r["protocol"] for r in rows}):
        on = next(
            (r for r in rows if r["protocol"] == protocol and r["batching"] == "on" and r["concurrency"] == top), None
        )
        off = next(
            (r for r in rows if r["protocol"] == protocol and r["batching"] == "off" and r["concurrency"] == top), None
        )
        if on and off and off["throughput_infer_per_s"]:
            out[protocol] = {
                "concurrency": top,
                "throughput_on": on["throughput_infer_per_s"],
                "throughput_off": off["throughput_infer_per_s"],
                "gain": round(on["throughput_infer_per_s"] / off["throughput_infer_per_s"], 3),
            }
    return out


def compare(rows: list[dict], model_only: list[dict], reference: dict, bench: dict | None, top: int) -> dict:
    """Serving overhead vs in-process ORT (same job; and the bench JSON), and what batching buys at the top concurrency."""
    out: dict = {
        "batching_gain_at_max_concurrency": compare_batching(rows, top),
        "overhead_vs_in_process": {},
        "overhead_vs_bench": {},
    }
    sources = [("overhead_vs_in_process", reference["model_ms"]["p50"], reference["pipeline_ms"]["p50"], None)]
    if bench:
        sources.append(
            (
                "overhead_vs_bench",
                bench["latency_ms"]["p50"],
                bench["latency_ms"]["p50"] + bench["preprocess_ms"]["p50"] + bench["postprocess_ms"]["p50"],
                bench.get("environment", {}).get("timestamp"),
            )
        )
    for key, ort_model, ort_pipeline, when in sources:
        for m in model_only:
            c1 = next(
                (r for r in rows if r["protocol"] == m["protocol"] and r["batching"] == "on" and r["concurrency"] == 1),
                None,
            )
            out[key][m["protocol"]] = {
                "in_process_ort_model_p50_ms": ort_model,
                "triton_model_p50_ms": m["latency_ms"]["p50"],
                "model_ratio": round(m["latency_ms"]["p50"] / ort_model, 3),
                "in_process_pipeline_p50_ms": round(ort_pipeline, 3),
                "triton_ensemble_p50_ms": c1["latency_ms"]["p50"] if c1 else None,
                "pipeline_ratio": round(c1["latency_ms"]["p50"] / ort_pipeline, 3) if c1 else None,
                **({"bench_timestamp": when} if when else {}),
            }
    return out


def write_csv(record: dict, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in record["sweep"]:
            w.writerow(
                {
                    "model": record["model"],
                    "target": record["target"],
                    "batching": r["batching"],
                    "protocol": r["protocol"],
                    "concurrency": r["concurrency"],
                    "throughput_infer_per_s": r["throughput_infer_per_s"],
                    **{f"{k}_ms": v for k, v in r["latency_ms"].items()},
                    **{f"{k}_ms": v for k, v in r["breakdown_ms"].items()},
                }
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True, help="artifacts/triton/{target}")
    p.add_argument("--model", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--dataset", type=Path, required=True, help="one real val image is the request payload")
    p.add_argument("--bench-b1", type=Path, default=None, help="in-process ONNX Runtime batch-1 bench JSON")
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.ServingSettings")
    p.add_argument("--server-log", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the JSON; the CSV goes beside it")
    a = p.parse_args(argv)
    s = ServingSettings.from_json(a.settings)
    record = run_sweep(a.repository, a.model, a.target, a.dataset, a.server_log, s, bench_b1=a.bench_b1)
    record["config_hash"] = s.config_hash
    write_csv(record, a.out.with_suffix(".csv"))
    write_json(a.out, record)
    print(f"{a.out}: {len(record['sweep'])} measurements in {record['seconds']} s; {json.dumps(record['comparison'])}")


if __name__ == "__main__":
    run_cli(main)
