"""Triton python-backend models: preprocess, ONNX Runtime inference and postprocess.

Each `model.py` in a generated repository is a one-line shim importing a class from here, so
the server runs the project's own family functions (`models/<family>.py`), the same code the
torch and ONNX Runtime paths use. `triton_python_backend_utils` exists only inside the server's
python stub, so it is imported there, not at module load.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from workflow_scripts.models import get_family

# Letterbox metadata travels between the models as float32 [orig_h, orig_w, gain, pad_x, pad_y].
META_FIELDS = 5


def meta_to_array(metas) -> np.ndarray:
    return np.asarray([dataclasses.astuple(m) for m in metas], dtype=np.float32).reshape(-1, META_FIELDS)


def meta_from_array(family, rows: np.ndarray) -> list:
    return [family.LetterboxMeta(int(r[0]), int(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows]


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

    def inputs(self, request, *names: str) -> list[np.ndarray]:
        return [self.pb.get_input_tensor_by_name(request, n).as_numpy() for n in names]

    def respond(self, outputs: dict[str, np.ndarray]):
        return self.pb.InferenceResponse([self.pb.Tensor(k, v) for k, v in outputs.items()])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.respond(self.run(request)))
            except Exception as exc:  # one bad request must not fail the batch it shares
                responses.append(self.pb.InferenceResponse(error=self.pb.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses

    def finalize(self) -> None:
        pass


class PreprocessModel(_Model):
    """IMAGE uint8 [b, H, W, 3] RGB → INPUT float32 [b, 3, S, S] and LETTERBOX [b, 5], via the family's preprocess."""

    def setup(self) -> None:
        self.imgsz = int(self.params["imgsz"])

    def run(self, request) -> dict[str, np.ndarray]:
        (images,) = self.inputs(request, "IMAGE")
        batch, metas = self.family.preprocess(list(images), self.imgsz)
        return {"INPUT": batch, "LETTERBOX": meta_to_array(metas)}


class PostprocessModel(_Model):
    """RAW model output + LETTERBOX → final detections, via the family's postprocess (NMS for YOLO)."""

    def setup(self) -> None:
        self.conf = float(self.params["conf"])
        self.iou = float(self.params["iou"])
        self.max_det = int(self.params["max_det"])

    def run(self, request) -> dict[str, np.ndarray]:
        raw, meta = self.inputs(request, "RAW", "LETTERBOX")
        dets = self.family.postprocess(
            raw, meta_from_array(self.family, meta), conf=self.conf, iou=self.iou, max_det=self.max_det
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
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

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
