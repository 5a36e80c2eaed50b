"""D-FINE's pre- and post-processing, plain array functions the same for every backend: the image processor's
antialiased bilinear resize (torchvision where installed, else the same pixels in numpy), sigmoid top-k decoding."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from workflow_scripts.models import check_image


@dataclass(frozen=True)
class ResizeMeta:
    """How one original image was mapped into the model input: a plain resize, no padding."""

    orig_h: int
    orig_w: int


META = ResizeMeta  # what preprocess returns per image (the Triton pre → post models pass it along)


@functools.lru_cache(maxsize=64)
def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices, int16-range fixed-point weights and their precision for one axis of an antialiased
    bilinear resize: PyTorch's uint8 kernel (`_upsample_bilinear2d_aa`, itself PIL's ImagingResample),
    with its float64 steps in its order (C truncation, sequential sums) so the rounding is the same."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # the triangle filter's half-width, stretched when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    max_taps = int(np.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    n = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - lo, 0, max_taps)
    taps = int(n.max())
    j = np.arange(taps)
    w = np.maximum(1.0 - np.abs((j[None, :] + lo[:, None] - center[:, None] + 0.5) * invscale), 0.0)
    w[j[None, :] >= n[:, None]] = 0.0
    total = np.zeros(out_size)
    for k in range(taps):  # summed tap by tap, as the C loop does
        total += w[:, k]
    w = np.where(total[:, None] != 0, w / np.where(total == 0, 1.0, total)[:, None], w)
    wt_max = float(w.max()) if (total != 0).any() else 0.0
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    index = np.minimum(lo[:, None] + j[None, :], in_size - 1)  # past a row's taps: weight 0
    weight = (0.5 + w * (1 << precision)).astype(np.int32)  # weights are >= 0: C's rounding
    return index, weight, precision


def _aa_pass(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    index, weight, precision = _aa_weights(image.shape[axis], out_size)
    src = np.moveaxis(image, axis, 0)  # [in, ...]
    shape = (out_size,) + (1,) * (src.ndim - 1)
    acc = np.full((out_size, *src.shape[1:]), 1 << (precision - 1), dtype=np.int32)  # sums stay below 2^31
    for k in range(index.shape[1]):  # a few taps: one gather and multiply-add each
        acc += src[index[:, k]].astype(np.int32) * weight[:, k].reshape(shape)
    return np.moveaxis(np.clip(acc >> precision, 0, 255).astype(np.uint8), 0, axis)


def resize_aa(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 → size×size×3 uint8, bilinear with antialiasing, in numpy: torchvision's resize bit for bit.

    What transformers' default (torchvision) backend does on the uint8 image (`tvf.resize(..., BILINEAR,
    antialias=True)`: horizontal pass, then vertical, each in fixed point with uint8 rounding between
    them). `resize` uses it where torch is not installed (the Triton python backend's environment); it is
    far slower than torch's vectorised kernel (≈4 ms for 160×96 → 320, ≈30 ms for 640×480 → 640).
    """
    if image.shape[1] != size:
        image = _aa_pass(image, 1, size)
    if image.shape[0] != size:
        image = _aa_pass(image, 0, size)
    return image


@functools.cache
def _torch_resize():
    try:
        import torch
        from torchvision.transforms.v2 import functional as tvf
    except ImportError:
        return None

    def resize(image: np.ndarray, size: int) -> np.ndarray:
        chw = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
        out = tvf.resize(chw, [size, size], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)
        return out.permute(1, 2, 0).numpy()

    return resize


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """The image processor's resize: torchvision where installed, else `resize_aa` (the same pixels)."""
    return (_torch_resize() or resize_aa)(image, size)


def preprocess(images: list[np.ndarray], size: int) -> tuple[np.ndarray, list[ResizeMeta]]:
    """RGB uint8 HxWx3 images → float32 NCHW batch in [0, 1]: a plain size×size resize, no normalisation.

    The resize is the checkpoint's image processor's (transformers' default torchvision backend:
    bilinear with antialiasing on the uint8 image), so the pixels are the ones the model was trained on;
    without torch (the Triton server's environment) `resize_aa` gives the same pixels in numpy.
    """
    for im in images:
        check_image(im)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    metas = []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        out[i] = resize(im, size).transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        metas.append(ResizeMeta(h, w))
    return out, metas


def postprocess(
    outputs,
    metas: list[ResizeMeta],
    conf: float = 0.25,
    iou: float | None = None,
    max_det: int = 300,
) -> list[dict[str, np.ndarray]]:
    """(logits, pred_boxes) → per image {boxes (xyxy, original pixels), scores, classes}.

    Sigmoid scores, the top `max_det` over queries×classes (a query may give several classes),
    those above `conf`, boxes cxcywh (0..1) → xyxy scaled to the original image. No NMS.
    """
    logits, boxes = (np.asarray(o, dtype=np.float32) for o in outputs[:2])
    n_queries, n_classes = logits.shape[1:]
    k = min(max_det, n_queries * n_classes)
    scores_all = 1.0 / (1.0 + np.exp(-logits.reshape(len(logits), -1)))
    results = []
    for scores_flat, box, meta in zip(scores_all, boxes, metas):
        top = np.argpartition(-scores_flat, k - 1)[:k] if k < scores_flat.size else np.arange(scores_flat.size)
        top = top[np.argsort(-scores_flat[top], kind="stable")]
        scores = scores_flat[top]
        keep = scores > conf
        top, scores = top[keep], scores[keep]
        queries, classes = top // n_classes, top % n_classes
        cx, cy, w, h = box[queries].T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        xyxy *= np.array([meta.orig_w, meta.orig_h, meta.orig_w, meta.orig_h], dtype=np.float32)
        results.append(
            {
                "boxes": xyxy.astype(np.float32),
                "scores": scores.astype(np.float32),
                "classes": classes.astype(np.int64),
            }
        )
    return results
