"""Pi0 (task vla) through Triton: the client side of the served `{model}` python-backend model.

- `episode_request`: one val episode as the model's request tensors (IMAGES, STATE, TOKENS, TOKEN_MASK, NOISE);
- `write_perf_input`: perf_analyzer --input-data JSON of the first val episodes (their own noise);
- `ActionClient`: episodes → actions through the server (tritonclient HTTP, a few requests in flight);
- `VlaSweep`: the task's part of the perf_analyzer sweep (`perf.run_sweep`: dynamic batching on and off, every
  protocol and concurrency), beside the in-process torch chunk timed in the same job
  (results/{target}/serving/{model}.json);
- `evaluate_served_actions` (`served_accuracy`): the val episodes through the server vs the in-process torch FP32
  actions of the same checkpoint, by the task's own loop (`tasks.vla.evaluate`)
  (results/{target}/serving/{model}_accuracy.json); a max abs error above `ACTION_TOLERANCE` fails the job;
- `summary_lines`: what the summary says of one served vla model.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.metrics import latency_stats
from workflow_scripts.models import get_family
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.perf import Load, TaskSweep, batching_gain_lines, compare_batching
from workflow_scripts.serving.served import AccuracyJob, Checked, in_process_runner, served_backend, triton_models_of
from workflow_scripts.serving.server import TritonServer, fresh_log, serve
from workflow_scripts.tasks import vla

# Served vs in-process actions on the same checkpoint, noise and device (FP32): the same code on both sides,
# so only the batch the dynamic batcher forms can change the float summation order. Max abs error allowed:
ACTION_TOLERANCE = 1e-4
INPUT_TYPES = {"IMAGES": np.uint8, "STATE": np.float32, "TOKENS": np.int64, "TOKEN_MASK": np.bool_, "NOISE": np.float32}
DATATYPES = {"IMAGES": "UINT8", "STATE": "FP32", "TOKENS": "INT64", "TOKEN_MASK": "BOOL", "NOISE": "FP32"}
PERF_EPISODES = 4  # val episodes in the perf_analyzer input data (cycled through)


def episode_request(episodes: dict, i: int, noise: bool = True) -> dict[str, np.ndarray]:
    """Episode `i` of an episodes batch as one request's tensors (no batch dimension)."""
    out = {
        "IMAGES": episodes["images"][i],
        "STATE": episodes["state"][i],
        "TOKENS": episodes["token_ids"][i],
        "TOKEN_MASK": episodes["token_mask"][i],
    }
    if noise:
        out["NOISE"] = episodes["noise"][i]
    return {k: np.ascontiguousarray(v, dtype=INPUT_TYPES[k]) for k, v in out.items()}


def write_perf_input(dataset: Path, path: Path, count: int = PERF_EPISODES) -> int:
    """perf_analyzer --input-data JSON: the first `count` val episodes, each with its own noise; returns how many."""
    eps = vla.load_episodes(dataset, "val")
    n = min(count, len(eps))
    if n == 0:
        raise PlanforgeError(f"{vla.index_path(dataset, 'val')}: no val episodes to send")
    batch = eps.take(slice(0, n))
    data = [
        {k: {"content": v.reshape(-1).tolist(), "shape": list(v.shape)} for k, v in episode_request(batch, i).items()}
        for i in range(n)
    ]
    path.write_text(json.dumps({"data": data}))
    return n


class ActionClient:
    """Episodes → actions [B, chunk, dim] through the served model, one request per episode, `inflight` at a time."""

    def __init__(self, server: TritonServer, model: str, inflight: int = 4, noise: bool = True) -> None:
        import tritonclient.http as httpclient

        self.http = httpclient
        self.server = server
        self.model = model
        self.noise = noise
        self.client = httpclient.InferenceServerClient(server.http_url, concurrency=inflight)
        self.noise_seeds: list[int] = []

    def request(self, tensors: dict[str, np.ndarray]):
        inputs = []
        for name, value in tensors.items():
            inp = self.http.InferInput(name, [1, *value.shape], DATATYPES.get(name, "FP32"))
            inp.set_data_from_numpy(value[None])
            inputs.append(inp)
        outs = [self.http.InferRequestedOutput("ACTIONS"), self.http.InferRequestedOutput("NOISE_SEED")]
        return self.client.async_infer(self.model, inputs, outputs=outs)

    def __call__(self, episodes: dict) -> np.ndarray:
        pending = [self.request(episode_request(episodes, i, self.noise)) for i in range(len(episodes["images"]))]
        actions = []
        for p in pending:
            try:
                r = p.get_result()
            except Exception as exc:  # tritonclient raises its own types; a dead server is the usual cause
                if not self.server.alive():
                    raise self.server.failure(f"tritonserver stopped while serving {self.model}") from None
                raise PlanforgeError(f"{self.model}: inference through the server failed ({exc})") from None
            actions.append(r.as_numpy("ACTIONS"))
            self.noise_seeds.append(int(r.as_numpy("NOISE_SEED").reshape(-1)[0]))
        return np.concatenate(actions)


def in_process_chunk(entry: dict, repository: Path, device: str, threads, dataset: Path, iterations: int) -> dict:
    """One episode's chunk in this process (preprocess + Pi0Chunk, batch 1), timed right before the sweep."""
    fam = get_family(entry["family"])
    runner = in_process_runner(entry, repository, device, threads)
    episode = vla.load_episodes(dataset, "val").take(slice(0, 1))
    geo = fam.geometry(runner.model)
    prepared = runner.prepare(fam.preprocess(episode, geo))
    for _ in range(3):
        runner(fam.preprocess(episode, geo))
    chunk, pipeline = [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        runner.infer(prepared)
        chunk.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        runner(fam.preprocess(episode, geo))
        pipeline.append(time.perf_counter() - t0)
    return {
        "chunk_ms": latency_stats(chunk),
        "pipeline_ms": latency_stats(pipeline),
        "iterations": iterations,
        "runner": runner.versions(),
        "threads": threads,
    }


class VlaSweep(TaskSweep):
    """The served Pi0 model with the first val episodes (their own noise) as input data, dynamic batching on and
    off, beside the in-process torch chunk."""

    unit = "chunks/s"
    timer = (
        "perf_analyzer end to end per request: client send → server (queue, preprocess, prefix, "
        "denoising steps) → client receive; one episode (one action chunk) per request, `concurrency` in flight"
    )

    def head(self) -> dict:
        return {"task": "vla", "model": self.model, "target": self.target, "served_model": self.entry["model"]}

    def reference(self) -> dict:
        return in_process_chunk(
            self.entry, self.repository, self.device, self.threads, self.dataset, min(self.s.requests, 50)
        )  # fmt: skip

    def load(self, tmp: Path) -> Load:
        self.episodes = write_perf_input(self.dataset, tmp / "episodes.json")
        return Load(self.entry["model"], str(tmp / "episodes.json"))

    def inputs(self) -> dict:
        info = {"val_episodes": self.episodes, "inputs": sorted(DATATYPES), "noise": "each episode's own (NOISE given)"}
        return {"input_data": info}

    def comparison(self, rows: list[dict], reference: dict) -> dict:
        comparison = {"batching_gain_at_max_concurrency": compare_batching(rows, max(self.s.concurrency))}
        comparison["overhead_vs_in_process_torch"] = {
            protocol: {
                "in_process_chunk_p50_ms": reference["chunk_ms"]["p50"],
                "in_process_pipeline_p50_ms": reference["pipeline_ms"]["p50"],
                "triton_p50_ms": c1["latency_ms"]["p50"],
                "pipeline_ratio": round(c1["latency_ms"]["p50"] / reference["pipeline_ms"]["p50"], 3),
            }
            for protocol in self.s.protocols
            for c1 in [r for r in rows if r["protocol"] == protocol and r["batching"] == "on" and r["concurrency"] == 1]
        }
        return comparison


def evaluate_served_actions(
    repository: Path,
    index: dict,
    model: str,
    target: str,
    dataset: Path,
    server_log: Path,
    batch: int,
    max_images: int | None,
    startup_timeout: float,
    env_dir: Path | None = None,
    tolerance: float = ACTION_TOLERANCE,
) -> dict:
    """The val episodes (their own noise) through the server vs in-process torch FP32 on the same checkpoint."""
    env = ensure(env_dir)
    entry = index["models"][model]
    device = "cpu" if index["device"] == "cpu" else index["device"]
    fam = get_family(entry["family"])
    runner = in_process_runner(entry, repository, device, index.get("threads"))
    fresh_log(server_log)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="planforge-served-actions-") as tmp:
        ref = Path(tmp) / "in_process.actions.npz"
        local = vla.evaluate(vla.predictor(fam, runner, None), dataset, None, batch, max_images, "in-process", save=ref)
        del runner
        with serve(env, repository, server_log, timeout=startup_timeout, models=triton_models_of(entry)) as server:
            client = ActionClient(server, entry["model"])
            served = vla.evaluate(client, dataset, None, batch, max_images, f"{model} via triton", reference=ref)
    record = {
        "status": "ok",
        "task": "vla",
        "model": model,
        "backend": "triton",
        "precision": entry["precision"],
        "target": target,
        "served_model": entry["model"],
        **{k: served[k] for k in ("episodes", "chunk_shape", "action_mse", "action_max_abs", "per_dim_max_abs")},
        "noise": "each episode's own, sent as NOISE",
        "noise_seeds": sorted(set(client.noise_seeds)),
        "reference": {
            "backend": served_backend(entry)[0],
            "precision": served_backend(entry)[1],
            "device": device,
            "what": "the same checkpoint on the served backend and precision in this process, the accuracy jobs' "
            "runner and loop (tasks.vla.evaluate)",
            "seconds": local["seconds"],
            "tolerance_max_abs": tolerance,
            "matches": served["action_max_abs"] <= tolerance,
        },
        "seconds": served["seconds"],
        "wall_seconds_with_server_start": round(time.perf_counter() - t0, 2),
        "server": {"log": str(server_log), "environment": env.versions()},
    }
    if served["episodes"] != local["episodes"]:
        raise PlanforgeError(
            f"{model}: {served['episodes']} episodes through the server, {local['episodes']} in-process"
        )
    return record


def served_accuracy(job: AccuracyJob) -> Checked:
    """The val episodes through the server vs in-process on the served backend and precision."""
    s = job.settings
    record = evaluate_served_actions(
        job.repository, job.index, job.model, job.target, job.dataset, job.server_log, s.batch, s.max_images,
        s.startup_timeout_s,
    )  # fmt: skip
    ref = record["reference"]
    problem = None
    if not ref["matches"]:
        problem = (
            f"actions through the server differ from in-process torch fp32 by up to "
            f"{record['action_max_abs']:.3g} (tolerance {ref['tolerance_max_abs']:g}); the served model or its "
            "inputs differ from the in-process path"
        )
    line = (
        f"{record['episodes']} episodes through {record['served_model']}: action MSE "
        f"{record['action_mse']:.3g}, max abs {record['action_max_abs']:.3g} vs in-process torch fp32"
    )
    return Checked(record, problem, line)


def summary_lines(rec: dict, acc: dict | None) -> list[str]:
    """The summary's lines on one served vla model: what dynamic batching gains, the served chunk against the
    in-process one, and the served actions against in-process."""
    lines = batching_gain_lines(rec)
    for protocol, o in rec.get("comparison", {}).get("overhead_vs_in_process_torch", {}).items():
        lines.append(
            f"- {rec['model']} {protocol} at concurrency 1: served action chunk p50 {o['triton_p50_ms']:.2f} ms vs "
            f"in-process torch preprocess + chunk {o['in_process_pipeline_p50_ms']:.2f} ms "
            f"(**{o['pipeline_ratio']:.2f}×**)."
        )
    if acc:
        ref = acc["reference"]
        lines.append(
            f"- {rec['model']} actions through the server vs in-process torch {ref['precision']} on {acc['episodes']} "
            f"episodes (same noise): MSE {acc['action_mse']:.2g}, max abs {acc['action_max_abs']:.2g} "
            f"({'matches' if ref['matches'] else '**DIFFERS**'} within {ref['tolerance_max_abs']:g})."
        )
    return lines
