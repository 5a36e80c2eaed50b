"""results/{target}/serving/{model}.json (+ .csv): a perf_analyzer sweep through a real tritonserver.

For each concurrency level (default 1..8) and protocol (HTTP, gRPC), perf_analyzer sends windows of requests to the
served model and reports p50/p90/p95/p99, throughput and where the time went (client send, network, server queue,
compute input/infer/output, client receive); beside it, the same model in this process, timed in the same job. The
loop is `perf.run_sweep`; the model's task supplies what it sends and compares (`tasks.TaskSpec.served.sweep`):
- detection (`serving.detection`): one real validation image per request to the ensemble (preprocess → model →
  postprocess), with the repository's dynamic batching and on a copy without it, and the bare inference model at
  concurrency 1, to compare with the in-process ONNX Runtime bench;
- vla (`serving.vla`, Pi0): one python-backend model, val episodes as input data, batching on and off;
- tracking (`serving.tracking`, SAMURAI): one stateful model behind the sequence batcher, whole val sequences
  (`--sequence-length`, concurrency = live sequences).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, read_json, run_cli, write_json
from workflow_scripts.models import FAMILIES
from workflow_scripts.plan.settings import ServingSettings
from workflow_scripts.serving import hooks
from workflow_scripts.serving.perf import run_sweep, write_csv


def sweep_model(
    repository: Path,
    model: str,
    target: str,
    dataset: Path,
    server_log: Path,
    s: ServingSettings,
    env_dir: Path | None = None,
    bench_b1: Path | None = None,
) -> dict:
    """The sweep of one model of the repository by its task's hooks; returns the serving record. `s`: the serving
    job's settings (concurrency levels, protocols, requests per window, stability, ports, startup timeout)."""
    index = read_json(repository / "planforge.json")
    if model not in index["models"]:
        raise PlanforgeError(f"{repository}: has no model {model!r} (it has {sorted(index['models'])}); rerun triton")
    task = FAMILIES[index["models"][model]["family"]].task
    sweep = hooks.sweep(task)(repository, index, model, target, dataset, s, bench_b1)
    return run_sweep(sweep, server_log, env_dir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True, help="artifacts/triton/{target}")
    p.add_argument("--model", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--dataset", type=Path, required=True, help="the val split the requests are made of")
    p.add_argument("--bench-b1", type=Path, default=None, help="in-process ONNX Runtime batch-1 bench JSON")
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.ServingSettings")
    p.add_argument("--server-log", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the JSON; the CSV goes beside it")
    a = p.parse_args(argv)
    s = ServingSettings.from_json(a.settings)
    record = sweep_model(a.repository, a.model, a.target, a.dataset, a.server_log, s, bench_b1=a.bench_b1)
    record["config_hash"] = s.config_hash
    write_csv(record, a.out.with_suffix(".csv"))
    write_json(a.out, record)
    print(f"{a.out}: {len(record['sweep'])} measurements in {record['seconds']} s; {json.dumps(record['comparison'])}")


if __name__ == "__main__":
    run_cli(main)
