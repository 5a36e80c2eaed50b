"""Latency statistics and COCO evaluation on known inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workflow_scripts.core.metrics import coco_evaluate, latency_stats


def test_latency_stats_in_milliseconds():
    s = latency_stats([0.001 * i for i in range(1, 101)])
    assert s["min"] == 1.0 and s["max"] == 100.0
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5) and s["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1), 1e-4)


def _gt(tmp_path):
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 200, "height": 200},
            {"id": 2, "file_name": "b.jpg", "width": 200, "height": 200},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [20, 30, 120, 100], "area": 12000, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(coco))
    return path, coco


def test_perfect_detections_score_one_and_a_missed_object_halves_recall(tmp_path):
    path, coco = _gt(tmp_path)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in coco["annotations"]
    ]
    assert coco_evaluate(path, perfect, [1, 2])["map50_95"] == pytest.approx(1.0)
    half = coco_evaluate(path, perfect[:1], [1, 2])
    assert half["map50_95"] == pytest.approx(0.5) and half["ap_small"] is None


def test_a_shifted_box_passes_at_iou_50_but_not_at_95(tmp_path):
    path, _ = _gt(tmp_path)
    shifted = [{"image_id": 1, "category_id": 1, "bbox": [15, 10, 50, 50], "score": 0.9}]
    stats = coco_evaluate(path, shifted, [1])
    assert stats["map50"] == pytest.approx(1.0) and stats["map50_95"] < 0.8


def test_no_detections_is_zero_not_an_error(tmp_path):
    path, _ = _gt(tmp_path)
    assert coco_evaluate(path, [], [1, 2])["map50_95"] == 0.0
