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


def dispersion(stats: dict[str, float]) -> dict[str, float | None]:
    """Spread of one latency_stats dict: coefficient of variation (std/mean) and p99/p50."""
    return {
        "cv": round(stats["std"] / stats["mean"], 4) if stats["mean"] > 0 else None,
        "p99_over_p50": round(stats["p99"] / stats["p50"], 4) if stats["p50"] > 0 else None,
    }


def stability_verdict(stats: dict[str, float], max_cv: float, max_p99_over_p50: float) -> dict:
    """Whether a timed loop's spread says it was disturbed.

    stable: cv <= max_cv and p99/p50 <= max_p99_over_p50; reason: the limits it broke (None when stable);
    score: the worse of the two ratios to their limits (<= 1 is stable; the least disturbed attempt has the
    lowest score).
    """
    d = dispersion(stats)
    broken = []
    if d["cv"] is not None and d["cv"] > max_cv:
        broken.append(f"cv {d['cv']:.2f} > {max_cv:g}")
    if d["p99_over_p50"] is not None and d["p99_over_p50"] > max_p99_over_p50:
        broken.append(f"p99/p50 {d['p99_over_p50']:.2f} > {max_p99_over_p50:g}")
    score = max((d["cv"] or 0.0) / max_cv, (d["p99_over_p50"] or 0.0) / max_p99_over_p50)
    return {**d, "stable": not broken, "reason": "; ".join(broken) or None, "score": round(score, 4)}


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
