"""perf_analyzer through a real tritonserver: one measurement, and the sweep loop every task shares.

`run_sweep`: for each batching mode the task sweeps (on: the repository as built; off: a copy with every
dynamic_batching block removed), one server loading only the model; for each protocol (HTTP, gRPC) and concurrency
level, perf_analyzer sends the task's input data to its served model and reports p50/p90/p95/p99, throughput and
where the time went (client send, network, server queue, compute input/infer/output, client receive). The task's
`TaskSweep` (named by `tasks.TaskSpec.served.sweep`) supplies only what differs: the in-process reference timed in
the same job, the input data, rows of its own, the comparison and the record's own keys.
"""

from __future__ import annotations

import contextlib
import csv
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.core.envinfo import environment
from workflow_scripts.core.io import PlanforgeError, atomic_path
from workflow_scripts.plan.settings import ServingSettings
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.served import triton_models_of
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


def without_dynamic_batching(repo: Path, dest: Path) -> Path:
    """A copy of `repo` with every dynamic_batching block removed (the batching-off sweep)."""
    shutil.copytree(repo, dest, symlinks=True)
    for cfg in dest.glob("*/config.pbtxt"):
        cfg.write_text(re.sub(r"^dynamic_batching \{[^}]*\}\n", "", cfg.read_text(), flags=re.M))
    return dest


@dataclass(frozen=True)
class Load:
    """What perf_analyzer sends to one served model."""

    model: str  # the Triton model it targets
    input_data: str  # --input-data: a JSON file, or "random"
    shape: str | None = None  # --shape
    extra: tuple[str, ...] = ()  # e.g. a sequence model's --sequence-length


class TaskSweep:
    """One task's part of the sweep, built with the job's arguments. `run_sweep` calls, in order: `reference()`,
    `load(tmp)`, then per batching mode and protocol `before_levels(...)` and one measurement per concurrency level
    (`row(c)` adds keys to its row), then `comparison(rows, reference)`; the record is `head()`, the shared keys with
    `inputs()` and `tail()` among them."""

    batching: tuple[str, ...] = ("on", "off")  # the dynamic batching modes swept
    unit = "infer/s"  # what the progress lines count
    timer = ""  # what perf_analyzer's latency covers, for the record

    def __init__(
        self,
        repository: Path,
        index: dict,
        model: str,
        target: str,
        dataset: Path,
        s: ServingSettings,
        bench_b1: Path | None = None,
    ) -> None:
        self.repository, self.index, self.model, self.target = repository, index, model, target
        self.dataset, self.s, self.bench_b1 = dataset, s, bench_b1
        self.entry = index["models"][model]
        self.device = "cpu" if index["device"] == "cpu" else index["device"]
        self.threads = index.get("threads")

    def head(self) -> dict:
        """The record's first keys, after status: the model and what it is served as."""
        raise NotImplementedError

    def reference(self) -> dict:
        """The in-process time of the same model, right before the sweep (same machine state as the served numbers)."""
        raise NotImplementedError

    def load(self, tmp: Path) -> Load:
        """Write perf_analyzer's input data under `tmp`; what every concurrency level sends."""
        raise NotImplementedError

    def inputs(self) -> dict:
        """The record's keys on what was sent (after `load`)."""
        return {}

    def before_levels(self, measure, batching: str, protocol: str) -> None:
        """Measurements of the task's own before the concurrency levels; `measure(load, concurrency)` runs one."""

    def row(self, concurrency: int) -> dict:
        return {}

    def tail(self) -> dict:
        """The record's keys after the sweep rows."""
        return {}

    def comparison(self, rows: list[dict], reference: dict) -> dict:
        raise NotImplementedError


def _serving(server, env, repo: Path, server_log: Path, s: ServingSettings, entry: dict):
    """The given running server, or a new one on `repo` loading only this model (its log appended to)."""
    if server is not None:
        return contextlib.nullcontext(server)
    return serve(
        env, repo, server_log, s.http_port, s.grpc_port, s.startup_timeout_s, models=triton_models_of(entry)
    )  # fmt: skip


def run_sweep(
    sweep: TaskSweep, server_log: Path, env_dir: Path | None = None, server: TritonServer | None = None
) -> dict:
    """The sweep of one served model; returns its record (results/{target}/serving/{model}.json). `server`: one
    already serving the repository, used for the batching-on mode (else each mode starts its own)."""
    s = sweep.s
    env = ensure(env_dir)
    rows: list[dict] = []
    if any(server is None or batching != "on" for batching in sweep.batching):
        fresh_log(server_log)  # every server this job starts appends to it
    t0 = time.perf_counter()
    reference = sweep.reference()
    with tempfile.TemporaryDirectory(prefix="planforge-serving-") as tmp:
        tmp = Path(tmp)
        load = sweep.load(tmp)
        for batching in sweep.batching:
            repo = sweep.repository
            if batching == "off":
                repo = without_dynamic_batching(sweep.repository, tmp / "repo-no-batching")
            given = server if batching == "on" else None
            with _serving(given, env, repo, server_log, s, sweep.entry) as srv:
                log = srv.log

                def measure(what: Load, concurrency: int, protocol: str, srv=srv) -> dict:
                    return perf_analyzer(
                        env, srv, what.model, protocol, concurrency, s.requests, what.input_data, what.shape, tmp,
                        stability=s.stability_percentage, max_trials=s.max_trials, extra_args=what.extra,
                    )  # fmt: skip

                for protocol in s.protocols:
                    sweep.before_levels(lambda what, c, p=protocol: measure(what, c, p), batching, protocol)
                    for c in s.concurrency:
                        r = measure(load, c, protocol)
                        rows.append({"batching": batching, "protocol": protocol, **sweep.row(c), **r})
                        print(
                            f"{sweep.model} batching {batching} {protocol} c{c}: p50 {r['latency_ms']['p50']:.2f} ms, "
                            f"p99 {r['latency_ms']['p99']:.2f} ms, {r['throughput_infer_per_s']:.1f} {sweep.unit}",
                            flush=True,
                        )
    return {
        "status": "ok",
        **sweep.head(),
        "repository": str(sweep.repository),
        **sweep.inputs(),
        "requests_per_window": s.requests,
        "stability_percentage": s.stability_percentage,
        "max_trials": s.max_trials,
        "timer": sweep.timer,
        "serving_settings": sweep.index.get("serving", {}),
        "sweep": rows,
        **sweep.tail(),
        "in_process_reference": reference,
        "comparison": sweep.comparison(rows, reference),
        "server": {"log": str(log), "environment": env.versions()},
        "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(sweep.device),
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


def batching_gain_lines(rec: dict) -> list[str]:
    """The summary's lines on what dynamic batching gains at the top concurrency (`compare_batching`), per protocol."""
    return [
        f"- {rec['model']} {protocol}: dynamic batching gives **{g['gain']:.2f}×** the throughput at "
        f"concurrency {g['concurrency']} ({g['throughput_on']:.1f} vs {g['throughput_off']:.1f} infer/s)."
        for protocol, g in rec.get("comparison", {}).get("batching_gain_at_max_concurrency", {}).items()
    ]
