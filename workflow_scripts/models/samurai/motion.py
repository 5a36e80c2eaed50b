"""SAMURAI's motion model, in numpy on the host: the Kalman filter on the box (`KalmanFilter`), the motion-aware
choice among the decoder's candidate masks (`select_candidate`) and the motion-aware memory selection
(`select_memory_frames`); a session's per-object state is a `SamuraiState`."""

from __future__ import annotations

import numpy as np


class KalmanFilter:
    """Upstream SAMURAI's box filter (from DeepSORT): state (cx, cy, a, h, vcx, vcy, va, vh), constant
    velocity, noise proportional to the box height; measurement (cx, cy, a, h)."""

    def __init__(self) -> None:
        ndim = 4
        self.motion_mat = np.eye(2 * ndim)
        for i in range(ndim):
            self.motion_mat[i, ndim + i] = 1.0
        self.update_mat = np.eye(ndim, 2 * ndim)
        self.std_position = 1.0 / 20
        self.std_velocity = 1.0 / 160

    def initiate(self, measurement) -> tuple[np.ndarray, np.ndarray]:
        m = np.asarray(measurement, np.float64)
        mean = np.r_[m, np.zeros_like(m)]
        h = m[3]
        std = [2 * self.std_position * h, 2 * self.std_position * h, 1e-2, 2 * self.std_position * h]
        std += [10 * self.std_velocity * h, 10 * self.std_velocity * h, 1e-5, 10 * self.std_velocity * h]
        return mean, np.diag(np.square(std))

    def process_noise(self, mean) -> np.ndarray:
        h = mean[3]
        std = [self.std_position * h, self.std_position * h, 1e-2, self.std_position * h]
        std += [self.std_velocity * h, self.std_velocity * h, 1e-5, self.std_velocity * h]
        return np.diag(np.square(std))

    def measurement_noise(self, mean) -> np.ndarray:
        h = mean[3]
        return np.diag(np.square([self.std_position * h, self.std_position * h, 1e-1, self.std_position * h]))

    def predict(self, mean, covariance) -> tuple[np.ndarray, np.ndarray]:
        f = self.motion_mat
        return f @ mean, f @ covariance @ f.T + self.process_noise(mean)

    def update(self, mean, covariance, measurement) -> tuple[np.ndarray, np.ndarray]:
        h = self.update_mat
        projected_cov = h @ covariance @ h.T + self.measurement_noise(mean)
        # upstream solves with scipy's Cholesky factor; a 4x4 solve in numpy is the same gain (no scipy needed)
        gain = np.linalg.solve(projected_cov, (covariance @ h.T).T).T
        innovation = np.asarray(measurement, np.float64) - h @ mean
        return mean + innovation @ gain.T, covariance - gain @ projected_cov @ gain.T


def xyxy_to_xyah(box) -> list[float]:
    x1, y1, x2, y2 = box
    h = y2 - y1
    h = h if h != 0 else 1  # upstream: an empty mask's box [0, 0, 0, 0] becomes height 1
    return [(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / h, h]


def xyah_to_xyxy(state) -> list[float]:
    xc, yc, a, h = state[:4]
    return [xc - a * h / 2, yc - h / 2, xc + a * h / 2, yc + h / 2]


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes, upstream's rule: an all-zero second box (an empty mask) scores 0."""
    if list(b) == [0, 0, 0, 0]:
        return 0.0
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union != 0 else 0.0


def mask_box(mask: np.ndarray) -> list[int]:
    """xyxy of the pixels of a boolean mask (inclusive indices, upstream's convention); [0, 0, 0, 0] if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def select_candidate(
    state: dict, ious: np.ndarray, boxes: list, settings: dict, kf: KalmanFilter
) -> tuple[int, float | None]:
    """Upstream's multimask choice for one object on one tracked frame: (candidate index, its Kalman IoU or None).

    `state` (per object: `mean`, `cov`, `stable`, `predicted`) is updated in place; `ious` are the decoder's
    predicted IoUs and `boxes` the xyxy boxes of the candidates' masks (model pixels).
    """
    state["predicted"] = None
    if state["mean"] is None or state["stable"] == 0:
        k = int(np.argmax(ious))
        state["mean"], state["cov"] = kf.initiate(xyxy_to_xyah(boxes[k]))
        state["stable"] += 1
        return k, None
    state["mean"], state["cov"] = kf.predict(state["mean"], state["cov"])
    state["predicted"] = xyah_to_xyxy(state["mean"])
    if state["stable"] < settings["stable_frames"]:
        k = int(np.argmax(ious))
        if ious[k] > settings["stable_iou"]:
            state["mean"], state["cov"] = kf.update(state["mean"], state["cov"], xyxy_to_xyah(boxes[k]))
            state["stable"] += 1
        else:
            state["stable"] = 0
        return k, None
    kf_ious = np.array([box_iou(state["predicted"], b) for b in boxes])
    alpha = settings["alpha"]
    k = int(np.argmax(alpha * kf_ious + (1 - alpha) * ious))
    if ious[k] < settings["stable_iou"]:
        state["stable"] = 0
    else:
        state["mean"], state["cov"] = kf.update(state["mean"], state["cov"], xyxy_to_xyah(boxes[k]))
    return k, float(kf_ious[k])


def qualifies(out: dict, settings: dict) -> bool:
    """Whether a tracked frame's output may enter the memory bank (mask IoU, object score, motion score)."""
    kf_score = out.get("kf_score")
    kf_ok = settings["memory_kf_score"] is None or kf_score is None or kf_score > settings["memory_kf_score"]
    return (
        out.get("best_iou_score", 0.0) > settings["memory_iou"]
        and _object_score(out) > settings["memory_obj_score"]
        and kf_ok
    )


def _object_score(out: dict) -> float:
    """A frame output's object score logit: the host copy the tracked heads keep, else read from the device."""
    score = out.get("object_score")
    return float(out["object_score_logits"].reshape(-1)[0]) if score is None else score


def mask_boxes(masks):
    """xyxy boxes [N, 4] (int64, on the masks' device) of boolean masks [N, H, W]: `mask_box` per mask, computed
    with reductions on the device (no host copy of the masks); an empty mask gives [0, 0, 0, 0]."""
    import torch

    n, h, w = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # [N, H], [N, W]
    ys, xs = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ys, h).amin(dim=1)
    y2 = torch.where(rows, ys, -1).amax(dim=1)
    x1 = torch.where(cols, xs, w).amin(dim=1)
    x2 = torch.where(cols, xs, -1).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    return torch.where(rows.any(dim=1)[:, None], boxes, 0)


def select_memory_frames(
    outputs: dict, frame_idx: int, first_frame: int, settings: dict, num_maskmem: int
) -> list[int]:
    """The tracked frames whose memories the frame `frame_idx` attends to, oldest first (at most num_maskmem − 1).

    Upstream's scan: frames frame_idx−1 down to first_frame+2 (the first tracked frame is skipped, as
    upstream's `range(frame_idx - 1, 1, -1)` does with the prompt on frame 0), newest first, until
    `memory_window` qualify; the previous frame is always added; the newest num_maskmem − 1 are kept.
    """
    valid: list[int] = []
    for i in sorted((i for i in outputs if first_frame + 1 < i < frame_idx), reverse=True):
        if qualifies(outputs[i], settings):
            valid.insert(0, i)
        if len(valid) >= settings["memory_window"]:
            break
    if frame_idx - 1 not in valid:
        valid.append(frame_idx - 1)
    return valid[-(num_maskmem - 1) :] if num_maskmem > 1 else []


class SamuraiState:
    """A session's SAMURAI state: its settings, the prompt frame, and one Kalman state per object."""

    def __init__(self, settings: dict, first_frame: int = 0) -> None:
        self.settings = settings
        self.first_frame = first_frame
        self.kf = KalmanFilter()
        self.objects: dict[int, dict] = {}

    def object(self, obj_idx: int) -> dict:
        return self.objects.setdefault(obj_idx, {"mean": None, "cov": None, "stable": 0, "predicted": None})
