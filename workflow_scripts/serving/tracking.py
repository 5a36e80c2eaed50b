"""Tracking (SAMURAI) through Triton's sequence batcher: one stateful python-backend model, its client side.

- `TrackerSequenceModel`: the served model. `sequence_batching` with the oldest strategy and the control
  inputs START, END, READY (int32 0/1) and CORRID (uint64); one `Tracker` (the family's, `Tracker.start` /
  `track` / `close`) per correlation id, held by the model instance the sequence is bound to;
- `tracking_model`: its repository entry (config.pbtxt, shim, the prepared checkpoint);
- `write_perf_input`: perf_analyzer --input-data JSON with one stream per val sequence;
- `replay`: the val sequences through the server, one correlation id each, all of them live at once;
- `run_tracking_sweep`: perf_analyzer sequence sweep (`--sequence-length`, concurrency = live sequences),
  beside the in-process per-frame time of the same tracker (results/{target}/serving/{model}.json);
- `evaluate_served_tracking`: OTB scores of the replayed sequences vs `tasks.tracking.evaluate` with the
  in-process torch runner (results/{target}/serving/{model}_accuracy.json).

Per request (batch dimension first, added by Triton): FRAME uint8 [H, W, 3] (any H, W; fixed within a
sequence), BOX fp32 [4] xywh pixels (read on START only, where it is required); outputs BOX fp32 [4] (the
prompt frame: the box of its mask), SCORE fp32 [1] (object score logit; NaN on the prompt frame) and
LIVE_SEQUENCES int32 [1] (trackers the instance holds after this request). The flags START = 1 and END = 2
are bits of one value: a one-request sequence is START|END (started, answered, closed). A tracker is
dropped on END, and by the model's own reaper when its sequence has been idle for
`max_sequence_idle_microseconds` (Triton forgets such a sequence without telling the model), so state
never outlives its sequence; every drop is one line in the server log ("reaped sequence ...").
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from workflow_scripts.core.envinfo import environment
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.metrics import latency_stats
from workflow_scripts.core.runner_facts import RunnerFacts
from workflow_scripts.models import BadImage, check_image, get_family
from workflow_scripts.plan.settings import ServingSettings
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.python_models import BadInput, _Model
from workflow_scripts.serving.repository import (
    _tensor,
    backend_params,
    in_process_runner,
    model_config,
    served_backend,
    shim,
    triton_models_of,
)
from workflow_scripts.serving.server import TritonServer, fresh_log, serve
from workflow_scripts.tasks import tracking

START, END = 1, 2  # sequence flag bits (as Triton's TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END)
SEQUENCE_IDLE_US = 5_000_000  # default max_sequence_idle_microseconds (serving.sequence_idle_us)
AUC_TOLERANCE = 0.001  # served vs in-process AUC: the same tracker code on both sides
CONTROLS = {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END", "READY": "CONTROL_SEQUENCE_READY"}
INPUTS = {"FRAME": ("TYPE_UINT8", [-1, -1, 3]), "BOX": ("TYPE_FP32", [4])}
OUTPUTS = {"BOX": ("TYPE_FP32", [4]), "SCORE": ("TYPE_FP32", [1]), "LIVE_SEQUENCES": ("TYPE_INT32", [1])}


# -- the served model (runs in the python backend's stub) -----------------------------------------------------
class TrackerSequenceModel(_Model):
    """One `Tracker` per live sequence (correlation id); requests of one sequence arrive in order, one per batch."""

    def initialize(self, args: dict) -> None:
        kind = args.get("model_instance_kind", "CPU")
        self.device = f"cuda:{args.get('model_instance_device_id', 0)}" if kind == "GPU" else "cpu"
        self.instance = args.get("model_instance_name", "")
        super().initialize(args)

    def setup(self) -> None:
        try:
            import torch
        except ImportError as exc:
            import os

            raise ImportError(
                f"{exc}: the tracking model needs torch and transformers from the workflow's Python "
                f"(PLANFORGE_WORKFLOW_SITE_PACKAGES={os.environ.get('PLANFORGE_WORKFLOW_SITE_PACKAGES')})"
            ) from None
        threads = int(self.params.get("threads") or 0)
        if threads and self.device == "cpu":
            torch.set_num_threads(threads)
        self.runner = self.served_runner(self.device, threads or None)
        if self.runner is None:  # torch FP32 eager, as the family loads it
            self.facts = RunnerFacts.eager(self.family.load_torch(self.model_dir / "checkpoint.pt", self.device).eval())
        else:  # the bench's runner: how it holds and runs the model
            self.facts = self.runner.facts()
        self.idle_s = int(self.params["max_sequence_idle_us"]) / 1e6
        self.trackers: dict[int, object] = {}
        self.last_seen: dict[int, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.reaper = threading.Thread(target=self._reap_loop, name="planforge-reaper", daemon=True)
        self.reaper.start()

    def log(self, message: str) -> None:
        self.pb.Logger.log_info(f"{self.instance}: {message}")

    # -- state ---------------------------------------------------------------------------------------------
    def _drop(self, corrid: int, why: str) -> None:
        tracker = self.trackers.pop(corrid, None)
        self.last_seen.pop(corrid, None)
        if tracker is not None:
            tracker.close()
            self.log(f"reaped sequence {corrid} ({why}); live sequences {len(self.trackers)}")

    def reap_idle(self, now: float) -> None:
        """Drop trackers whose last request is older than max_sequence_idle_microseconds (call under the lock)."""
        for corrid, seen in list(self.last_seen.items()):
            if now - seen > self.idle_s:
                self._drop(corrid, f"idle {now - seen:.1f} s > max_sequence_idle {self.idle_s:g} s")

    def _reap_loop(self) -> None:
        while not self.stopping.wait(max(0.05, self.idle_s / 4)):
            with self.lock:
                self.reap_idle(time.monotonic())

    # -- requests ------------------------------------------------------------------------------------------
    def _control(self, request, name: str) -> int:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:  # the sequence batcher fills every control input; its absence is a config fault
            raise BadInput(f"{name}: missing control input; serve this model with its sequence_batching config")
        return int(tensor.as_numpy().reshape(-1)[0])

    def _frame(self, request) -> np.ndarray:
        frame_t = self.pb.get_input_tensor_by_name(request, "FRAME")
        if frame_t is None:
            raise BadInput("FRAME: missing; every request of a sequence carries its frame (uint8 [H, W, 3])")
        frames = frame_t.as_numpy()
        if len(frames) != 1:
            raise BadInput(f"FRAME: a batch of {len(frames)}; send one frame per request (batch 1)")
        try:
            check_image(frames[0], "FRAME")
        except BadImage as exc:
            raise BadInput(str(exc)) from None
        return frames[0]

    def start(self, request, corrid: int, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """A START request: its BOX prompts a fresh tracker for the sequence (a live one is restarted)."""
        box_t = self.pb.get_input_tensor_by_name(request, "BOX")
        if box_t is None:
            raise BadInput(
                f"BOX: missing on the START request of sequence {corrid}; the first frame carries the "
                "prompt box (fp32 [4], x y w h pixels)"
            )
        box = box_t.as_numpy().reshape(-1).astype(np.float64)
        if box.size != 4 or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            raise BadInput(f"BOX: expected x y w h with w, h > 0; got {box.tolist()} (sequence {corrid})")
        if corrid in self.trackers:
            self._drop(corrid, "restarted by START")
        tracker = self.family.tracker(self.facts)  # as `in_process_tracker`
        out_box = tracker.start(frame, box)
        self.trackers[corrid] = tracker
        return out_box, np.nan

    def live_tracker(self, corrid: int, frame: np.ndarray):
        """The live tracker of a later request's sequence; BadInput if there is none or the frame size changed."""
        tracker = self.trackers.get(corrid)
        if tracker is None:
            raise BadInput(
                f"CORRID: sequence {corrid} has no live tracker (never started, ended, or reaped after "
                f"{self.idle_s:g} s idle); send its first frame with START and BOX"
            )
        if frame.shape[:2] != tracker.frame_shape:
            h, w = tracker.frame_shape
            raise BadInput(f"FRAME: {frame.shape[0]}x{frame.shape[1]}, but sequence {corrid} is {h}x{w}")
        return tracker

    def answer(self, corrid: int, flags: int, out_box, score: float) -> dict[str, np.ndarray]:
        self.last_seen[corrid] = time.monotonic()
        if flags & END:
            self._drop(corrid, "END")
        return {
            "BOX": np.asarray(out_box, np.float32).reshape(1, 4),
            "SCORE": np.asarray([[score]], np.float32),
            "LIVE_SEQUENCES": np.asarray([[len(self.trackers)]], np.int32),
        }

    def track_batch(self, later: list[tuple]) -> list:
        """The later (non-START) requests of one batch: one `track_many` call where the family has one (SAMURAI
        encodes all their frames in one image-encoder batch); if it fails, each sequence is stepped alone so that
        one sequence's failure is its own error answer. Returns (box, score) or the exception, per request."""
        trackers, frames = [x[3] for x in later], [x[2] for x in later]
        many = getattr(self.family, "track_many", None)
        if many is not None and len(later) > 1:
            try:
                return many(trackers, frames)
            except Exception:  # noqa: BLE001 - stepped one by one below, each failure answered on its own
                pass
        out = []
        for t, f in zip(trackers, frames):
            try:
                out.append(t.track(f))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out

    def empty(self) -> dict[str, np.ndarray]:
        live = np.asarray([[len(self.trackers)]], np.int32)
        return {
            "BOX": np.zeros((1, 4), np.float32),
            "SCORE": np.full((1, 1), np.nan, np.float32),
            "LIVE_SEQUENCES": live,
        }

    def execute(self, requests):
        """START requests are answered in order; the batch's later requests are stepped together (`track_batch`)."""
        responses: list = [None] * len(requests)
        later = []  # (index, corrid, frame, tracker, flags)
        with self.lock:
            self.reap_idle(time.monotonic())
            for i, request in enumerate(requests):
                try:
                    if not self._control(request, "READY"):  # a slot without a request: nothing to track
                        responses[i] = self.respond(self.empty())
                        continue
                    corrid = self._control(request, "CORRID")
                    flags = (START if self._control(request, "START") else 0) | (
                        END if self._control(request, "END") else 0
                    )
                    frame = self._frame(request)
                    if flags & START:
                        responses[i] = self.respond(self.answer(corrid, flags, *self.start(request, corrid, frame)))
                    else:
                        later.append((i, corrid, frame, self.live_tracker(corrid, frame), flags))
                except BadInput as exc:  # the client's fault: one line naming the input
                    responses[i] = self.error(str(exc), invalid_argument=True)
                except Exception as exc:  # the model failed on this sequence: the others go on
                    responses[i] = self.error(f"{type(exc).__name__}: {exc}")
            if later:
                for (i, corrid, _, _, flags), result in zip(later, self.track_batch(later)):
                    if isinstance(result, Exception):
                        responses[i] = self.error(f"{type(result).__name__}: {result}")
                    else:
                        responses[i] = self.respond(self.answer(corrid, flags, *result))
        return responses

    def finalize(self) -> None:
        self.stopping.set()
        with self.lock:
            for corrid in list(self.trackers):
                self._drop(corrid, "model unloaded")


# -- repository entry -----------------------------------------------------------------------------------------
def sequence_batching(idle_us: int, max_candidates: int, preferred: list[int], delay_us: int) -> str:
    """The config.pbtxt block: the oldest strategy, the four control inputs, the idle timeout."""
    controls = [
        f'    {{ name: "{n}" control [ {{ kind: {k} int32_false_true: [ 0, 1 ] }} ] }}' for n, k in CONTROLS.items()
    ]
    controls.append('    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }')
    pref = [b for b in preferred if b <= max_candidates]
    pref_text = f"preferred_batch_size: [ {', '.join(map(str, pref))} ] " if pref else ""
    return (
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {int(idle_us)}\n"
        f"  oldest {{ max_candidate_sequences: {max_candidates} {pref_text}max_queue_delay_microseconds: {delay_us} }}\n"
        "  control_input [\n" + ",\n".join(controls) + "\n  ]\n}\n"
    )


def tracking_model(tmp: Path, name: str, m: dict, gpu: bool, threads: int | None, serving: dict) -> dict:
    """`{name}`: the stateful python-backend model (`TrackerSequenceModel`) on the prepared checkpoint, copied
    beside it; the sequence batcher's oldest strategy with `max_batch_size` candidate sequences (a sequence
    beyond them waits in Triton's backlog until one ends); each instance holds the trackers of its sequences."""
    (tmp / name / "1").mkdir(parents=True)
    shutil.copy2(m["checkpoint"], tmp / name / "1" / "checkpoint.pt")
    (tmp / name / "1" / "model.py").write_text(shim("TrackerSequenceModel", "tracking"))
    idle_us = int(serving.get("sequence_idle_us") or SEQUENCE_IDLE_US)
    mbs = serving["max_batch_size"]
    backend, precision, options = served_backend(m)
    params = {
        "family": m["family"],
        "threads": threads or 0,
        "max_sequence_idle_us": idle_us,
        **backend_params(m),
    }
    config = model_config(
        name,
        [_tensor(k, t, d, optional=k == "BOX") for k, (t, d) in INPUTS.items()],
        [_tensor(k, t, d) for k, (t, d) in OUTPUTS.items()],
        mbs,
        "KIND_GPU" if gpu else "KIND_CPU",
        serving["instances"],
        None,
        params,
    )
    config += sequence_batching(idle_us, mbs, serving.get("preferred_batch_sizes") or [], serving["max_queue_delay_us"])
    (tmp / name / "config.pbtxt").write_text(config)
    return {
        "family": m["family"],
        "task": "tracking",
        "model": name,
        "backend": backend,
        "precision": precision,
        "backend_options": options,
        "checkpoint": str(m["checkpoint"]),
        "scheduler": "sequence_batching oldest",
        "max_sequence_idle_us": idle_us,
        "inputs": {k: {"datatype": t.removeprefix("TYPE_"), "dims": d} for k, (t, d) in INPUTS.items()},
        "outputs": {k: {"datatype": t.removeprefix("TYPE_"), "dims": d} for k, (t, d) in OUTPUTS.items()},
        "optional_inputs": ["BOX"],
        "controls": {**{k: "INT32" for k in CONTROLS}, "CORRID": "UINT64"},
    }


# -- client side ----------------------------------------------------------------------------------------------
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
    order = tracking._pingpong(vids.frames.shape[1])
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


def run_tracking_sweep(
    repository: Path,
    index: dict,
    model: str,
    target: str,
    dataset: Path,
    server_log: Path,
    s: ServingSettings,
    env_dir: Path | None = None,
    server: TritonServer | None = None,
) -> dict:
    """perf_analyzer sequence runs: `--sequence-length` = the val sequences' frames, concurrency = live sequences.

    `s`: the serving job's settings (as `sweep.run_sweep`); `server`: one already serving the repository (else
    this starts one, loading only this model)."""
    from workflow_scripts.serving.sweep import perf_analyzer

    concurrency, protocols, requests = s.concurrency, s.protocols, s.requests
    startup_timeout, http_port, grpc_port = s.startup_timeout_s, s.http_port, s.grpc_port
    stability, max_trials = s.stability_percentage, s.max_trials

    env = ensure(env_dir)
    entry = index["models"][model]
    device = "cpu" if index["device"] == "cpu" else index["device"]
    rows = []
    t0 = time.perf_counter()
    reference = in_process_frames(entry, repository, device, index.get("threads"), dataset, max(20, min(requests, 50)))
    with tempfile.TemporaryDirectory(prefix="planforge-serving-") as tmp:
        tmp = Path(tmp)
        streams, length = write_perf_input(dataset, tmp / "sequences.json")
        extra = ("--sequence-length", str(length), "--sequence-length-variation", "0", "--serial-sequences")
        with _serving(server, env, repository, server_log, startup_timeout, entry, http_port, grpc_port) as server:
            for protocol in protocols:
                for c in concurrency:
                    r = perf_analyzer(
                        env,
                        server,
                        entry["model"],
                        protocol,
                        c,
                        requests,
                        str(tmp / "sequences.json"),
                        None,
                        tmp,
                        stability,
                        max_trials,
                        extra,
                    )
                    rows.append({"batching": "on", "protocol": protocol, "live_sequences": c, **r})
                    print(
                        f"{model} {protocol} {c} live sequences: p50 {r['latency_ms']['p50']:.2f} ms, "
                        f"p99 {r['latency_ms']['p99']:.2f} ms, {r['throughput_infer_per_s']:.1f} frames/s",
                        flush=True,
                    )
    comparison = {
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
    return {
        "status": "ok",
        "task": "tracking",
        "model": model,
        "target": target,
        "served_model": entry["model"],
        "scheduler": entry["scheduler"],
        "max_sequence_idle_us": entry["max_sequence_idle_us"],
        "repository": str(repository),
        "input_data": {"val_sequences": streams, "sequence_length": length, "inputs": ["FRAME", "BOX"]},
        "requests_per_window": requests,
        "stability_percentage": stability,
        "max_trials": max_trials,
        "timer": "perf_analyzer end to end per request (one frame of one sequence): client send → server (sequence "
        "batcher queue, Tracker.start or Tracker.track) → client receive; `concurrency` sequences live at once, "
        "each one request at a time (--serial-sequences); throughput is frames/s over all sequences; the first "
        "frame of every sequence (START, the prompt) is included",
        "serving_settings": index.get("serving", {}),
        "sweep": rows,
        "in_process_reference": reference,
        "comparison": comparison,
        "server": {"log": str(server.log), "environment": env.versions()},
        "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(device),
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
