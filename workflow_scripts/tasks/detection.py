"""The detection task: images in, boxes out, scored with COCO mAP (pycocotools) on the val split."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from workflow_scripts.core.data import CocoSplit, batches, load_images, load_split, read_image
from workflow_scripts.core.io import PlanforgeError, read_json
from workflow_scripts.core.metrics import coco_evaluate, latency_stats, timed_calls

NAME = "detection"


def category_map(class_names: list[str], categories: dict[int, str], source: str) -> dict[int, int]:
    """Model class index → dataset category id, matched by name."""
    by_name = {name: cid for cid, name in categories.items()}
    mapping = {i: by_name[n] for i, n in enumerate(class_names) if n in by_name}
    if not mapping:
        raise PlanforgeError(
            f"{source}: none of the model's classes {class_names[:5]}… are dataset categories "
            f"{list(by_name)[:5]}…; the model and dataset do not match"
        )
    return mapping


def coco_detections(
    split: CocoSplit, records: list[dict], cats: dict[int, int], detect: Callable, batch: int, desc: str
) -> tuple[list[dict], float]:
    """The one accuracy loop: decoded images in chunks of `batch` → `detect` → COCO result dicts, and its seconds.

    `detect(images)` returns per image {boxes (xyxy, original pixels), scores, classes}: the family's
    pre/post around a Runner in process, or a served ensemble (workflow_scripts/serving/accuracy.py).
    """
    from tqdm import tqdm

    detections = []
    t0 = time.perf_counter()
    for chunk in tqdm(batches(records, batch), desc=desc, mininterval=5.0):
        images = [read_image(split.image_path(r)) for r in chunk]
        for rec, det in zip(chunk, detect(images)):
            for (x0, y0, x1, y1), score, cls in zip(
                det["boxes"].tolist(), det["scores"].tolist(), det["classes"].tolist()
            ):
                if cls in cats:
                    detections.append(
                        {
                            "image_id": rec["id"],
                            "category_id": cats[cls],
                            "score": round(score, 5),
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        }
                    )
    return detections, time.perf_counter() - t0


def evaluate(detect: Callable, dataset, checkpoint_info, batch: int, max_images: int | None, desc: str) -> dict:
    """Score `detect` over the val split: the task's part of an accuracy JSON (metric, its value, the APs)."""
    split = load_split(dataset, "val")
    records = split.images[:max_images] if max_images else split.images
    cats = category_map(read_json(checkpoint_info)["class_names"], split.categories, str(checkpoint_info))
    detections, seconds = coco_detections(split, records, cats, detect, batch, desc)
    stats = coco_evaluate(split.annotations, detections, [r["id"] for r in records])
    return {
        "task": NAME,
        "metric": "map50_95",
        "images": len(records),
        "detections": len(detections),
        **stats,
        "evaluator": "pycocotools COCOeval bbox",
        "seconds": round(seconds, 2),
    }


def predictor(fam, runner, s) -> Callable:
    """`detect(images)` for the accuracy loop: the family's preprocessing, the runner, its postprocessing."""
    from workflow_scripts.models import raw_outputs

    def detect(images):
        inputs, metas = fam.preprocess(images, s.imgsz)
        outputs = raw_outputs(fam, runner(inputs))
        return fam.postprocess(outputs, metas, conf=s.conf, iou=s.iou, max_det=s.max_det)

    return detect


def _iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def found(predicted: list[tuple[list[float], str, float]], truth: list[tuple[list[float], str]]) -> int:
    """How many true boxes a prediction of the same class covers at IoU ≥ 0.5 (greedy, highest score first)."""
    left = list(truth)
    hits = 0
    for box, name, _ in sorted(predicted, key=lambda p: -p[2]):
        best = max(
            (i for i, (tb, tn) in enumerate(left) if tn == name and _iou(box, tb) >= 0.5),
            key=lambda i: _iou(box, left[i][0]),
            default=None,
        )
        if best is not None:
            left.pop(best)
            hits += 1
    return hits


def picture(detect: Callable, dataset, checkpoint_info, images: int, batch: int, title: str):
    """The first `images` val images in a grid: predicted boxes solid in their class's colour with 'class score',
    true boxes dashed white; each panel says how many true boxes a prediction found. Returns the figure and
    the counts over all panels: {found, true, extra}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    split = load_split(dataset, "val")
    records = split.images[:images]
    names = read_json(checkpoint_info)["class_names"]
    truth: dict[int, list[tuple[list[float], str]]] = {r["id"]: [] for r in records}
    for a in json.loads(split.annotations.read_text())["annotations"]:
        if a["image_id"] in truth:
            x, y, w, h = a["bbox"]
            truth[a["image_id"]].append(([x, y, x + w, y + h], split.categories[a["category_id"]]))
    pixels = [read_image(split.image_path(r)) for r in records]
    dets = [d for chunk in batches(pixels, batch) for d in detect(chunk)]

    cols = math.ceil(math.sqrt(len(records)))
    rows = math.ceil(len(records) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows + 0.6), squeeze=False, layout="constrained")
    colours = plt.get_cmap("tab10")
    counts = {"found": 0, "true": 0, "extra": 0}
    outline = [patheffects.withStroke(linewidth=2.6, foreground="black")]
    for ax in axes.flat[len(records) :]:
        ax.axis("off")
    for ax, rec, img, det in zip(axes.flat, records, pixels, dets):
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        for (x0, y0, x1, y1), _ in truth[rec["id"]]:
            ax.add_patch(
                Rectangle(
                    (x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.4, ls=(0, (4, 3)), path_effects=outline
                )
            )
        predicted, labels = [], []
        for box, score, cls in zip(det["boxes"].tolist(), det["scores"].tolist(), det["classes"].tolist()):
            name = names[cls] if 0 <= cls < len(names) else str(cls)
            predicted.append((box, name, score))
            colour = colours(cls % 10)
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=2))
            # above the box; inside its top edge at the image's top; below it where another label sits
            line = img.shape[0] / 28
            x, y, va = (x0, y0, "bottom") if y0 > line else (x0, y0, "top")
            if any(abs(x - ux) < 4 * line and abs(y - uy) < line for ux, uy in labels):
                x, y, va = x0, y1, "top"
            labels.append((x, y))
            ax.text(
                x,
                y,
                f"{name} {score:.2f}",
                fontsize=7,
                color="white",
                va=va,
                clip_on=True,
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1, "alpha": 0.85},
            )
        n_true = len(truth[rec["id"]])
        hits = found(predicted, truth[rec["id"]])
        extra = len(predicted) - hits
        counts = {"found": counts["found"] + hits, "true": counts["true"] + n_true, "extra": counts["extra"] + extra}
        ax.set_title(f"{rec['file_name']}: found {hits}/{n_true}, {extra} extra", fontsize=9)
    handles = [
        Line2D([], [], color="tab:blue", lw=2, label="predicted: class score (colour per class)"),
        Line2D([], [], color="white", lw=1.4, ls=(0, (4, 3)), path_effects=outline, label="ground truth"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig, counts


TIMERS = {
    "preprocess": "letterbox/resize + normalise + NCHW stacking of decoded RGB images (image decoding excluded)",
    "postprocess": "raw model outputs on the host → final detections in original image coordinates",
    "host_timers": "pre/postprocess timed over host_timer_iterations batches (about HOST_ITEMS images, at least 3)",
}


def export_check_inputs(fam, model, dataset, count: int, imgsz: int):
    """The batch an ONNX export is checked on against torch: the first `count` val images, preprocessed."""
    images = [im for _, im in load_images(load_split(dataset, "val"), count)]
    return fam.preprocess(images, imgsz)[0]


def bench_unit(fam, runner, dataset, batch: int, imgsz: int, host_iterations: int, conf: float) -> dict:
    """The timed unit: a preprocessed image batch; the host timers around it (pre- and postprocessing)."""
    from workflow_scripts.models import raw_outputs

    split = load_split(dataset, "val")
    images = [im for _, im in load_images(split, batch)]
    if len(images) < batch:  # a small val split still fills the batch by repeating images
        images = (images * (batch // len(images) + 1))[:batch]
    pre_times = timed_calls(lambda: fam.preprocess(images, imgsz), host_iterations)
    inputs, metas = fam.preprocess(images, imgsz)

    def after(outputs) -> dict:
        post = timed_calls(lambda: fam.postprocess(raw_outputs(fam, outputs), metas, conf=conf), host_iterations)
        return {"postprocess_ms": latency_stats(post), "postprocess_conf": conf}

    return {
        "inputs": inputs,
        "timers": TIMERS,
        "record": {"host_timer_iterations": host_iterations, "preprocess_ms": latency_stats(pre_times)},
        "after": after,
    }
