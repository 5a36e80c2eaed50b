"""Tracking (SAMURAI) through Triton's sequence batcher: the client side of the served stateful model.

The served model is `python_models.TrackerSequenceModel` (one `Tracker` per correlation id), written into the
repository by `served.SequenceModel`.

- `write_perf_input`: perf_analyzer --input-data JSON with one stream per val sequence;
- `SequenceClient`: the val sequences through the server, one correlation id each, several of them live at once;
- `TrackingSweep`: the task's part of the perf_analyzer sweep (`perf.run_sweep`: `--sequence-length`, concurrency =
  live sequences), beside the in-process per-frame time of the same tracker (results/{target}/serving/{model}.json);
- `evaluate_served_tracking` (`served_accuracy`): OTB scores of the replayed sequences vs `tasks.tracking.evaluate`
  with the in-process runner (results/{target}/serving/{model}_accuracy.json); an AUC difference above
  `AUC_TOLERANCE` fails the job;
- `summary_lines`: what the summary says of one served tracking model.
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.metrics import latency_stats
from workflow_scripts.models import get_family
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.perf import Load, TaskSweep
from workflow_scripts.serving.served import AccuracyJob, Checked, in_process_runner, served_backend, triton_models_of
from workflow_scripts.serving.server import TritonServer, fresh_log, serve
from workflow_scripts.tasks import tracking

AUC_TOLERANCE = 0.001  # served vs in-process AUC: the same tracker code on both sides


PERF_SEQUENCES = 4  # val sequences in the perf_analyzer input data (one stream each, round robin)
PERF_INPUT_BYTES = 256 * 2**20  # frames' bytes at most in that input data


def write_perf_input(dataset: Path, path: Path, count: int = PERF_SEQUENCES) -> tuple[int, int]:
    """perf_analyzer --input-data JSON: one stream per val sequence (its frames in order); returns (streams, frames).

    Frames travel as base64 of their raw bytes (a 1024 px frame as a JSON list of numbers would be ~10 MB);
    at most PERF_INPUT_BYTES of frames, so large frames get fewer streams (at least one). Every step carries
    BOX, that frame's true box: the model reads it on START only, so whichever step perf_analyzer starts a
    sequence on is prompted with the right box.
    """
    import base64

    vids = tracking.load_videos(dataset, "val")
    per_sequence = vids.frames[0].nbytes if len(vids) else 0
    n = min(count, len(vids), max(1, PERF_INPUT_BYTES // max(per_sequence, 1)))
    if len(vids) == 0:
        raise PlanforgeError(f"{tracking.index_path(dataset, 'val')}: no val sequences to send")
    shape = list(vids.frames.shape[2:])
    streams = [
        [
            {
                "FRAME": {"b64": base64.b64encode(vids.frames[s, f].tobytes()).decode(), "shape": shape},
                "BOX": [float(v) for v in vids.boxes[s, f]],
            }
            for f in range(vids.frames.shape[1])
        ]
        for s in range(n)
    ]
    path.write_text(json.dumps({"data": streams}))
    return n, int(vids.frames.shape[1])


class SequenceClient:
    """Whole sequences through the served model: START with the prompt box on frame 0, END on the last frame."""

    def __init__(self, server: TritonServer, model: str, inflight: int = 4) -> None:
        import tritonclient.http as httpclient

        self.http = httpclient
        self.server = server
        self.model = model
        self.inflight = inflight
        self.live_after_end: list[int] = []

    def frame(self, client, corrid: int, frame: np.ndarray, box=None, start=False, end=False):
        """One request; returns the InferResult (raises tritonclient's exception on an error answer)."""
        inputs = [self.http.InferInput("FRAME", [1, *frame.shape], "UINT8")]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(frame[None], dtype=np.uint8))
        if box is not None:
            inputs.append(self.http.InferInput("BOX", [1, 4], "FP32"))
            inputs[1].set_data_from_numpy(np.asarray(box, np.float32).reshape(1, 4))
        return client.infer(self.model, inputs, sequence_id=corrid, sequence_start=start, sequence_end=end)

    def sequence(self, corrid: int, frames: np.ndarray, first_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """boxes [F, 4] and scores [F] as `tasks.tracking.run_sequence` returns them (frame 0: the given box)."""
        client = self.http.InferenceServerClient(self.server.http_url)
        boxes, obj = np.zeros((len(frames), 4)), np.full(len(frames), np.nan)
        boxes[0] = first_box
        try:
            last = len(frames) - 1
            r = self.frame(client, corrid, frames[0], first_box, start=True, end=last == 0)
            for f in range(1, len(frames)):
                r = self.frame(client, corrid, frames[f], end=f == last)
                boxes[f], obj[f] = r.as_numpy("BOX").reshape(4), float(r.as_numpy("SCORE").reshape(-1)[0])
            self.live_after_end.append(int(r.as_numpy("LIVE_SEQUENCES").reshape(-1)[0]))
        except Exception as exc:  # tritonclient raises its own types; a dead server is the usual cause
            if not self.server.alive():
                raise self.server.failure(f"tritonserver stopped while serving {self.model}") from None
            raise PlanforgeError(f"{self.model}: sequence {corrid} through the server failed ({exc})") from None
        finally:
            client.close()
        return boxes, obj

    def replay(self, vids, n: int, first_id: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """Sequences 0..n-1, `inflight` of them live at once, correlation ids first_id + i."""
        with ThreadPoolExecutor(self.inflight) as pool:
            jobs = [pool.submit(self.sequence, first_id + i, vids.frames[i], vids.boxes[i, 0]) for i in range(n)]
            return [j.result() for j in jobs]


def score_sequences(results: list[tuple[np.ndarray, np.ndarray]], vids) -> dict:
    """The task's OTB scores of tracked sequences (the curves and means `tasks.tracking.evaluate` reports)."""
    curves = [tracking.sequence_curves(boxes, vids.boxes[i]) for i, (boxes, _) in enumerate(results)]
    per_seq = [{"sequence": i, **{k: round(v, 6) for k, v in tracking.scores(c).items()}} for i, c in enumerate(curves)]
    return {**tracking.scores(tracking.overall(curves)), "per_sequence": per_seq}


def in_process_tracker(fam, runner):
    """`new_tracker()` over the runner's model with the family's default settings (as `predictor`): what the served
    model runs."""
    facts = runner.facts()
    return lambda: fam.tracker(facts)


def in_process_frames(entry: dict, repository: Path, device: str, threads, dataset: Path, iterations: int) -> dict:
    """Per-frame `Tracker.track` of one live val sequence in this process (frames ping-pong), timed before the sweep."""
    fam = get_family(entry["family"])
    runner = in_process_runner(entry, repository, device, threads)
    vids = tracking.load_videos(dataset, "val")
    t = in_process_tracker(fam, runner)()
    t0 = time.perf_counter()
    t.start(vids.frames[0, 0], vids.boxes[0, 0])
    prompt = time.perf_counter() - t0
    order = tracking.pingpong_order(vids.frames.shape[1])
    for _ in range(2):
        t.track(vids.frames[0, next(order)])
    times = []
    for _ in range(iterations):
        frame = vids.frames[0, next(order)]
        t0 = time.perf_counter()
        t.track(frame)
        times.append(time.perf_counter() - t0)
    t.close()
    return {
        "frame_ms": latency_stats(times),
        "prompt_ms": round(prompt * 1000, 3),
        "iterations": iterations,
        "runner": runner.versions(),
        "threads": threads,
    }


def _serving(server, env, repository, server_log, startup_timeout, entry, http_port=None, grpc_port=None):
    """The given running server, or a new one loading only this model (its log truncated first)."""
    if server is not None:
        return contextlib.nullcontext(server)
    fresh_log(server_log)
    return serve(env, repository, server_log, http_port, grpc_port, startup_timeout, models=triton_models_of(entry))


class TrackingSweep(TaskSweep):
    """perf_analyzer sequence runs: `--sequence-length` = the val sequences' frames, concurrency = live sequences;
    the sequence batcher has no dynamic batching to switch off, so one mode."""

    batching = ("on",)
    unit = "frames/s"
    timer = (
        "perf_analyzer end to end per request (one frame of one sequence): client send → server (sequence "
        "batcher queue, Tracker.start or Tracker.track) → client receive; `concurrency` sequences live at once, "
        "each one request at a time (--serial-sequences); throughput is frames/s over all sequences; the first "
        "frame of every sequence (START, the prompt) is included"
    )

    def head(self) -> dict:
        e = self.entry
        return {
            "task": "tracking",
            "model": self.model,
            "target": self.target,
            "served_model": e["model"],
            "scheduler": e["scheduler"],
            "max_sequence_idle_us": e["max_sequence_idle_us"],
        }

    def reference(self) -> dict:
        iterations = max(20, min(self.s.requests, 50))
        return in_process_frames(self.entry, self.repository, self.device, self.threads, self.dataset, iterations)

    def load(self, tmp: Path) -> Load:
        self.streams, self.length = write_perf_input(self.dataset, tmp / "sequences.json")
        extra = ("--sequence-length", str(self.length), "--sequence-length-variation", "0", "--serial-sequences")
        return Load(self.entry["model"], str(tmp / "sequences.json"), extra=extra)

    def inputs(self) -> dict:
        return {
            "input_data": {"val_sequences": self.streams, "sequence_length": self.length, "inputs": ["FRAME", "BOX"]}
        }

    def row(self, concurrency: int) -> dict:
        return {"live_sequences": concurrency}

    def comparison(self, rows: list[dict], reference: dict) -> dict:
        protocols, concurrency = self.s.protocols, self.s.concurrency
        return {
            "overhead_vs_in_process_tracker": {
                protocol: {
                    "in_process_frame_p50_ms": reference["frame_ms"]["p50"],
                    "triton_p50_ms": c1["latency_ms"]["p50"],
                    "ratio": round(c1["latency_ms"]["p50"] / reference["frame_ms"]["p50"], 3),
                }
                for protocol in protocols
                for c1 in [r for r in rows if r["protocol"] == protocol and r["concurrency"] == min(concurrency)]
            },
            "throughput_gain_at_max_live_sequences": {
                protocol: round(top["throughput_infer_per_s"] / one["throughput_infer_per_s"], 3)
                for protocol in protocols
                for one in [r for r in rows if r["protocol"] == protocol and r["concurrency"] == min(concurrency)]
                for top in [r for r in rows if r["protocol"] == protocol and r["concurrency"] == max(concurrency)]
            },
        }


def evaluate_served_tracking(
    repository: Path,
    index: dict,
    model: str,
    target: str,
    dataset: Path,
    server_log: Path,
    max_sequences: int | None,
    startup_timeout: float,
    env_dir: Path | None = None,
    inflight: int = 4,
    tolerance: float = AUC_TOLERANCE,
    server: TritonServer | None = None,
) -> dict:
    """The val sequences replayed through the server (`inflight` live at once) vs `tasks.tracking.evaluate` in
    process. `server`: one already serving the repository (else this starts one, loading only this model)."""
    env = ensure(env_dir)
    entry = index["models"][model]
    device = "cpu" if index["device"] == "cpu" else index["device"]
    fam = get_family(entry["family"])
    runner = in_process_runner(entry, repository, device, index.get("threads"))
    local = tracking.evaluate(in_process_tracker(fam, runner), dataset, None, 1, max_sequences, "in-process")
    del runner
    vids = tracking.load_videos(dataset, "val")
    n = local["sequences"]
    t0 = time.perf_counter()
    with _serving(server, env, repository, server_log, startup_timeout, entry) as server:
        client = SequenceClient(server, entry["model"], inflight)
        t1 = time.perf_counter()
        results = client.replay(vids, n)
        seconds = time.perf_counter() - t1
    served = score_sequences(results, vids)
    delta = served["auc"] - local["auc"]
    return {
        "status": "ok",
        "task": "tracking",
        "model": model,
        "backend": "triton",
        "precision": entry["precision"],
        "target": target,
        "served_model": entry["model"],
        "sequences": n,
        "frames": int(sum(len(b) for b, _ in results)),
        **{k: served[k] for k in ("auc", "success_50", "precision_20", "norm_precision", "per_sequence")},
        "client": f"one correlation id per val sequence, START + true box on frame 0, END on the last; "
        f"{min(inflight, n)} sequences live at once",
        "live_sequences_after_end": client.live_after_end,
        "reference": {
            "backend": served_backend(entry)[0],
            "precision": served_backend(entry)[1],
            "device": device,
            "what": "tasks.tracking.evaluate with the runner of the same checkpoint on the served backend and "
            "precision, the family's default tracker settings (as served), in this process",
            "auc": local["auc"],
            "per_sequence_auc": [r["auc"] for r in local["per_sequence"]],
            "delta_auc": round(delta, 6),
            "tolerance": tolerance,
            "matches": abs(delta) <= tolerance,
            "seconds": local["seconds"],
        },
        "seconds": round(seconds, 2),
        "wall_seconds_with_server_start": round(time.perf_counter() - t0, 2),
        "server": {"log": str(server.log), "environment": env.versions()},
    }


def served_accuracy(job: AccuracyJob) -> Checked:
    """The val sequences replayed through the server vs `tasks.tracking.evaluate` in process."""
    s = job.settings
    record = evaluate_served_tracking(
        job.repository, job.index, job.model, job.target, job.dataset, job.server_log, s.max_images,
        s.startup_timeout_s,
    )  # fmt: skip
    ref = record["reference"]
    problem = None
    if not ref["matches"]:
        problem = (
            f"AUC through the server {record['auc']:.4f} differs from in-process torch fp32 "
            f"{ref['auc']:.4f} by {ref['delta_auc']:+.4f} (tolerance {ref['tolerance']:g}); the served tracker or "
            "its requests differ from the in-process path"
        )
    line = (
        f"{record['sequences']} sequences through {record['served_model']}: AUC {record['auc']:.4f}, "
        f"in-process {ref['auc']:.4f} (Δ {ref['delta_auc']:+.5f})"
    )
    return Checked(record, problem, line)


def summary_lines(rec: dict, acc: dict | None) -> list[str]:
    """The summary's lines on one served tracking model: the served frame against `Tracker.track` in process, what
    more live sequences gain, and the AUC through the sequence batcher."""
    lines = []
    comp = rec.get("comparison", {})
    for protocol, o in comp.get("overhead_vs_in_process_tracker", {}).items():
        gain = comp.get("throughput_gain_at_max_live_sequences", {}).get(protocol)
        top = max(r["concurrency"] for r in rec["sweep"])
        lines.append(
            f"- {rec['model']} {protocol}: served frame p50 {o['triton_p50_ms']:.2f} ms vs in-process "
            f"Tracker.track {o['in_process_frame_p50_ms']:.2f} ms (**{o['ratio']:.2f}×**)"
            + (f"; {top} live sequences give **{gain:.2f}×** the frames/s of one." if gain else ".")
        )
    if acc:
        ref = acc["reference"]
        lines.append(
            f"- {rec['model']} tracking through the sequence batcher ({acc['sequences']} val sequences, one "
            f"correlation id each): AUC {acc['auc']:.4f} vs in-process torch {ref['precision']} {ref['auc']:.4f} "
            f"(Δ {ref['delta_auc']:+.5f}, {'matches' if ref['matches'] else '**DIFFERS**'} within {ref['tolerance']:g})."
        )
    return lines
