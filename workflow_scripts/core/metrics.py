"""Latency statistics and COCO evaluation (pycocotools)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

STAT_KEYS = ("mean", "std", "p50", "p90", "p95", "p99", "min", "max")


def latency_stats(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """Milliseconds: mean, std, p50/p90/p95/p99, min, max of per-iteration times in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings")
    pct = np.percentile(ms, [50, 90, 95, 99])
    values = [ms.mean(), ms.std(ddof=1) if ms.size > 1 else 0.0, *pct, ms.min(), ms.max()]
    return {k: round(float(v), 4) for k, v in zip(STAT_KEYS, values)}


def timed_calls(fn, iterations: int, warmup: int = 2) -> list[float]:
    """Seconds of `iterations` calls of `fn` after `warmup` untimed ones (host clock)."""
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


COCO_STATS = (
    "map50_95",
    "map50",
    "map75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar_1",
    "ar_10",
    "ar_100",
    "ar_small",
    "ar_medium",
    "ar_large",
)


def coco_evaluate(annotation_file: str | Path, detections: list[dict], image_ids: list[int]) -> dict[str, float]:
    """mAP50-95, mAP50, per-size APs and ARs over `image_ids`, from COCO-format detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        if not detections:
            return {k: 0.0 for k in COCO_STATS}
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools reports -1 where a size class has no ground truth
    return {k: round(float(v), 5) if v >= 0 else None for k, v in zip(COCO_STATS, ev.stats)}
