"""SAMURAI family: SAM 2.1 video tracking (transformers' `Sam2VideoModel`) with SAMURAI's motion-aware
additions (Yang et al. 2024, github.com/yangchris11/samurai, `sam2/modeling/sam2_base.py`).

`SamuraiVideoModel` subclasses `Sam2VideoModel` and changes two steps of a tracked (non-prompt) frame:

- **Motion-aware mask selection.** A Kalman filter on the box (`KalmanFilter`: 8-D constant velocity
  state cx, cy, aspect, h and their velocities, upstream's noise weights) follows the chosen mask. For the
  first `stable_frames` frames the decoder's best predicted-IoU mask is chosen and the filter is updated
  while that IoU > `stable_iou` (else the count resets); after that the chosen candidate maximises
  α·IoU(Kalman box, mask box) + (1 − α)·predicted IoU (α 0.25 for t / s / b+, 0.15 for l) and the filter is
  updated unless the chosen predicted IoU < `stable_iou` (then the count resets). Upstream's exact
  branches and comparisons (`>` in the warm-up, `<` after it). Objects appear when the object score logit
  > `min_obj_score_logits` (−1 in SAMURAI's configs, 0 in SAM 2).
- **Motion-aware memory selection.** A past frame qualifies for the memory bank when its chosen mask's
  predicted IoU > 0.5, its object score > 0 and its Kalman IoU (when it has one) > 0; up to `memory_window`
  (15) qualifying frames are collected newest first, the previous frame is always added, and the newest
  `num_maskmem − 1` become the memories (with the prompt frame: 7). Upstream's scan skips the first
  tracked frame (`range(frame_idx - 1, 1, -1)`); so does this one. Upstream never applies its motion
  threshold (it stores `kf_ious` but reads `kf_score`); the paper does, and so does this by default
  (`memory_kf_score: None` reproduces the code).

The Kalman state lives in the inference session (one per sequence, one per object), never on the model,
so one loaded model serves many live sequences. `Tracker` is the contract the tracking task and the
Triton sequence model use: numpy frames in, xywh boxes out; it prunes the session after every frame so
its memory does not grow with the sequence (`frames_held`, `state_bytes`).

Checkpoints: architecture names with seeded random weights (nothing from the network) — `samurai-t.yaml`,
`samurai-s.yaml`, `samurai-b+.yaml`, `samurai-l.yaml` (the published SAM 2.1 Hiera tiny / small / base+ /
large configs at 1024 px: 38.9 / 46.0 / 80.8 / 224.4 M parameters, checked in the tests) and
`samurai-tiny.yaml` (about 1 M parameters at 128 px, for CPU tests and the embedded default) — or a
trained file (`train_samurai_demo.py`) holding the architecture, its config and the weights.

The package, one concern a module (each imports only modules listed before it, never this file's names):
- `motion`: the Kalman filter, the motion-aware mask choice and memory selection (numpy);
- `model`: `SamuraiVideoModel`, transformers' video model with those two steps;
- `build`: architectures, checkpoints and SAMURAI's settings (the family's registry entry points);
- `modes`: the per-frame parts compiled and / or from CUDA graphs (`accelerate`);
- `session`: the `Tracker` of one live sequence and the frame conversions;
- `onnx_export`: the four ONNX parts, their hook points in numpy and the export's check against torch;
- `ort_tracker`: the parts run in the ONNX Runtime sessions a runner opens (`ort_model`);
- `batching`: several live sequences stepped together (`track_many`, `Rendezvous`);
- `runtime`: `tracker(facts)`, a Tracker as the runner's facts (`core.runner_facts.RunnerFacts`) ask.
"""

from __future__ import annotations

from workflow_scripts.models.samurai.batching import BATCH_DIMS, Rendezvous, track_many
from workflow_scripts.models.samurai.build import (
    ALPHA,
    ARCHITECTURES,
    FORMAT,
    INPUT_NAME,
    OUTPUT_NAMES,
    SAMURAI_DEFAULTS,
    TINY_SIZE,
    apply_settings,
    build_architecture,
    class_names,
    forward_output,
    image_size,
    is_architecture_name,
    load_torch,
    save_checkpoint,
    settings_for,
)
from workflow_scripts.models.samurai.model import NO_OBJ_SCORE, model_class
from workflow_scripts.models.samurai.modes import COMPILED_PARTS, PARTS, TRACKER_MODES, accelerate, parts_record
from workflow_scripts.models.samurai.motion import (
    KalmanFilter,
    SamuraiState,
    box_iou,
    mask_box,
    mask_boxes,
    qualifies,
    select_candidate,
    select_memory_frames,
    xyah_to_xyxy,
    xyxy_to_xyah,
)
from workflow_scripts.models.samurai.onnx_export import (
    BF16_OUTPUTS,
    FEEDS,
    ONNX_PARTS,
    PART_DYNAMIC,
    PART_INPUTS,
    PART_OUTPUTS,
    PARTS_KEY,
    check_parts,
    export_part,
    export_parts,
    hook_targets,
    onnx_parts,
    part_arrays,
    part_files,
    part_result,
    parts_metadata,
    record_parts,
)
from workflow_scripts.models.samurai.ort_tracker import ort_model
from workflow_scripts.models.samurai.runtime import input_size, tracker
from workflow_scripts.models.samurai.session import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Tracker,
    frame_mask,
    frame_pixels,
    mask_to_frame,
    preprocess_frame,
    tensor_bytes,
)

__all__ = [
    "ALPHA",
    "ARCHITECTURES",
    "BATCH_DIMS",
    "BF16_OUTPUTS",
    "COMPILED_PARTS",
    "FEEDS",
    "FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_NAME",
    "KalmanFilter",
    "NO_OBJ_SCORE",
    "ONNX_PARTS",
    "OUTPUT_NAMES",
    "PARTS",
    "PARTS_KEY",
    "PART_DYNAMIC",
    "PART_INPUTS",
    "PART_OUTPUTS",
    "Rendezvous",
    "SAMURAI_DEFAULTS",
    "SamuraiState",
    "TINY_SIZE",
    "TRACKER_MODES",
    "Tracker",
    "accelerate",
    "apply_settings",
    "box_iou",
    "build_architecture",
    "check_parts",
    "class_names",
    "export_part",
    "export_parts",
    "forward_output",
    "frame_mask",
    "frame_pixels",
    "hook_targets",
    "image_size",
    "input_size",
    "is_architecture_name",
    "load_torch",
    "mask_box",
    "mask_boxes",
    "mask_to_frame",
    "model_class",
    "onnx_parts",
    "ort_model",
    "part_arrays",
    "part_files",
    "part_result",
    "parts_metadata",
    "parts_record",
    "preprocess_frame",
    "qualifies",
    "record_parts",
    "save_checkpoint",
    "select_candidate",
    "select_memory_frames",
    "settings_for",
    "tensor_bytes",
    "track_many",
    "tracker",
    "xyah_to_xyxy",
    "xyxy_to_xyah",
]
