"""COCO mAP of one (model, backend, precision) on the val split, gated against the FP32 eager baseline."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from workflow_scripts.data import load_split, read_image
from workflow_scripts.envinfo import environment
from workflow_scripts.io import PlanforgeError, read_json, run_cli, write_json
from workflow_scripts.metrics import coco_evaluate
from workflow_scripts.models import get_family, raw_outputs
from workflow_scripts.pipeline import batches, make_runner


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
    split, records: list[dict], cats: dict[int, int], detect: Callable, batch: int, desc: str
) -> tuple[list[dict], float]:
    """The one accuracy loop: decoded images in chunks of `batch` → `detect` → COCO result dicts, and its seconds.

    `detect(images)` returns per image {boxes (xyxy, original pixels), scores, classes}: the family's
    pre/post around a Runner in process, or a served ensemble (workflow_scripts/serving_accuracy.py).
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


def evaluate(
    model: str,
    family: str,
    artifact: Path,
    checkpoint_info: Path,
    backend: str,
    precision: str,
    imgsz: int,
    dataset: Path,
    target: str,
    device: str,
    threads: int | None,
    options: dict,
    batch: int,
    max_images: int | None,
    conf: float,
    iou: float,
    max_det: int,
    config_hash: str,
    gpu: str | None = None,
) -> dict:
    """Run the backend over the val split and score its detections with pycocotools."""
    fam = get_family(family)
    split = load_split(dataset, "val")
    records = split.images[:max_images] if max_images else split.images
    cats = category_map(read_json(checkpoint_info)["class_names"], split.categories, str(checkpoint_info))
    runner = make_runner(backend, artifact, family, precision, device, threads, options, target=target, gpu=gpu)

    def detect(images):
        inputs, metas = fam.preprocess(images, imgsz)
        return fam.postprocess(raw_outputs(fam, runner(inputs)), metas, conf=conf, iou=iou, max_det=max_det)

    detections, seconds = coco_detections(split, records, cats, detect, batch, f"mAP {model} {backend} {precision}")
    stats = coco_evaluate(split.annotations, detections, [r["id"] for r in records])
    return {
        "status": "ok",
        "model": model,
        "family": family,
        "backend": backend,
        "precision": precision,
        "target": target,
        "artifact": str(artifact),
        "images": len(records),
        "detections": len(detections),
        **stats,
        "evaluator": "pycocotools COCOeval bbox",
        "conf": conf,
        "iou": iou,
        "max_det": max_det,
        "batch": batch,
        "seconds": round(seconds, 2),
        "runner": runner.versions(),
        "environment": environment(device),
        "config_hash": config_hash,
    }


def gate(record: dict, baseline: dict | None, threshold: float) -> dict:
    """Add baseline, ratio and verdict: pass when mAP50-95 ≥ threshold × the baseline's."""
    base = record if baseline is None else baseline
    base_map = base["map50_95"]
    ratio = record["map50_95"] / base_map if base_map else None
    record["baseline"] = {
        "backend": base["backend"],
        "precision": base["precision"],
        "map50_95": base_map,
        "is_self": baseline is None,
    }
    record["ratio_to_baseline"] = round(ratio, 5) if ratio is not None else None
    record["gate"] = {"threshold": threshold, "passed": bool(ratio is not None and ratio >= threshold)}
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--checkpoint-info", type=Path, required=True, help="JSON with the model's class names")
    p.add_argument("--backend", required=True)
    p.add_argument("--precision", required=True)
    p.add_argument("--imgsz", type=int, required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--baseline", type=Path, default=None, help="the baseline's accuracy JSON (absent: this is it)")
    p.add_argument(
        "--settings",
        required=True,
        help="JSON: device, threads, backend_options, batch, max_images, conf, iou, max_det, gate, strict, config_hash",
    )
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    s = json.loads(a.settings)
    r = evaluate(
        a.model,
        a.family,
        a.artifact,
        a.checkpoint_info,
        a.backend,
        a.precision,
        a.imgsz,
        a.dataset,
        a.target,
        s["device"],
        s.get("threads"),
        s.get("backend_options", {}),
        s["batch"],
        s.get("max_images"),
        s["conf"],
        s["iou"],
        s["max_det"],
        s["config_hash"],
        gpu=s.get("gpu"),
    )
    r = gate(r, read_json(a.baseline) if a.baseline else None, s["gate"])
    write_json(a.out, r)
    verdict = "pass" if r["gate"]["passed"] else "FAIL"
    print(f"{a.out}: mAP50-95 {r['map50_95']:.4f}, mAP50 {r['map50']:.4f}, ratio {r['ratio_to_baseline']} ({verdict})")
    if s.get("strict") and not r["gate"]["passed"]:
        a.out.unlink()
        raise PlanforgeError(
            f"{a.out}: mAP50-95 ratio {r['ratio_to_baseline']} is below the gate {s['gate']} (accuracy.strict is on)"
        )


if __name__ == "__main__":
    run_cli(main)
