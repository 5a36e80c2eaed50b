"""The YOLO family's pure pre/post-processing agrees with ultralytics and maps boxes back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.models import yolo


@pytest.mark.parametrize("shape", [(120, 200), (257, 97), (320, 320), (500, 380)])
def test_letterbox_matches_ultralytics_letterbox(shape):
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    ours, meta = yolo.letterbox(image, 160)
    theirs = LetterBox(new_shape=(160, 160), auto=False, scaleup=True)(image=image)
    assert ours.shape == theirs.shape == (160, 160, 3)
    np.testing.assert_array_equal(ours, theirs)
    assert meta.orig_h, meta.orig_w == shape


def _raw_output(boxes_cxcywh: np.ndarray, class_scores: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes_cxcywh.T, class_scores.T])[None].astype(np.float32)


def test_postprocess_maps_boxes_back_to_original_pixels():
    image = np.zeros((100, 200, 3), np.uint8)  # gain 0.8, padded 40 px top and bottom at 160
    _, meta = yolo.letterbox(image, 160)
    assert (meta.gain, meta.pad_x, meta.pad_y) == (0.8, 0, 40)
    raw = _raw_output(np.array([[80.0, 80.0, 40.0, 20.0]]), np.array([[0.1, 0.9]]))
    det = yolo.postprocess(raw, [meta], conf=0.25)[0]
    np.testing.assert_allclose(det["boxes"], [[75.0, 37.5, 125.0, 62.5]], atol=1e-4)
    assert det["classes"].tolist() == [1] and det["scores"].tolist() == pytest.approx([0.9])


def test_nms_is_per_class_and_keeps_the_best_box():
    _, meta = yolo.letterbox(np.zeros((160, 160, 3), np.uint8), 160)
    boxes = np.array([[50, 50, 20, 20], [51, 50, 20, 20], [50, 50, 20, 20], [120, 120, 10, 10]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.6, 0.0]], np.float32)
    det = yolo.postprocess(_raw_output(boxes, scores), [meta], conf=0.25, iou=0.5)[0]
    # box 1 overlaps box 0 of the same class and is suppressed; box 2 is another class and stays
    assert det["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert det["classes"].tolist() == [0, 1, 0]


def test_postprocess_respects_conf_and_max_det():
    _, meta = yolo.letterbox(np.zeros((160, 160, 3), np.uint8), 160)
    rng = np.random.default_rng(1)
    boxes = np.column_stack([rng.uniform(10, 150, (50, 2)), np.full((50, 2), 4.0)])
    scores = np.column_stack([rng.uniform(0, 1, 50), np.zeros(50)])
    det = yolo.postprocess(_raw_output(boxes, scores), [meta], conf=0.5, max_det=5)[0]
    assert len(det["scores"]) == 5 and (det["scores"] > 0.5).all()
    assert (np.diff(det["scores"]) <= 0).all()


def test_preprocess_batches_images_of_different_sizes():
    images = [np.full((90, 120, 3), 255, np.uint8), np.zeros((200, 100, 3), np.uint8)]
    batch, metas = yolo.preprocess(images, 160)
    assert batch.shape == (2, 3, 160, 160) and batch.dtype == np.float32
    assert batch.max() == 1.0 and batch.min() == 0.0
    assert [m.orig_h for m in metas] == [90, 200]
