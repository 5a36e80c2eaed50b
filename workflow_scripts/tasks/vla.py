"""The vla task (vision-language-action, Pi0): episodes in, action chunks out, scored by the action error
against the FP32 eager reference run on the same episodes with the same noise.

Dataset (kind `episodes`, `make_episodes`): per split an index JSON `episodes_<split>.json` and the arrays
`episodes_<split>.npz`, all from the seed: rendered scenes (coloured shapes on a gradient background, one
image per camera, each camera a shifted view), a robot state vector, a prompt's token ids and mask (a
fixed word → id table; no tokenizer) and the noise every backend starts its chunk from.

Accuracy: every accuracy job saves its actions (`<backend>_<precision>.actions.npz`); a non-baseline job
reads the baseline's and reports MSE, max abs error and the per-dimension errors. The baseline compares
with itself (0 by construction). The gate for an error is absolute: MSE ≤ `accuracy.error_tolerance`
(a ratio to a baseline of 0 means nothing; see workflow_scripts.tasks.gate).
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

NAME = "vla"
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")
VERBS = ("pick up", "push", "move", "place")
WORDS = ("the", "to", "left", "right", "of", "near", "a", "cube", "bowl", *COLOURS, *SHAPES, *VERBS)
EPISODE_DEFAULTS = {
    "cameras": 1,
    "camera_size": 224,
    "state_dim": 8,
    "prompt_tokens": 16,
    "chunk_size": 50,
    "action_dim": 32,
}


def index_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"episodes_{split}.json"


def arrays_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"episodes_{split}.npz"


def _token_id(word: str) -> int:
    """A fixed id per word in [3, 1000): stable across runs and processes (no Python hash)."""
    return 3 + int(hashlib.sha256(word.encode()).hexdigest(), 16) % 997


def _render(rng: np.random.Generator, size: int, cameras: int, objects: list[dict]) -> np.ndarray:
    """One scene seen by `cameras` cameras: a gradient background and the objects, each camera shifted."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    top, bottom = rng.integers(60, 200, 3), rng.integers(60, 200, 3)
    views = []
    for cam in range(cameras):
        img = (top[None, None] * (1 - yy[..., None]) + bottom[None, None] * yy[..., None]).astype(np.float32)
        shift = 0.15 * cam
        for o in objects:
            cx, cy, r = (o["x"] + shift) % 1.0, o["y"], o["r"]
            dx, dy = xx - cx, yy - cy
            if o["shape"] == "circle":
                mask = dx**2 + dy**2 <= r**2
            elif o["shape"] == "square":
                mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
            else:  # triangle, apex up
                mask = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
            img[mask] = COLOURS[o["colour"]]
        views.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(views)


def make_episodes(out: str | Path, settings: dict, split: str) -> dict:
    """Write split `split` of an episodes dataset (index JSON + arrays); the same settings give the same bytes."""
    s = {**EPISODE_DEFAULTS, **settings}
    count = int(s["splits"][split])
    # each split draws from its own stream: a split's size never changes another split's episodes
    rng = np.random.default_rng([int(s["seed"]), ("train", "val", "calib").index(split)])
    size, cams = int(s["camera_size"]), int(s["cameras"])
    images = np.zeros((count, cams, size, size, 3), np.uint8)
    state = rng.normal(0.0, 1.0, (count, int(s["state_dim"]))).astype(np.float32)
    ids = np.zeros((count, int(s["prompt_tokens"])), np.int64)
    mask = np.zeros_like(ids, dtype=bool)
    noise = rng.normal(0.0, 1.0, (count, int(s["chunk_size"]), int(s["action_dim"]))).astype(np.float32)
    records = []
    for i in range(count):
        objects = [
            {
                "shape": SHAPES[rng.integers(len(SHAPES))],
                "colour": list(COLOURS)[rng.integers(len(COLOURS))],
                "x": float(rng.uniform(0.15, 0.85)),
                "y": float(rng.uniform(0.15, 0.85)),
                "r": float(rng.uniform(0.05, 0.15)),
            }
            for _ in range(int(rng.integers(1, 5)))
        ]
        images[i] = _render(rng, size, cams, objects)
        goal = objects[0]
        prompt = f"{VERBS[rng.integers(len(VERBS))]} the {goal['colour']} {goal['shape']}"
        words = prompt.split()[: ids.shape[1]]
        ids[i, : len(words)] = [_token_id(w) for w in words]
        mask[i, : len(words)] = True
        records.append({"id": i, "prompt": prompt, "objects": objects})
    arrays = arrays_path(out, split)
    with atomic_path(arrays, suffix=".npz.tmp") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, state=state, token_ids=ids, token_mask=mask, noise=noise)
    index = {
        "kind": "episodes",
        "split": split,
        "settings": {k: s[k] for k in ("seed", *EPISODE_DEFAULTS)},
        "count": count,
        "arrays": arrays.name,
        "arrays_sha256": hashlib.sha256(arrays.read_bytes()).hexdigest(),
        "episodes": records,
    }
    write_json(index_path(out, split), index)
    return index


@dataclass(frozen=True)
class Episodes:
    index: dict
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return self.index["count"]

    def take(self, rows) -> dict[str, np.ndarray]:
        return {k: v[rows] for k, v in self.arrays.items()}


def load_episodes(folder: str | Path, split: str = "val") -> Episodes:
    idx = index_path(folder, split)
    if not idx.is_file():
        raise PlanforgeError(f"{idx}: no such episodes index; make it with `python -m workflow_scripts.make_episodes`")
    index = read_json(idx)
    with np.load(Path(folder) / index["arrays"]) as z:
        arrays = {k: z[k] for k in z.files}
    return Episodes(index, arrays)


# -- accuracy ----------------------------------------------------------------------------------------------
def action_errors(actions: np.ndarray, reference: np.ndarray) -> dict:
    """MSE, max abs error and per action dimension errors of `actions` against `reference` ([N, chunk, dim])."""
    if actions.shape != reference.shape:
        raise PlanforgeError(f"actions {actions.shape} vs reference {reference.shape}: not the same episodes")
    diff = actions.astype(np.float64) - reference.astype(np.float64)
    var = float(reference.astype(np.float64).var())
    mse = float((diff**2).mean())
    return {
        "action_mse": mse,
        "action_max_abs": float(np.abs(diff).max()),
        "action_rel_mse": mse / var if var else None,  # MSE over the reference's variance
        "per_dim_mse": [float(v) for v in (diff**2).mean(axis=(0, 1))],
        "per_dim_max_abs": [float(v) for v in np.abs(diff).max(axis=(0, 1))],
    }


def evaluate(
    predict: Callable,
    dataset,
    checkpoint_info,
    batch: int,
    max_images: int | None,
    desc: str,
    reference: Path | None = None,
    save: Path | None = None,
) -> dict:
    """Action chunks for the val episodes, their error against the reference's (none: this is the reference)."""
    eps = load_episodes(dataset, "val")
    n = min(len(eps), max_images) if max_images else len(eps)
    t0 = time.perf_counter()
    actions = np.concatenate([predict(eps.take(slice(i, min(i + batch, n)))) for i in range(0, n, batch)])
    seconds = time.perf_counter() - t0
    if save is not None:
        with atomic_path(save, suffix=".npz.tmp") as tmp, open(tmp, "wb") as f:
            np.savez(f, actions=actions.astype(np.float32), arrays_sha256=eps.index["arrays_sha256"])
    if reference is None:
        ref = actions
    else:
        with np.load(reference) as z:
            ref = z["actions"]
            if str(z["arrays_sha256"]) != eps.index["arrays_sha256"]:
                raise PlanforgeError(f"{reference}: reference actions of other episodes; rerun the baseline")
    return {
        "task": NAME,
        "metric": "action_mse",
        "episodes": n,
        "chunk_shape": list(actions.shape[1:]),
        **action_errors(actions, ref),
        "reference": str(reference) if reference is not None else "self",
        "seconds": round(seconds, 2),
    }


def model_of(runner):
    """What the family's `geometry` reads: the runner's torch module, or the ONNX file a session runs."""
    return runner.model if hasattr(runner, "model") else runner.path


def predictor(fam, runner, s) -> Callable:
    """`predict(episodes)` → actions [B, chunk, dim]: the family's input arrays through the runner."""
    geo = fam.geometry(model_of(runner))

    def predict(episodes: dict) -> np.ndarray:
        return runner(fam.preprocess(episodes, geo))[0]

    return predict


def export_check_inputs(fam, model, dataset, count: int, imgsz: int) -> dict[str, np.ndarray]:
    """The named input arrays an ONNX export is checked on against torch: the first `count` val episodes."""
    eps = load_episodes(dataset, "val")
    return fam.preprocess(eps.take(slice(0, min(count, len(eps)))), fam.geometry(model))


# -- bench ---------------------------------------------------------------------------------------------------
TIMERS = {
    "preprocess": "episode arrays → model inputs: images resized to the vision tower's size and scaled to [-1, 1], "
    "image + prompt token ids and mask, padded state, the given noise",
    "phases": "inside the chunk, eager runs only: prefix (images + prompt → KV cache) and denoise (the "
    "num_inference_steps expert steps), host clock, the device synchronised between them",
}


def bench_unit(fam, runner, dataset, batch: int, imgsz: int, host_iterations: int, conf: float) -> dict:
    """The timed unit: one action chunk for `batch` episodes (prefix + denoising steps)."""
    eps = load_episodes(dataset, "val")
    rows = [i % len(eps) for i in range(batch)]  # a small split still fills the batch by repeating episodes
    episodes = eps.take(rows)
    geo = fam.geometry(model_of(runner))
    pre_times = timed_calls(lambda: fam.preprocess(episodes, geo), host_iterations)
    return {
        "inputs": fam.preprocess(episodes, geo),
        "timers": TIMERS,
        "record": {"preprocess_ms": latency_stats(pre_times), "host_timer_iterations": host_iterations},
        "after": lambda outputs: {"chunk_shape": list(outputs[0].shape[1:])},
    }
