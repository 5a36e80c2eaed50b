"""The ONNX Runtime tracker: the torch model's four hook points (`ONNX_PARTS`) run by the sessions a runner opens
for the parts export (`RunnerFacts.open_parts`); the glue between them stays in torch."""

from __future__ import annotations

import weakref
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.runner_facts import RunnerFacts
from workflow_scripts.models.samurai.build import image_size, is_architecture_name, load_torch
from workflow_scripts.models.samurai.onnx_export import (
    FEEDS,
    ONNX_PARTS,
    PARTS_KEY,
    hook_targets,
    part_files,
    part_result,
)

_ORT_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ort_model(facts: RunnerFacts):
    """The torch model whose four parts run in the runner's ONNX Runtime sessions (one per part, the runner's
    providers and threads), built once per runner (its `facts`) and shared by its trackers. The glue (prompt
    frame's decoder, memory assembly, pointer projection, Kalman filter) comes from the checkpoint named in the
    export's metadata."""
    import json

    model = _ORT_MODELS.get(facts)
    if model is not None:
        return model
    path = Path(facts.onnx)
    raw = facts.onnx_metadata.get(PARTS_KEY)
    if raw is None:
        raise PlanforgeError(f"{path}: no {PARTS_KEY} metadata; not a samurai parts export of this workflow, rerun it")
    meta = json.loads(raw)
    ckpt = Path(meta["checkpoint"])
    if not is_architecture_name(str(ckpt)) or ckpt.is_file():
        if not ckpt.is_file():
            raise PlanforgeError(
                f"{path}: its checkpoint {ckpt} (the tracker's torch glue) is missing; rerun the export"
            )
        import hashlib

        if meta.get("checkpoint_sha256") and hashlib.sha256(ckpt.read_bytes()).hexdigest() != meta["checkpoint_sha256"]:
            raise PlanforgeError(f"{path}: exported from another {ckpt} than the one there now; rerun the export")
    model = load_torch(ckpt)
    files = part_files(path)
    for part in ONNX_PARTS[1:]:
        if files[part].name != meta["parts"].get(part):
            raise PlanforgeError(f"{path}: its metadata names no {files[part].name}; rerun the export")
        if not files[part].is_file():
            raise PlanforgeError(f"{files[part]}: missing (the {part} of {path}); rerun the export")
    # every part, the image encoder too, with threads that sleep between runs: spinning ones would hold the
    # cores the torch glue between the parts needs (measured: 228 → 11-19 ms a frame, samurai-demo, 2 cores);
    # the image encoder is the runner's own file, whose session the runner reopens so instead of opening it twice
    sessions = facts.open_parts(files)
    import torch

    with torch.inference_mode():  # the high-res levels' position encodings: shapes only, so computed once here
        size = image_size(model)
        pos = model.get_image_features(torch.zeros(1, 3, size, size), return_dict=True).fpn_position_encoding[:2]

    def hook(part, session):
        feed = FEEDS[part]

        def call(*args, **kwargs):
            return part_result(part, session.run(None, feed(*args, **kwargs)), pos)

        return call

    for part, (obj, name) in hook_targets(model).items():
        setattr(obj, name, hook(part, sessions[part]))
    model.planforge_parts = {
        "mode": "onnxruntime",
        "record": {
            "mode": "onnxruntime",
            "parts": {p: {"runs_in": "onnxruntime", "file": str(f)} for p, f in files.items()},
            "in_torch": "prompt frame's decoder, memory assembly, object-pointer projection, Kalman choice, mask resizing",
            "providers": sessions["image_encoder"].get_providers(),
            "intra_op_spinning": False,
        },
    }
    _ORT_MODELS[facts] = model
    return model
