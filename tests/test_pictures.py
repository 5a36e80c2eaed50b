"""Pictures: a person sees at a glance that a model (an INT8 one too) still finds the objects."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workflow_scripts.plan.settings import PictureSettings, QuantizeSettings
from workflow_scripts.tasks import detection

TARGET = {"device": "cpu", "threads": 1, "backend_options": {}, "power": "none", "gpu": None}


def _step(step: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"workflow_scripts.{step}", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A three-image val split, a prepared checkpoint, and its INT8 ONNX model (exported, calibrated, quantized)."""
    from tests.conftest import DEMO_CHECKPOINT

    root = tmp_path_factory.mktemp("pictures")
    ds = root / "ds"
    spec = {"kind": "synthetic", "seed": 1, "splits": {"train": 0, "val": 3, "calib": 2}, "image_size": [96, 128]}
    assert _step("make_dataset", "--out", str(ds), "--settings", json.dumps(spec)).returncode == 0
    ckpt, info = root / "ckpt.pt", root / "ckpt.json"
    proc = _step(
        "prepare_checkpoint", "--family", "yolo", "--src", str(DEMO_CHECKPOINT), "--out", str(ckpt), "--info", str(info)
    )
    assert proc.returncode == 0, proc.stderr
    return {"dataset": ds, "ckpt": ckpt, "info": info, "root": root}


def _annotations(dataset: Path, images: int) -> list[dict]:
    coco = json.loads((dataset / "instances_val.json").read_text())
    ids = {im["id"] for im in coco["images"][:images]}
    return [a for a in coco["annotations"] if a["image_id"] in ids]


def _settings(images: int = 2) -> PictureSettings:
    return PictureSettings(**TARGET, imgsz=128, images=images, batch=2, conf=0.25, iou=0.7, max_det=100)


def test_a_picture_draws_every_true_box_dashed_and_every_prediction_with_its_class_and_score(tiny):
    """With a detector that predicts exactly the truth, each panel finds all of its boxes and no extra."""
    names = json.loads(tiny["info"].read_text())["class_names"]
    coco = json.loads((tiny["dataset"] / "instances_val.json").read_text())
    by_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a)
    cat = {c["id"]: c["name"] for c in coco["categories"]}
    queue = [by_image[im["id"]] for im in coco["images"]]

    def perfect(images):
        out = []
        for _ in images:
            anns = queue.pop(0)
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            out.append(
                {
                    "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                    "scores": np.full(len(anns), 0.9, np.float32),
                    "classes": np.asarray([names.index(cat[a["category_id"]]) for a in anns], np.int64),
                }
            )
        return out

    fig, counts = detection.picture(perfect, tiny["dataset"], tiny["info"], 2, 2, "perfect")
    truth = _annotations(tiny["dataset"], 2)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    assert counts == {"found": len(truth), "true": len(truth), "extra": 0}
    rects = [p for ax in panels for p in ax.patches]
    dashed = [r for r in rects if r.get_linestyle() not in ("-", "solid")]
    solid = [r for r in rects if r.get_linestyle() in ("-", "solid")]
    assert len(dashed) == len(truth) == len(solid)
    labels = [t.get_text() for ax in panels for t in ax.texts]
    assert sorted(labels) == sorted(f"{cat[a['category_id']]} 0.90" for a in truth)
    for ax, im in zip(panels, coco["images"]):
        n = len(by_image[im["id"]])
        assert ax.get_title() == f"{im['file_name']}: found {n}/{n}, 0 extra"


def test_a_box_of_the_wrong_class_or_place_finds_nothing():
    truth = [([0, 0, 10, 10], "circle"), ([20, 20, 30, 30], "square")]
    assert detection.found([([0, 0, 10, 10], "circle", 0.9)], truth) == 1
    assert detection.found([([0, 0, 10, 10], "square", 0.9)], truth) == 0  # wrong class
    assert detection.found([([5, 5, 15, 15], "circle", 0.9)], truth) == 0  # IoU 0.14
    assert detection.found([([0, 0, 10, 10], "circle", 0.9), ([0, 0, 10, 11], "circle", 0.8)], truth) == 1


def _picture(tiny, artifact: Path, backend: str, precision: str, out: Path, images: int = 2):
    return _step(
        "pictures",
        *("--model", "m", "--family", "yolo", "--artifact", str(artifact), "--checkpoint-info", str(tiny["info"])),
        *("--backend", backend, "--precision", precision, "--dataset", str(tiny["dataset"]), "--target", "cpu"),
        *("--settings", _settings(images).to_json(), "--out", str(out)),
    )


def test_an_int8_row_gets_a_picture_with_predicted_and_ground_truth_boxes(tiny):
    """The picture step runs the INT8 ONNX model through ONNX Runtime, like the accuracy step, and finds objects."""
    root, ds = tiny["root"], str(tiny["dataset"])
    fp32, ranges, int8 = root / "fp32.onnx", root / "minmax.ranges.json", root / "int8_minmax.onnx"
    steps = [
        ("export", "--checkpoint", str(tiny["ckpt"]), "--dataset", ds, "--imgsz", "128", "--check-images", "1")
        + ("--out", str(fp32), "--report", str(root / "fp32.json")),
        ("calibrate", "--onnx", str(fp32), "--dataset", ds, "--imgsz", "128", "--method", "minmax")
        + ("--settings", json.dumps({"images": 2, "num_bins": None, "percentile": None}))
        + ("--ranges", str(ranges), "--report", str(root / "minmax.json")),
        ("quantize", "--fp32", str(fp32), "--ranges", str(ranges), "--method", "minmax")
        + ("--settings", QuantizeSettings("quint8", "qint8", True, False, [], "u8s8", {}).to_json())
        + ("--out", str(int8), "--report", str(root / "int8_minmax.json")),
    ]
    for step, *args in steps:
        proc = _step(step, "--family", "yolo", *args)
        assert proc.returncode == 0, f"{step}: {proc.stderr[-2000:]}"
    out = root / "pictures" / "cpu" / "m" / "onnxruntime_int8_minmax.png"
    proc = _picture(tiny, int8, "onnxruntime", "int8_minmax", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200
    found, true = (int(re.search(rf"{k} (\d+)", proc.stdout).group(1)) for k in ("found", "true"))
    assert true == len(_annotations(tiny["dataset"], 2)) and found >= 1, proc.stdout


def test_a_picture_of_the_torch_model_shows_the_configured_number_of_images(tiny, tmp_path):
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    assert _picture(tiny, tiny["ckpt"], "torch", "fp32", one, images=1).returncode == 0
    proc = _picture(tiny, tiny["ckpt"], "torch", "fp32", three, images=3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(one) as a, Image.open(three) as b:
        assert b.width > 1.5 * a.width  # a 2×2 grid against a single panel


def test_a_picture_of_no_images_is_refused_with_one_line_and_no_output(tiny, tmp_path):
    out = tmp_path / "none.png"
    proc = _picture(tiny, tiny["ckpt"], "torch", "fp32", out, images=0)
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if line.startswith("planforge error:")] == [
        f"planforge error: {out}: pictures.images is 0; a picture needs at least one image"
    ]
    assert not out.exists()
