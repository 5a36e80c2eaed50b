"""YOLOv8 family (ultralytics): letterbox preprocessing, NMS postprocessing, ONNX export.

Pre/post-processing are pure numpy so the torch, ONNX Runtime, TensorRT and Triton paths
share them and accuracy differences come only from the backend.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError, exception_line
from workflow_scripts.models import check_image, is_architecture

PAD_VALUE = 114
INPUT_NAME = "images"
# an ultralytics .pt pickles its modules from this package: what models.checkpoint_kind_problem looks for
CHECKPOINT_MARKER = "ultralytics"
OUTPUT_NAMES = ("output0",)

# Nodes INT8 quantization leaves in float, by reason. `{head}` is the Detect module that makes
# the graph output (`/model.22` in YOLOv8n). The decode tail turns box logits into pixel
# coordinates (DFL softmax, anchor grid, strides, final concat): 8 bits there move every box.
QUANT_EXCLUDE = {
    "decode tail (DFL, anchors, strides, final concat)": r"^{head}/(?!cv2\.|cv3\.)",
    "box-regression output convs (DFL logits)": r"^{head}/cv2\.\d+/cv2\.\d+\.2/",
}


@dataclass(frozen=True)
class LetterboxMeta:
    """How one original image was mapped into the model input: scale, then padding."""

    orig_h: int
    orig_w: int
    gain: float
    pad_x: float
    pad_y: float


META = LetterboxMeta  # what preprocess returns per image (the Triton pre → post models pass it along)


def offline_env() -> None:
    # ultralytics phones home and auto-installs by default; the pipeline must work offline
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "planforge-ultralytics"))


def build_architecture(name: str, seed: int = 0):
    """A randomly initialised (seeded) detection model from an ultralytics architecture name."""
    offline_env()
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    try:
        model = DetectionModel(name, verbose=False)
    except Exception as exc:  # ultralytics raises FileNotFoundError or its own errors for unknown names
        raise PlanforgeError(
            f"{name}: not an ultralytics architecture ({exc.__class__.__name__}); use e.g. yolov8n.yaml"
        ) from None
    return model


def save_checkpoint(model, path: str | Path) -> None:
    """Save a module the way ultralytics checkpoints are laid out, so `load_torch` reads it back."""
    import torch

    torch.save({"model": model, "train_args": {}, "epoch": -1}, str(path))


def load_torch(checkpoint: str | Path, device: str = "cpu"):
    """Load an ultralytics checkpoint (or build an architecture) as an eval-mode, fused, FP32 torch module."""
    offline_env()
    if is_architecture(checkpoint):
        model = build_architecture(str(checkpoint)).fuse().eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    path = Path(checkpoint)
    if not path.is_file():
        raise PlanforgeError(f"{path}: checkpoint not found; check the model's `checkpoint` in the config")
    try:
        from ultralytics.nn.tasks import load_checkpoint

        model, _ = load_checkpoint(str(path), device=device, fuse=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise PlanforgeError(
            f"{path}: not a loadable YOLO checkpoint ({exception_line(exc)}); replace the file"
        ) from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def class_names(model) -> list[str]:
    """Class names in output order, from a loaded torch module."""
    names = model.names
    return [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)


def forward_output(raw):
    """The detection tensor [N, 4+nc, anchors] from whatever the torch module returns."""
    return raw[0] if isinstance(raw, (tuple, list)) else raw


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, LetterboxMeta]:
    """Resize keeping aspect ratio and pad to size×size, as ultralytics' LetterBox does."""
    import cv2

    h, w = image.shape[:2]
    gain = min(size / h, size / w)
    new_w, new_h = int(round(w * gain)), int(round(h * gain))
    pad_x, pad_y = (size - new_w) / 2, (size - new_h) / 2
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(pad_y - 0.1)), int(round(pad_y + 0.1))
    left, right = int(round(pad_x - 0.1)), int(round(pad_x + 0.1))
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return image, LetterboxMeta(h, w, gain, left, top)


def preprocess(images: list[np.ndarray], size: int) -> tuple[np.ndarray, list[LetterboxMeta]]:
    """RGB uint8 HxWx3 images → float32 NCHW batch in [0, 1], plus per-image letterbox metadata."""
    for im in images:
        check_image(im)
    boxed, metas = zip(*(letterbox(im, size) for im in images))
    batch = np.stack(boxed).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray(batch), list(metas)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0).clip(0) * (y1 - y0).clip(0)
    keep = []
    while order.size and len(keep) < max_det:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = (np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest])).clip(0)
        ih = (np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest])).clip(0)
        inter = iw * ih
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    output: np.ndarray,
    metas: list[LetterboxMeta],
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    max_candidates: int = 30000,
) -> list[dict[str, np.ndarray]]:
    """[N, 4+nc, anchors] raw output → per image {boxes (xyxy, original pixels), scores, classes}."""
    output = np.asarray(output, dtype=np.float32)
    results = []
    for pred, meta in zip(output, metas):
        cls_scores = pred[4:].T
        classes = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(classes)), classes]
        mask = scores > conf
        boxes_cxcywh, scores, classes = pred[:4].T[mask], scores[mask], classes[mask]
        if scores.size > max_candidates:
            top = np.argsort(-scores)[:max_candidates]
            boxes_cxcywh, scores, classes = boxes_cxcywh[top], scores[top], classes[top]
        cx, cy, w, h = boxes_cxcywh.T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        # class-aware NMS in one pass: shift each class into its own coordinate range
        keep = nms(boxes + classes[:, None] * 7680.0, scores, iou, max_det)
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - meta.pad_x) / meta.gain).clip(0, meta.orig_w)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - meta.pad_y) / meta.gain).clip(0, meta.orig_h)
        results.append(
            {
                "boxes": boxes.astype(np.float32),
                "scores": scores.astype(np.float32),
                "classes": classes.astype(np.int64),
            }
        )
    return results


def quant_exclude(model) -> dict[str, list[str]]:
    """Node names of an exported ONNX model that QUANT_EXCLUDE keeps in float, by reason."""
    import re

    producer = {o: n.name for n in model.graph.node for o in n.output}
    out_node = producer.get(model.graph.output[0].name, "")
    m = re.match(r"^(/model\.\d+)/", out_node)
    if not m:
        raise PlanforgeError(f"output {model.graph.output[0].name!r} is not made by a YOLO Detect head; re-export")
    return {
        reason: [n.name for n in model.graph.node if re.match(pattern.format(head=re.escape(m.group(1))), n.name)]
        for reason, pattern in QUANT_EXCLUDE.items()
    }


def export_onnx(checkpoint: str | Path, out: str | Path, imgsz: int, opset: int = 17, dynamic: bool = True) -> dict:
    """Export with ultralytics' own exporter (no simplification here) to `out`; return export facts."""
    offline_env()
    from ultralytics import YOLO

    load_torch(checkpoint)  # one clear error for a missing or corrupt checkpoint
    with tempfile.TemporaryDirectory(prefix="planforge-export-") as tmp:
        local = Path(tmp) / "model.pt"
        shutil.copy(checkpoint, local)
        exported = YOLO(str(local)).export(
            format="onnx",
            imgsz=imgsz,
            opset=opset,
            dynamic=dynamic,
            simplify=False,
            batch=1,
            device="cpu",
            verbose=False,
        )
        shutil.move(str(exported), out)
    return {"exporter": "ultralytics", "input_name": INPUT_NAME, "output_names": list(OUTPUT_NAMES)}
