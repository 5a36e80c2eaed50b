"""The detection task: images in, boxes out, scored with COCO mAP (pycocotools) on the val split."""

from __future__ import annotations

import time
from collections.abc import Callable

from workflow_scripts.core.data import CocoSplit, load_split, read_image
from workflow_scripts.core.io import PlanforgeError, read_json
from workflow_scripts.core.metrics import coco_evaluate, latency_stats, timed_calls
from workflow_scripts.core.pipeline import batches, load_images

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


TIMERS = {
    "preprocess": "letterbox/resize + normalise + NCHW stacking of decoded RGB images (image decoding excluded)",
    "postprocess": "raw model outputs on the host → final detections in original image coordinates",
    "host_timers": "pre/postprocess timed over host_timer_iterations batches (about HOST_ITEMS images, at least 3)",
}


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
