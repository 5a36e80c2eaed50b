"""The tracking task (single-object visual tracking, SAMURAI): a prompt box on the first frame of a video,
then one box per later frame from a stateful tracker, scored by OTB's one-pass evaluation.

Dataset (kind `videos`, `make_videos`): per split an index JSON `videos_<split>.json` and the arrays
`videos_<split>.npz` (frames [S, F, H, W, 3] uint8, the target's boxes [S, F, 4] xywh in pixels, its visible
fraction [S, F]), all from the seed: a textured background, a target shape that moves, bounces and changes
scale, and distractor shapes of other colours, some drawn in front of it (they occlude it part of the time).

A tracking family provides `tracker(facts) -> Tracker` (`facts`: the runner's `RunnerFacts`, how it holds and
runs the model: `runner.facts()`) and `input_size(facts)`; a Tracker has `start(frame, box_xywh) -> box`,
`track(frame) -> (box, score)`, `close()` and `state_bytes()`; the state of one sequence lives in its
Tracker, never on the model, so one loaded model serves many live sequences. Optionally `track_many(trackers,
frames)`: one frame of each of several live sequences, batched where the family can (the bench's unit of
`batch` live sequences and the Triton model's batch of sequence requests use it).

Metrics (`sequence_metrics`, `overall`): OTB one-pass evaluation as got10k's ExperimentOTB computes it
(tests/test_tracking.py checks against it):
- frame 0 counts with the given box (OTB's `boxes[0] = anno[0]`);
- success curve: fraction of frames with IoU > t for t in np.linspace(0, 1, 21); `auc` is its mean;
- precision curve: fraction with centre error ≤ t px, t = 0..50; `precision_20` is its value at 20 px;
- normalised precision (TrackingNet, LaSOT as pytracking scores them): the centre error divided by the
  true box's width and height per axis, curve over 0..0.5 in steps of 0.01, `norm_precision` its value at 0.2;
- overall: the mean over sequences of each sequence's curve (OTB averages sequences, not frames).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError, atomic_path, read_json, write_json
from workflow_scripts.core.metrics import latency_stats, timed_calls

NAME = "tracking"
COLOURS = {
    "red": (225, 30, 30),
    "green": (30, 190, 60),
    "blue": (40, 70, 230),
    "yellow": (240, 210, 30),
    "magenta": (220, 40, 200),
    "cyan": (30, 210, 220),
}
SHAPES = ("rectangle", "ellipse", "triangle")
VIDEO_DEFAULTS = {"frames": 24, "frame_size": 160, "distractors": 2}
SUCCESS_THRESHOLDS = np.linspace(0, 1, 21)  # IoU
PRECISION_THRESHOLDS = np.arange(0, 51)  # centre error, pixels
NORM_PRECISION_THRESHOLDS = np.arange(0, 51) / 100.0  # centre error / true box size
PRECISION_AT = 20  # px
NORM_PRECISION_AT = 0.2


def index_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"videos_{split}.json"


def arrays_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"videos_{split}.npz"


# -- dataset -------------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static texture: a colour gradient, a few random gratings and fine noise (float32 HxWx3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    top, bottom = rng.uniform(50, 170, 3), rng.uniform(50, 170, 3)
    img = top * (1 - yy[..., None]) + bottom * yy[..., None]
    for _ in range(4):
        fx, fy = rng.uniform(-12, 12, 2)
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(8, 25, 3)
        img += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)[..., None] * amp
    img += rng.normal(0, 6, img.shape)
    return img.astype(np.float32)


def _mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, w: float, h: float) -> np.ndarray:
    """Pixels (centres at +0.5) inside a shape whose bounding box is (cx ± w/2, cy ± h/2)."""
    dx, dy = (xx - cx) / (w / 2), (yy - cy) / (h / 2)
    if shape == "rectangle":
        return (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    if shape == "ellipse":
        return dx**2 + dy**2 <= 1
    return (dy >= -1) & (dy <= 1) & (np.abs(dx) <= (dy + 1) / 2)  # triangle, apex up


def _path(rng: np.random.Generator, frames: int, size: int, w: float, h: float, speed: float) -> np.ndarray:
    """Centres [F, 2] of an object moving at `speed` px/frame that bounces off the frame's edges."""
    lo, hi = np.array([w, h]) / 2 + 1, size - np.array([w, h]) / 2 - 1
    pos = rng.uniform(lo, hi)
    angle = rng.uniform(0, 2 * np.pi)
    vel = speed * np.array([np.cos(angle), np.sin(angle)])
    out = np.zeros((frames, 2))
    for f in range(frames):
        out[f] = pos
        vel = vel + rng.normal(0, speed * 0.15, 2)  # a little wander
        pos = pos + vel
        for k in range(2):
            if pos[k] < lo[k] or pos[k] > hi[k]:
                vel[k] = -vel[k]
                pos[k] = np.clip(pos[k], lo[k], hi[k])
    return out


def make_sequence(rng: np.random.Generator, frames: int, size: int, distractors: int, masks: list | None = None):
    """One sequence: frames [F, H, W, 3] uint8, target boxes [F, 4] xywh, visible fraction [F], its description.

    `masks`: a list that receives the target's visible mask per frame ([H, W] bool; the tiny tracker's training)."""
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    others = [c for c in names if c != colour]
    shape = SHAPES[rng.integers(len(SHAPES))]
    base = rng.uniform(0.14, 0.26, 2) * size  # width, height at scale 1
    amp, period, phase = rng.uniform(0.15, 0.35), rng.uniform(0.6, 1.5) * frames, rng.uniform(0, 2 * np.pi)
    scale = 1 + amp * np.sin(2 * np.pi * np.arange(frames) / period + phase)
    wh = base[None] * scale[:, None]
    centres = _path(rng, frames, size, *(base * (1 + amp)), speed=rng.uniform(0.01, 0.03) * size)
    # distractors cross the target's path around a random frame; in front of it (occluding) or behind
    movers = []
    for _ in range(distractors):
        d_wh = rng.uniform(0.12, 0.3, 2) * size
        t_cross = int(rng.integers(frames // 4, max(frames // 4 + 1, 3 * frames // 4)))
        angle = rng.uniform(0, 2 * np.pi)
        vel = rng.uniform(0.02, 0.05) * size * np.array([np.cos(angle), np.sin(angle)])
        d_centres = centres[t_cross] + vel * (np.arange(frames) - t_cross)[:, None]
        movers.append(
            {
                "shape": SHAPES[rng.integers(len(SHAPES))],
                "colour": others[rng.integers(len(others))],
                "wh": d_wh,
                "centres": d_centres,
                "front": bool(rng.random() < 0.6),
            }
        )
    bg = _background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    video = np.zeros((frames, size, size, 3), np.uint8)
    boxes = np.zeros((frames, 4), np.float64)
    visible = np.zeros(frames, np.float64)
    for f in range(frames):
        img = bg.copy()
        for d in (d for d in movers if not d["front"]):
            img[_mask(d["shape"], xx, yy, *d["centres"][f], *d["wh"])] = COLOURS[d["colour"]]
        target = _mask(shape, xx, yy, *centres[f], *wh[f])
        img[target] = COLOURS[colour]
        hidden = np.zeros_like(target)
        for d in (d for d in movers if d["front"]):
            m = _mask(d["shape"], xx, yy, *d["centres"][f], *d["wh"])
            img[m] = COLOURS[d["colour"]]
            hidden |= m & target
        video[f] = np.clip(img, 0, 255).astype(np.uint8)
        if masks is not None:
            masks.append(target & ~hidden)
        boxes[f] = (*(centres[f] - wh[f] / 2), *wh[f])
        visible[f] = 1 - hidden.sum() / max(1, target.sum())
    about = {"shape": shape, "colour": colour, "distractors": [(d["shape"], d["colour"], d["front"]) for d in movers]}
    return video, boxes, visible, about


def make_videos(out: str | Path, settings: dict, split: str) -> dict:
    """Write split `split` of a videos dataset (index JSON + arrays); the same settings give the same bytes."""
    s = {**VIDEO_DEFAULTS, **settings}
    count, frames, size = int(s["splits"][split]), int(s["frames"]), int(s["frame_size"])
    if frames < 2:
        raise PlanforgeError(f"videos: frames {frames}: a sequence needs at least 2 (the prompt frame and one more)")
    # each split draws from its own stream: a split's size never changes another split's sequences
    rng = np.random.default_rng([int(s["seed"]), ("train", "val", "calib").index(split)])
    videos = np.zeros((count, frames, size, size, 3), np.uint8)
    boxes = np.zeros((count, frames, 4), np.float32)
    visible = np.zeros((count, frames), np.float32)
    records = []
    for i in range(count):
        videos[i], boxes[i], visible[i], about = make_sequence(rng, frames, size, int(s["distractors"]))
        records.append({"id": i, **about, "min_visible": round(float(visible[i].min()), 3)})
    arrays = arrays_path(out, split)
    with atomic_path(arrays, suffix=".npz.tmp") as tmp, open(tmp, "wb") as f:
        np.savez(f, frames=videos, boxes=boxes, visible=visible)
    index = {
        "kind": "videos",
        "split": split,
        "settings": {k: s[k] for k in ("seed", *VIDEO_DEFAULTS)},
        "count": count,
        "frames": frames,
        "frame_size": size,
        "box_format": "xywh, pixels, top-left origin",
        "arrays": arrays.name,
        "arrays_sha256": hashlib.sha256(arrays.read_bytes()).hexdigest(),
        "sequences": records,
    }
    write_json(index_path(out, split), index)
    return index


@dataclass(frozen=True)
class Videos:
    index: dict
    frames: np.ndarray  # [S, F, H, W, 3] uint8
    boxes: np.ndarray  # [S, F, 4] xywh
    visible: np.ndarray  # [S, F]

    def __len__(self) -> int:
        return len(self.frames)


def load_videos(folder: str | Path, split: str = "val") -> Videos:
    """A split's sequences; a missing or corrupt index or arrays file is one line naming it."""
    idx = index_path(folder, split)
    remake = "make it again with `python -m workflow_scripts.make_videos` (or delete it and rerun snakemake)"
    if not idx.is_file():
        raise PlanforgeError(f"{idx}: no such videos index; make it with `python -m workflow_scripts.make_videos`")
    try:
        index = read_json(idx)
        arrays = Path(folder) / index["arrays"]
        with np.load(arrays) as z:
            frames, boxes, visible = z["frames"], z["boxes"], z["visible"]
    except PlanforgeError:
        raise
    except Exception as exc:  # noqa: BLE001 (any unreadable file: one line naming it)
        raise PlanforgeError(
            f"{idx}: not a readable videos index and arrays ({type(exc).__name__}: {exc}); {remake}"
        ) from None
    if index.get("kind") != "videos" or frames.shape[:2] != boxes.shape[:2] or len(frames) != index["count"]:
        raise PlanforgeError(f"{idx}: the index and {arrays.name} do not agree; {remake}")
    return Videos(index, frames, boxes.astype(np.float64), visible)


# -- metrics -------------------------------------------------------------------------------------------------
def _xyxy(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def box_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU per frame of xywh boxes [N, 4]; a zero-size or non-finite box has IoU 0."""
    p, t = _xyxy(pred), _xyxy(truth)
    wh = np.clip(np.minimum(p[:, 2:], t[:, 2:]) - np.maximum(p[:, :2], t[:, :2]), 0, None)
    inter = wh.prod(axis=1)
    area = lambda b: np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)  # noqa: E731
    union = area(p) + area(t) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.nan_to_num(np.clip(iou, 0, 1), nan=0.0)


def _centres(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return b[:, :2] + (b[:, 2:] - 1) / 2  # OTB's pixel-centre convention, as got10k's center_error


def centre_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean distance in pixels between box centres; a non-finite prediction is infinitely far."""
    return np.nan_to_num(np.linalg.norm(_centres(pred) - _centres(truth), axis=1), nan=np.inf)


def norm_centre_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Centre error with each axis divided by the true box's width / height (TrackingNet's normalisation)."""
    size = np.asarray(truth, np.float64).reshape(-1, 4)[:, 2:]
    d = (_centres(pred) - _centres(truth)) / np.where(size > 0, size, np.nan)
    return np.nan_to_num(np.linalg.norm(d, axis=1), nan=np.inf)


def sequence_curves(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """One sequence's success, precision and normalised precision curves (fractions of its frames)."""
    iou, ce, nce = box_iou(pred, truth), centre_error(pred, truth), norm_centre_error(pred, truth)
    return {
        "success": (iou[:, None] > SUCCESS_THRESHOLDS[None]).mean(axis=0),
        "precision": (ce[:, None] <= PRECISION_THRESHOLDS[None]).mean(axis=0),
        "norm_precision": (nce[:, None] <= NORM_PRECISION_THRESHOLDS[None]).mean(axis=0),
    }


def scores(curves: dict[str, np.ndarray]) -> dict[str, float]:
    """The scalar scores of a set of curves: success AUC, precision at 20 px, normalised precision at 0.2."""
    return {
        "auc": float(np.mean(curves["success"])),
        "success_50": float(curves["success"][len(SUCCESS_THRESHOLDS) // 2]),  # IoU > 0.5
        "precision_20": float(curves["precision"][PRECISION_AT]),
        "norm_precision": float(curves["norm_precision"][int(round(NORM_PRECISION_AT * 100))]),
    }


def overall(per_sequence: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean curve over sequences (OTB's report: every sequence weighs the same, whatever its length)."""
    return {k: np.mean([c[k] for c in per_sequence], axis=0) for k in per_sequence[0]}


# -- accuracy ------------------------------------------------------------------------------------------------
def run_sequence(tracker, frames: np.ndarray, first_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pass: `start` on frame 0 with the true box, `track` on the rest; boxes [F, 4] and scores [F]."""
    boxes = np.zeros((len(frames), 4))
    obj = np.zeros(len(frames))
    try:
        tracker.start(frames[0], first_box)
        boxes[0], obj[0] = first_box, np.nan  # OTB: frame 0 counts with the given box
        for f in range(1, len(frames)):
            box, score = tracker.track(frames[f])
            boxes[f], obj[f] = np.asarray(box, np.float64).reshape(4), float(score)
    finally:
        tracker.close()
    return boxes, obj


def evaluate(new_tracker: Callable, dataset, checkpoint_info, batch: int, max_images: int | None, desc: str) -> dict:
    """Track every val sequence (one after another, a fresh tracker each) and score them (OTB one-pass)."""
    vids = load_videos(dataset, "val")
    n = min(len(vids), max_images) if max_images else len(vids)
    t0 = time.perf_counter()
    rows, curves = [], []
    for i in range(n):
        boxes, obj = run_sequence(new_tracker(), vids.frames[i], vids.boxes[i, 0])
        c = sequence_curves(boxes, vids.boxes[i])
        curves.append(c)
        rows.append(
            {
                "sequence": i,
                "frames": len(boxes),
                **scores(c),
                "mean_iou": float(box_iou(boxes, vids.boxes[i]).mean()),
                "min_visible": float(vids.visible[i].min()),
                "mean_object_score": float(np.nanmean(obj)),
            }
        )
    seconds = time.perf_counter() - t0
    frames = int(sum(r["frames"] for r in rows))
    all_curves = overall(curves)
    return {
        "task": NAME,
        "metric": "auc",
        "sequences": n,
        "frames": frames,
        **scores(all_curves),
        "evaluation": "OTB one-pass (got10k ExperimentOTB): frame 0 given, mean over sequences of per-sequence "
        "curves; success = IoU > t, t in linspace(0,1,21), auc = its mean; precision_20 = centre error <= 20 px; "
        "norm_precision = centre error / true box size <= 0.2 (curve over 0..0.5)",
        "curves": {k: [round(float(v), 6) for v in c] for k, c in all_curves.items()},
        "per_sequence": [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        "worst_sequence": min(rows, key=lambda r: r["auc"])["sequence"],
        "seconds": round(seconds, 2),
        "tracked_fps": round((frames - n) / seconds, 2) if seconds else None,  # later frames only, host clock
    }


EXPORT_CHECK_SEQUENCES = 1  # one sequence already calls every part on a prompt frame and on tracked frames


def export_check_inputs(fam, model, dataset, count: int, imgsz: int) -> dict[str, np.ndarray]:
    """What a parts export is checked on against torch: the first val sequence (at most `count`; frames
    [S, F, H, W, 3]) and its first box [S, 4]; the family records its parts' calls while torch tracks it
    (`record_parts`: its memory length and object-pointer count grow over the first frames, so each part meets
    every shape a longer sequence would give it once the sequence outlasts the memory bank)."""
    vids = load_videos(dataset, "val")
    n = max(1, min(count, len(vids), EXPORT_CHECK_SEQUENCES))
    return {"frames": vids.frames[:n], "boxes": vids.boxes[:n, 0]}


def predictor(fam, runner, s) -> Callable:
    """`new_tracker()` → a fresh Tracker (one per sequence) on the runner's model (`runner.facts()`)."""
    facts = runner.facts()
    return lambda: fam.tracker(facts)


# -- bench ---------------------------------------------------------------------------------------------------
PROMPT_REPEATS = 20  # at most this many prompt frames timed (each on a fresh tracker)
TIMERS = {
    "model": "host clock around one frame of each of `batch` live sequences after their prompt frame: the "
    "family's track_many(trackers, frames) where it has one (SAMURAI: one image-encoder batch, then each "
    "sequence's own steps), else Tracker.track(frame) of each, one after another; a tracker returns host arrays, "
    "so the device work is done when the clock is read; "
    "the frames are already decoded HxWx3 uint8 arrays; pre/post-processing inside the tracker is included",
    "prompt": "prompt_ms: Tracker.start(frame 0, true box) on a fresh tracker, host clock, each closed after",
    "sequence": "frames of a val sequence forward then backward (1..F-1, F-2..0, 1..) so that a live sequence runs "
    "for as many calls as the loop needs and its motion stays continuous",
    "state": "state_bytes: Tracker.state_bytes() per live sequence after start and after the timed loops; "
    "gpu_bytes_per_sequence: torch.cuda.memory_allocated growth from starting the live sequences, divided by them",
}


def pingpong_order(frames: int):
    """Frame indices 1..F-1, F-2..0, 1.. forever (a sequence that never ends, with continuous motion)."""
    order = [*range(1, frames), *range(frames - 2, -1, -1)]
    while True:
        yield from order


def _gpu_allocated(device: str) -> int | None:
    if not str(device).startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize(device)
    return int(torch.cuda.memory_allocated(device))


def bench_unit(fam, runner, dataset, batch: int, imgsz: int, host_iterations: int, conf: float) -> dict:
    """The timed unit: one frame of each of `batch` live sequences (`call`); the prompt frame timed apart."""
    vids = load_videos(dataset, "val")
    facts = runner.facts()
    seqs = [i % len(vids) for i in range(batch)]  # a small split still fills the batch by repeating sequences

    def prompt() -> None:
        t = fam.tracker(facts)
        t.start(vids.frames[0, 0], vids.boxes[0, 0])
        t.close()

    prompt_times = timed_calls(prompt, min(host_iterations, PROMPT_REPEATS))
    before = _gpu_allocated(runner.device)
    live = []
    for i in seqs:
        t = fam.tracker(facts)
        t.start(vids.frames[i, 0], vids.boxes[i, 0])
        live.append((t, vids.frames[i], pingpong_order(vids.frames.shape[1])))
    after_start = _gpu_allocated(runner.device)
    start_bytes = [t.state_bytes() for t, _, _ in live]
    calls = {"n": 0}

    trackers = [t for t, _, _ in live]
    step_many = getattr(fam, "track_many", None)

    def call() -> list:
        calls["n"] += 1
        frames = [f[next(order)] for _, f, order in live]
        if step_many is not None:
            return step_many(trackers, frames)
        return [t.track(f) for t, f in zip(trackers, frames)]

    def after(outputs) -> dict:
        end_bytes = [t.state_bytes() for t, _, _ in live]
        for t, _, _ in live:
            t.close()
        return {
            "object_scores_last": [round(float(score), 4) for _, score in outputs],
            "frames_per_sequence": calls["n"] + 1,  # every timed and warm-up call, and the prompt frame
            "state_bytes": {
                "after_start_mean": float(np.mean(start_bytes)),
                "after_loop_mean": float(np.mean(end_bytes)),
                "after_loop_max": int(max(end_bytes)),
            },
            "gpu_bytes_per_sequence": (after_start - before) / batch if before is not None else None,
            **({"tracker": live[0][0].describe()} if hasattr(live[0][0], "describe") else {}),
        }

    return {
        "call": call,
        "timers": TIMERS,
        "record": {
            "prompt_ms": latency_stats(prompt_times),
            "live_sequences": batch,
            "frame_size": list(vids.frames.shape[2:4]),
            "input_size": fam.input_size(facts),  # the family's own resolution (not models.<m>.imgsz)
            "host_timer_iterations": len(prompt_times),
        },
        "after": after,
    }
