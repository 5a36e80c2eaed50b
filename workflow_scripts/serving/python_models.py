"""Triton python-backend models: preprocess, ONNX Runtime inference and postprocess.

Each `model.py` in a generated repository is a one-line shim importing a class from here, so
the server runs the project's own family functions (`models/<family>.py`), the same code the
torch and ONNX Runtime paths use. `triton_python_backend_utils` exists only inside the server's
python stub, so it is imported there, not at module load.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.runner_facts import RunnerFacts
from workflow_scripts.models import BadImage, check_image, get_family, raw_outputs

# The family's per-image preprocessing metadata (`family.META`: YOLO's letterbox, D-FINE's original size)
# travels from the pre to the post model as one float32 row of its fields, in declaration order.


def meta_fields(family) -> list[dataclasses.Field]:
    return list(dataclasses.fields(family.META))


def meta_to_array(family, metas) -> np.ndarray:
    n = len(meta_fields(family))
    return np.asarray([dataclasses.astuple(m) for m in metas], dtype=np.float32).reshape(-1, n)


def meta_from_array(family, rows: np.ndarray) -> list:
    fields = meta_fields(family)
    cast = [int if f.type in (int, "int") else float for f in fields]
    return [family.META(*(c(v) for c, v in zip(cast, r))) for r in rows]


def pack_detections(dets: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image detections → DETECTIONS [b, n_max, 6] (x0 y0 x1 y1 score class, zero padded), NUM [b, 1]."""
    n_max = max([len(d["scores"]) for d in dets] + [1])
    out = np.zeros((len(dets), n_max, 6), dtype=np.float32)
    counts = np.zeros((len(dets), 1), dtype=np.int32)
    for i, d in enumerate(dets):
        n = len(d["scores"])
        counts[i, 0] = n
        out[i, :n, :4] = d["boxes"]
        out[i, :n, 4] = d["scores"]
        out[i, :n, 5] = d["classes"]
    return out, counts


def unpack_detections(packed: np.ndarray, counts: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The inverse of `pack_detections`: what the family's postprocess returned, per image."""
    result = []
    for rows, n in zip(packed, counts.reshape(-1)):
        rows = rows[: int(n)]
        result.append({"boxes": rows[:, :4], "scores": rows[:, 4], "classes": rows[:, 5].astype(np.int64)})
    return result


def _params(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


class _Model:
    """Shared request loop: one response per request; an exception becomes that request's error."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.params = _params(args)
        self.family = get_family(self.params["family"])
        self.model_dir = Path(args["model_repository"]) / args["model_version"]
        self.setup()

    def setup(self) -> None:
        pass

    def served_runner(self, device: str, threads: int | None):
        """The runner the bench builds for the entry's backend / precision / options (`repository.backend_params`),
        or None where the entry names none: torch FP32 eager, which the family's own loader serves."""
        if "backend" not in self.params:
            return None
        from workflow_scripts.pipeline import make_runner

        options = json.loads(self.params.get("backend_options") or "{}") or None
        return make_runner(
            self.params["backend"], self.model_dir / "checkpoint.pt", self.params["family"], self.params["precision"],
            device, threads, options,
        )  # fmt: skip

    def inputs(self, request, *names: str) -> list[np.ndarray]:
        return [self.pb.get_input_tensor_by_name(request, n).as_numpy() for n in names]

    def respond(self, outputs: dict[str, np.ndarray]):
        return self.pb.InferenceResponse([self.pb.Tensor(k, v) for k, v in outputs.items()])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.respond(self.run(request)))
            except BadImage as exc:  # the client's fault: its message names the input and the expected form
                responses.append(self.error(str(exc), invalid_argument=True))
            except Exception as exc:  # one bad request must not fail the batch it shares
                responses.append(self.error(f"{type(exc).__name__}: {exc}"))
        return responses

    def error(self, message: str, invalid_argument: bool = False):
        """An error response for one request; a client error carries INVALID_ARG (HTTP 400) where the stub has codes."""
        code = getattr(self.pb.TritonError, "INVALID_ARG", None) if invalid_argument else None
        err = self.pb.TritonError(message, code) if code is not None else self.pb.TritonError(message)
        return self.pb.InferenceResponse(error=err)

    def finalize(self) -> None:
        pass


class PreprocessModel(_Model):
    """IMAGE uint8 [b, H, W, 3] RGB → INPUT float32 [b, 3, S, S] and META float32 [b, fields], via the family's preprocess.

    A bad image (empty, 0×0, not 3 channels, not uint8) fails its own request with the family's
    `check_image` message; the other requests of the batch go on.
    """

    def setup(self) -> None:
        self.imgsz = int(self.params["imgsz"])

    def run(self, request) -> dict[str, np.ndarray]:
        (images,) = self.inputs(request, "IMAGE")
        batch, metas = self.family.preprocess(list(images), self.imgsz)
        return {"INPUT": batch, "META": meta_to_array(self.family, metas)}


class PostprocessModel(_Model):
    """The model's outputs (inputs named as the family's OUTPUT_NAMES) + META → final detections, via the
    family's postprocess (NMS for YOLO; top-k over queries×classes for D-FINE)."""

    def setup(self) -> None:
        self.output_names = tuple(getattr(self.family, "OUTPUT_NAMES", ("output0",)))
        self.conf = float(self.params["conf"])
        self.iou = float(self.params["iou"])
        self.max_det = int(self.params["max_det"])

    def run(self, request) -> dict[str, np.ndarray]:
        *raw, meta = self.inputs(request, *self.output_names, "META")
        dets = self.family.postprocess(
            raw_outputs(self.family, raw),
            meta_from_array(self.family, meta),
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
        )
        packed, counts = pack_detections(dets)
        return {"DETECTIONS": packed, "NUM_DETECTIONS": counts}


class OnnxModel(_Model):
    """The exported ONNX model in ONNX Runtime (the pytriton server has no onnxruntime backend).

    Requests gathered by the dynamic batcher run as one session call, which is what batching buys.
    """

    def setup(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        threads = int(self.params.get("threads") or 0)
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = (self.params.get("providers") or "CPUExecutionProvider").split(",")
        self.session = ort.InferenceSession(str(self.model_dir / "model.onnx"), so, providers=providers)
        self.input_name = getattr(self.family, "INPUT_NAME", self.session.get_inputs()[0].name)
        self.output_names = list(getattr(self.family, "OUTPUT_NAMES", [o.name for o in self.session.get_outputs()]))

    def execute(self, requests):
        try:
            arrays = [self.inputs(r, self.input_name)[0] for r in requests]
            outputs = self.session.run(self.output_names, {self.input_name: np.concatenate(arrays)})
        except Exception as exc:
            err = self.pb.TritonError(f"{type(exc).__name__}: {exc}")
            return [self.pb.InferenceResponse(error=err) for _ in requests]
        responses, start = [], 0
        for a in arrays:
            n = len(a)
            responses.append(self.respond({k: v[start : start + n] for k, v in zip(self.output_names, outputs)}))
            start += n
        return responses


class BadInput(ValueError):
    """A request the model refuses: its message names the input and what it must be."""


def noise_seed(seed: int, arrays: list[np.ndarray]) -> int:
    """The noise generator's seed for a request without NOISE: the configured seed and the request's bytes
    (the model is stateless: the same request gets the same noise, whatever else is queued with it)."""
    import hashlib

    h = hashlib.sha256(str(int(seed)).encode())
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1  # 63 bits: an int64 output


def seeded_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """What the model denoises when a request has no NOISE (a client reproduces it from NOISE_SEED)."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


class Pi0Model(_Model):
    """Pi0 action chunks: the family's `preprocess` and `Pi0Chunk` (the code the accuracy and bench jobs run).

    Per request (batch dimension first, added by Triton): IMAGES uint8 [cams, H, W, 3] (resized to the vision
    tower's size), STATE fp32 [S ≤ max_state_dim], TOKENS int64 [L] (ids in [0, vocab)), TOKEN_MASK bool [L]
    and, optional, NOISE fp32 [chunk, action dim]. Output ACTIONS fp32 [chunk, action dim] and NOISE_SEED int64
    [1]: -1 when the request's NOISE was denoised, else the seed of the noise drawn for it (`seeded_noise`).
    Stateless; requests with the same shapes that the dynamic batcher gathers run as one chunk. A bad request
    fails alone with a message naming the input (INVALID_ARG); the others of its batch go on.
    """

    def initialize(self, args: dict) -> None:
        kind = args.get("model_instance_kind", "CPU")
        self.device = f"cuda:{args.get('model_instance_device_id', 0)}" if kind == "GPU" else "cpu"
        super().initialize(args)

    def setup(self) -> None:
        try:
            import torch
        except ImportError as exc:
            import os

            raise ImportError(
                f"{exc}: the Pi0 model needs torch and transformers from the workflow's Python "
                f"(PLANFORGE_WORKFLOW_SITE_PACKAGES={os.environ.get('PLANFORGE_WORKFLOW_SITE_PACKAGES')}); "
                "run the serving jobs with the interpreter that runs the workflow"
            ) from None
        threads = int(self.params.get("threads") or 0)
        if threads and self.device == "cpu":
            torch.set_num_threads(threads)
        self.torch = torch
        self.runner = self.served_runner(self.device, threads or None)
        if self.runner is not None:
            self.chunk = self.runner.model
        else:  # torch FP32 eager, as the family loads it
            self.chunk = self.family.load_torch(self.model_dir / "checkpoint.pt", self.device).eval()
        self.geo = self.family.geometry(self.chunk.model)
        self.cameras = int(self.params["cameras"])
        self.seed = int(self.params["noise_seed"])
        self.noise_shape = (self.geo["chunk_size"], self.geo["max_action_dim"])

    def check(self, images, state, tokens, mask) -> None:
        cams, height, width = images.shape[:3]
        if cams != self.cameras:
            raise BadInput(
                f"IMAGES: {cams} camera{'s' * (cams != 1)}; this model serves {self.cameras} "
                f"(IMAGES uint8 [{self.cameras}, H, W, 3])"
            )
        if min(height, width) < 1:
            raise BadInput(f"IMAGES: empty {height}x{width} images; expected [{self.cameras}, H, W, 3] with H, W ≥ 1")
        if len(state) > self.geo["max_state_dim"]:
            raise BadInput(f"STATE: {len(state)} values; the model takes at most {self.geo['max_state_dim']}")
        if tokens.shape != mask.shape:
            raise BadInput(f"TOKEN_MASK: {mask.shape[0]} entries for {tokens.shape[0]} TOKENS; give one per token")
        vocab = self.geo["vocab_size"]
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
            raise BadInput(
                f"TOKENS: ids must be in [0, {vocab}) (the model's vocabulary); got {tokens.min()}..{tokens.max()}"
            )

    def request(self, request) -> dict[str, np.ndarray]:
        arrays = []
        for name in ("IMAGES", "STATE", "TOKENS", "TOKEN_MASK"):
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is None:  # the server checks only the number of inputs when one is optional
                raise BadInput(
                    f"{name}: missing; the model needs IMAGES, STATE, TOKENS and TOKEN_MASK (NOISE optional)"
                )
            arrays.append(tensor.as_numpy())
            if len(arrays[-1]) != 1:
                raise BadInput(f"{name}: a batch of {len(arrays[-1])}; send one episode per request (batch 1)")
        images, state, tokens, mask = arrays[0][0], arrays[1][0], arrays[2][0], arrays[3][0].astype(bool)
        self.check(images, state, tokens, mask)
        given = self.pb.get_input_tensor_by_name(request, "NOISE")
        if given is not None:
            noise, seed = given.as_numpy()[0].astype(np.float32), -1
        else:
            seed = noise_seed(self.seed, [images, state, tokens, mask])
            noise = seeded_noise(seed, self.noise_shape)
        return {"images": images, "state": state, "token_ids": tokens, "token_mask": mask, "noise": noise, "seed": seed}

    def run_group(self, episodes: list[dict]) -> np.ndarray:
        """One chunk for requests of the same shapes: the family's preprocess, then Pi0Chunk."""
        torch = self.torch
        batch = {k: np.stack([e[k] for e in episodes]) for k in ("images", "state", "token_ids", "token_mask", "noise")}
        arrays = self.family.preprocess(batch, self.geo)
        if self.runner is not None:  # the bench / accuracy jobs' call: `tasks.vla.predictor`
            return np.asarray(self.runner(arrays)[0], np.float32)
        with torch.inference_mode():
            out = self.chunk(*(torch.from_numpy(arrays[n]).to(self.device) for n in self.family.INPUT_NAMES))
        return out.float().cpu().numpy()

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        episodes: dict[int, dict] = {}
        for i, request in enumerate(requests):
            try:
                episodes[i] = self.request(request)
            except BadInput as exc:
                responses[i] = self.error(str(exc), invalid_argument=True)
                continue
            e = episodes[i]
            groups.setdefault((e["images"].shape, e["state"].shape, e["token_ids"].shape), []).append(i)
        for rows in groups.values():
            try:
                actions = self.run_group([episodes[i] for i in rows])
            except Exception as exc:  # the model failed on valid inputs: every request of the group
                for i in rows:
                    responses[i] = self.error(f"{type(exc).__name__}: {exc}")
                continue
            for i, a in zip(rows, actions):
                seed = np.asarray([episodes[i]["seed"]], dtype=np.int64)
                responses[i] = self.respond({"ACTIONS": a[None].astype(np.float32), "NOISE_SEED": seed[None]})
        return responses


START, END = 1, 2  # sequence flag bits (as Triton's TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END)


class TrackerSequenceModel(_Model):
    """One `Tracker` per live sequence (correlation id); requests of one sequence arrive in order, one per batch.

    Served behind `sequence_batching` (`served.SequenceModel`: the oldest strategy, the control inputs START, END,
    READY (int32 0/1) and CORRID (uint64)); each tracker (the family's, `Tracker.start` / `track` / `close`) is held
    by the model instance its sequence is bound to.

    Per request (batch dimension first, added by Triton): FRAME uint8 [H, W, 3] (any H, W; fixed within a
    sequence), BOX fp32 [4] xywh pixels (read on START only, where it is required); outputs BOX fp32 [4] (the
    prompt frame: the box of its mask), SCORE fp32 [1] (object score logit; NaN on the prompt frame) and
    LIVE_SEQUENCES int32 [1] (trackers the instance holds after this request). The flags START = 1 and END = 2
    are bits of one value: a one-request sequence is START|END (started, answered, closed). A tracker is
    dropped on END, and by the model's own reaper when its sequence has been idle for
    `max_sequence_idle_microseconds` (Triton forgets such a sequence without telling the model), so state
    never outlives its sequence; every drop is one line in the server log ("reaped sequence ...").
    """

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
