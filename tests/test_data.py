"""The synthetic dataset is deterministic, COCO-format, and bad images fail with one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from workflow_scripts.core.data import SHAPE_CLASSES, SyntheticSpec, load_split, make_synthetic_dataset, read_image
from workflow_scripts.core.io import PlanforgeError

SPEC = SyntheticSpec(seed=7, train=3, val=5, calib=2, min_size=96, max_size=160)


def _digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    make_synthetic_dataset(tmp_path / "a", SPEC, progress=False)
    make_synthetic_dataset(tmp_path / "b", SPEC, progress=False)
    make_synthetic_dataset(tmp_path / "c", SyntheticSpec(**{**SPEC.__dict__, "seed": 8}), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_val_split_does_not_depend_on_the_train_split_size(tmp_path):
    make_synthetic_dataset(tmp_path / "a", SPEC, progress=False)
    make_synthetic_dataset(tmp_path / "b", SyntheticSpec(**{**SPEC.__dict__, "train": 11}), progress=False)
    assert (tmp_path / "a/instances_val.json").read_bytes() == (tmp_path / "b/instances_val.json").read_bytes()


def test_splits_are_coco_format_with_boxes_inside_their_images(tmp_path):
    make_synthetic_dataset(tmp_path, SPEC, progress=False)
    for split, n in (("train", 3), ("val", 5), ("calib", 2)):
        coco = json.loads((tmp_path / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == n
        assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            W, H = sizes[ann["image_id"]]
            assert w > 0 and h > 0 and x >= -0.5 and y >= -0.5 and x + w <= W + 0.5 and y + h <= H + 0.5
        for im in coco["images"]:
            assert read_image(tmp_path / "images" / split / im["file_name"]).shape == (im["height"], im["width"], 3)


def test_an_unreadable_image_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(PlanforgeError, match="broken.jpg: unreadable image"):
        read_image(bad)


def test_an_empty_split_is_one_line_naming_the_annotation_file(tmp_path):
    (tmp_path / "instances_val.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(PlanforgeError, match="instances_val.json: the val split has no images"):
        load_split(tmp_path, "val")


def test_make_dataset_cli_leaves_nothing_behind_when_it_fails(tmp_path):
    out = tmp_path / "ds"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_scripts.make_dataset",
            "--out",
            str(out),
            "--settings",
            json.dumps({"kind": "synthetic", "image_size": [300, 200]}),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "planforge error: dataset image_size 300..200: the first value must not exceed the second"
    ]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_images_have_objects_of_every_coco_size_class(tmp_path):
    make_synthetic_dataset(tmp_path, SyntheticSpec(seed=0, train=0, val=40, calib=0), progress=False)
    areas = np.array([a["area"] for a in json.loads((tmp_path / "instances_val.json").read_text())["annotations"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()


def test_normalized_targets_are_class_indices_and_relative_centre_boxes(tmp_path):
    """What both training scripts take: class index in category order, cx cy w h relative to the image."""
    make_synthetic_dataset(tmp_path / "d", SPEC, progress=False, splits=("val",))
    split = load_split(tmp_path / "d", "val")
    targets = split.normalized_targets()
    anns = json.loads(split.annotations.read_text())["annotations"]
    assert set(targets) == {im["id"] for im in split.images}
    assert sum(len(c) for c, _ in targets.values()) == len(anns)
    a = anns[0]
    im = next(i for i in split.images if i["id"] == a["image_id"])
    classes, boxes = targets[a["image_id"]]
    x, y, w, h = a["bbox"]
    assert classes[0] == list(split.categories).index(a["category_id"]) and classes.dtype == np.int64
    expected = [(x + w / 2) / im["width"], (y + h / 2) / im["height"], w / im["width"], h / im["height"]]
    assert boxes.shape[1] == 4 and np.array_equal(boxes[0], np.asarray(expected))
    assert ((boxes >= 0) & (boxes <= 1)).all()
