"""SAMURAI's ONNX export: the four parts a tracked frame runs (`ONNX_PARTS`: image encoder, memory attention, mask
decoder, memory encoder) as separate graphs, their hook points on the torch model in numpy (`FEEDS`,
`part_result`: what ONNX Runtime is fed and what the hook returns), and the export's check of each part against
torch on recorded calls (`record_parts`, `check_parts`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.models.samurai.build import image_size
from workflow_scripts.models.samurai.session import Tracker

# The four parts a tracked frame runs, as the hook points `accelerate` replaces: the image encoder's file is the
# model's `fp32.onnx` (the path the DAG names), the other three lie beside it (`part_files`).
ONNX_PARTS = ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder")
PART_INPUTS = {
    "image_encoder": ("pixel_values",),
    "memory_attention": ("top", "top_pos", "memory", "memory_pos", "pointers", "pointers_pos"),
    "mask_decoder": ("pix_feat", "feat_s0", "feat_s1"),
    "memory_encoder": ("top", "mask_logits", "object_score_logits", "is_mask_from_pts"),
}
PART_OUTPUTS = {
    "image_encoder": ("feat_s0", "feat_s1", "top", "top_pos"),
    "memory_attention": ("conditioned",),
    "mask_decoder": ("low_res_masks", "iou_scores", "tokens", "object_score_logits"),
    "memory_encoder": ("maskmem_features", "maskmem_pos_enc"),
}
# the image encoder takes a batch of frames (of several live sequences: `track_many`); the memory grows over the
# first frames and the object-pointer count with it: all dynamic axes
PART_DYNAMIC = {
    "image_encoder": {"pixel_values": {0: "frames"}, **{o: {1: "frames"} for o in PART_OUTPUTS["image_encoder"]}},
    "memory_attention": {
        "memory": {0: "memory_tokens"},
        "memory_pos": {0: "memory_tokens"},
        "pointers": {0: "pointer_tokens"},
        "pointers_pos": {0: "pointer_tokens"},
    },
}
PARTS_KEY = "planforge_samurai_parts"  # the fp32.onnx's metadata: the other parts' files, the checkpoint (JSON)


def part_files(onnx_path: str | Path) -> dict[str, Path]:
    """Each part's graph: the image encoder is `onnx_path` itself, the others `<stem>.<part>.onnx` beside it."""
    p = Path(onnx_path)
    return {part: p if part == "image_encoder" else p.with_name(f"{p.stem}.{part}.onnx") for part in ONNX_PARTS}


def onnx_parts(model) -> dict:
    """The four parts as plain modules (eval mode) with example inputs, for torch.onnx.export.

    - `image_encoder`: pixels → the two high-res maps (already projected for the decoder), the top map and its
      position encoding (the lower levels' encodings are read by nothing in the video model).
    - `memory_attention`: the top map attends to the spatial memories and the object pointers, given as two
      inputs so that the pointer count (`num_k_exclude_rope`, a Python int in transformers' RoPE attention)
      is traced from the pointers' shape, a dynamic axis like the memory length: one graph for every count.
    - `mask_decoder`: a tracked frame's decoder (no prompt, multimask frozen on): `_tracked_decoder`. The prompt
      frame's (a box, multimask off) stays in torch: it runs once per sequence.
    - `memory_encoder`: `_encode_new_memory` with `is_mask_from_pts` an input (the prompt frame binarises its
      mask, a tracked frame takes its sigmoid), before the bfloat16 rounding the caller does in torch.
    """
    import torch
    import torch.nn.functional as F

    class ImageEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            v = self.m.get_image_features(pixel_values, return_dict=True)
            f, p = v.fpn_hidden_states, v.fpn_position_encoding
            return f[0], f[1], f[2], p[2]

    class MemoryAttention(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, top, top_pos, memory, memory_pos, pointers, pointers_pos):
            return self.m.memory_attention(
                current_vision_features=top,
                current_vision_position_embeddings=top_pos,
                memory=torch.cat([memory, pointers]),
                memory_posision_embeddings=torch.cat([memory_pos, pointers_pos]),
                num_object_pointer_tokens=pointers.shape[0],  # traced: a Shape op, not a constant
            )

    class MaskDecoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pix_feat, feat_s0, feat_s1):
            return self.m._tracked_decoder(pix_feat, feat_s0, feat_s1)

    class MemoryEncoder(torch.nn.Module):
        """transformers' `_encode_new_memory` (eval mode) with the mask binarisation chosen by an input."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, top, mask_logits, object_score_logits, is_mask_from_pts):
            m = self.m
            (h, w), batch = m.backbone_feature_sizes[-1], top.shape[1]
            size = tuple(4 * s for s in m.prompt_encoder.mask_input_size)
            if tuple(mask_logits.shape[2:]) != size:  # frame masks come at the model's size: fixed at export
                mask_logits = F.interpolate(
                    mask_logits, size=size, align_corners=False, mode="bilinear", antialias=True
                )
            pix = top.permute(1, 2, 0).reshape(batch, m.hidden_dim, h, w)
            mask = torch.where(is_mask_from_pts, (mask_logits > 0).to(mask_logits.dtype), torch.sigmoid(mask_logits))
            mask = mask * m.config.sigmoid_scale_for_mem_enc + m.config.sigmoid_bias_for_mem_enc
            feats, pos = m.memory_encoder(pix, mask)
            if m.occlusion_spatial_embedding_parameter is not None:
                appearing = (object_score_logits > 0).float()
                occluded = m.occlusion_spatial_embedding_parameter[..., None, None].expand(*feats.shape)
                feats = feats + (1 - appearing[..., None]) * occluded
            return feats.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)

    s = image_size(model)
    (h0, w0), (h1, w1), (h, w) = model.backbone_feature_sizes
    c, mem = model.hidden_dim, model.mem_dim
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    split = max(1, c // mem)  # tokens per object pointer
    return {
        "image_encoder": (ImageEncoder(model).eval(), (rand(1, 3, s, s),)),
        # three memory frames and two pointers: the rotary encoding's repeat over memory frames is traced
        "memory_attention": (
            MemoryAttention(model).eval(),
            (rand(h * w, 1, c), rand(h * w, 1, c), rand(3 * h * w, 1, mem), rand(3 * h * w, 1, mem))
            + (rand(2 * split, 1, mem), rand(2 * split, 1, mem)),
        ),
        "mask_decoder": (
            MaskDecoder(model).eval(),
            (rand(1, c, h, w), rand(1, c // 8, h0, w0), rand(1, c // 4, h1, w1)),
        ),
        "memory_encoder": (
            MemoryEncoder(model).eval(),
            (rand(h * w, 1, c), rand(1, 1, s, s), torch.ones(1, 1, 1), torch.tensor([False])),
        ),
    }


def export_part(module, args, part: str, path, opset: int = 17) -> None:
    """torch.onnx export (TorchScript exporter, as the other families) of one part; the module stays in eval mode."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(PART_INPUTS[part]),
            output_names=list(PART_OUTPUTS[part]),
            dynamic_axes=PART_DYNAMIC.get(part),
            opset_version=opset,
            dynamo=False,
        )
    module.eval()  # the exporter restores the wrapper's mode onto every submodule


def export_parts(model, files: dict[str, Path], opset: int = 17) -> dict:
    """Export the four parts of a loaded model to `files` (part → path); what the export report records."""
    for part, (module, args) in onnx_parts(model).items():
        export_part(module, args, part, files[part], opset)
    return {
        "exporter": "torch.onnx (TorchScript), four parts: " + ", ".join(ONNX_PARTS),
        "parts": {p: {"inputs": list(PART_INPUTS[p]), "outputs": list(PART_OUTPUTS[p])} for p in ONNX_PARTS},
        "dynamic_axes": {p: {k: next(iter(v.values())) for k, v in d.items()} for p, d in PART_DYNAMIC.items()},
        "in_torch": "the prompt frame's decoder (a box, multimask off; once per sequence), the memory and object-pointer "
        "assembly, the object-pointer projection, SAMURAI's Kalman choice and memory selection, mask resizing",
    }


def parts_metadata(checkpoint: str | Path, files: dict[str, Path]) -> dict[str, str]:
    """The metadata the image encoder's file carries (`PARTS_KEY`, JSON): the other parts' file names and the
    checkpoint the ONNX Runtime tracker takes its torch glue from (path and sha256, so a stale pair is refused)."""
    import hashlib
    import json

    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest() if Path(checkpoint).is_file() else None
    names = {p: Path(f).name for p, f in files.items() if p != "image_encoder"}
    return {PARTS_KEY: json.dumps({"checkpoint": str(checkpoint), "checkpoint_sha256": digest, "parts": names})}


# -- the hook points in numpy: what ONNX Runtime is fed from a hook's arguments, and what the hook returns


def _np(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _feed_image_encoder(pixel_values, **_):
    return {"pixel_values": _np(pixel_values.float())}


def _feed_memory_attention(
    current_vision_features,
    memory,
    current_vision_position_embeddings=None,
    memory_posision_embeddings=None,
    num_object_pointer_tokens=0,
):
    n = len(memory) - int(num_object_pointer_tokens)
    mem, pos = _np(memory.float()), _np(memory_posision_embeddings.float())
    return {
        "top": _np(current_vision_features.float()),
        "top_pos": _np(current_vision_position_embeddings.float()),
        "memory": mem[:n],
        "memory_pos": pos[:n],
        "pointers": mem[n:],
        "pointers_pos": pos[n:],
    }


def _feed_mask_decoder(emb, feat_s0, feat_s1):
    return {"pix_feat": _np(emb.float()), "feat_s0": _np(feat_s0.float()), "feat_s1": _np(feat_s1.float())}


def _feed_memory_encoder(current_vision_feats, pred_masks_high_res, object_score_logits, is_mask_from_pts):
    return {
        "top": _np(current_vision_feats.float()),
        "mask_logits": _np(pred_masks_high_res.float()),
        "object_score_logits": _np(object_score_logits.float()),
        "is_mask_from_pts": np.array([bool(is_mask_from_pts)]),
    }


def part_result(part: str, outs: list, high_res_pos: list | None = None):
    """A part's ONNX Runtime outputs as its hook point returns them (torch tensors sharing the arrays).

    `high_res_pos`: the position encodings of the two high-res levels ([HW, 1, C], from torch: they depend on the
    shapes only), expanded to the batch; the graph leaves them out (nothing in the video model reads them but
    a batch split, and at 1024 px they would be a 67 MB copy a frame)."""
    import torch

    t = [torch.from_numpy(o) for o in outs]
    if part == "image_encoder":
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoVisionEncoderOutput

        batch = t[3].shape[1]
        pos = [p.expand(-1, batch, -1) for p in high_res_pos] if high_res_pos else [None, None]
        return Sam2VideoVisionEncoderOutput(fpn_hidden_states=t[:3], fpn_position_encoding=[*pos, t[3]])
    if part == "memory_attention":
        return t[0]
    if part == "memory_encoder":  # rounded as transformers does, by torch: the same bits for the same floats
        return t[0].to(torch.bfloat16), t[1]
    return tuple(t)


def part_arrays(part: str, result) -> list[np.ndarray]:
    """A hook's result (torch's or `part_result`'s) as float32 arrays in the order of PART_OUTPUTS."""
    if part == "image_encoder":
        f, p = result.fpn_hidden_states, result.fpn_position_encoding
        result = (f[0], f[1], f[2], p[2])
    elif part == "memory_attention":
        result = (result,)
    return [_np(t.float()) for t in result]


FEEDS = {
    "image_encoder": _feed_image_encoder,
    "memory_attention": _feed_memory_attention,
    "mask_decoder": _feed_mask_decoder,
    "memory_encoder": _feed_memory_encoder,
}


def hook_targets(model) -> dict[str, tuple[object, str]]:
    """(object, attribute) of each part's hook point on a model instance."""
    return {
        "image_encoder": (model, "get_image_features"),
        "memory_attention": (model.memory_attention, "forward"),
        "mask_decoder": (model, "_tracked_decoder"),
        "memory_encoder": (model, "_encode_new_memory"),
    }


def record_parts(model, frames: np.ndarray, boxes: np.ndarray, settings: dict | None = None) -> list:
    """Track each sequence (`frames` [S, F, H, W, 3], first boxes [S, 4]) with the torch model and record every call
    of its four parts: (part, ONNX feed, torch's result as arrays). The model is left as it was."""
    calls: list = []
    targets = hook_targets(model)

    def recording(part, fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls.append((part, FEEDS[part](*args, **kwargs), part_arrays(part, out)))
            return out

        return call

    for part, (obj, name) in targets.items():
        setattr(obj, name, recording(part, getattr(obj, name)))
    try:
        for seq, box in zip(frames, boxes):
            t = Tracker(model, settings)
            t.start(seq[0], box)
            for frame in seq[1:]:
                t.track(frame)
            t.close()
    finally:
        for obj, name in targets.values():
            del obj.__dict__[name]  # back to the class's method
    return calls


BF16_OUTPUTS = {("memory_encoder", "maskmem_features")}  # kept in bfloat16 by transformers (and by `part_result`)


def _bf16_ulp(x: np.ndarray) -> np.ndarray:
    """The spacing of bfloat16 values (7 stored mantissa bits) at each |x|."""
    _, exp = np.frexp(np.abs(x).astype(np.float32))
    return np.ldexp(np.float32(1), exp - 8).astype(np.float32)


def check_parts(calls: list, sessions: dict) -> dict:
    """Max abs error, per part and output, of ONNX Runtime (`sessions`: part → session) against torch on the recorded
    calls (`record_parts`), through the same numpy conversion the ONNX Runtime tracker uses.

    `checked_error` is what an export gates on: the max abs error, except for outputs stored in bfloat16, where
    two float32 results a rounding error apart may round to neighbouring bfloat16 values: there it is the error
    beyond one bfloat16 step of the reference (`bf16_steps`: how many values took the neighbouring step)."""
    errors: dict = {}
    for part, feed, ref in calls:
        got = part_arrays(part, part_result(part, sessions[part].run(None, feed)))
        e = errors.setdefault(part, {"calls": 0, "outputs": {}})
        e["calls"] += 1
        for name, g, r in zip(PART_OUTPUTS[part], got, ref):
            if g.shape != r.shape:
                raise PlanforgeError(f"samurai {part}: ONNX output {name} has shape {g.shape}, torch gives {r.shape}")
            o = e["outputs"].setdefault(name, {"max_abs_error": 0.0, "max_abs_reference": 0.0, "checked_error": 0.0})
            d = np.abs(g - r)
            o["max_abs_error"] = max(o["max_abs_error"], float(d.max()))
            o["max_abs_reference"] = max(o["max_abs_reference"], float(np.abs(r).max()))
            if (part, name) in BF16_OUTPUTS:
                step = _bf16_ulp(r)
                o["bf16_steps"] = o.get("bf16_steps", 0) + int(((d > 0) & (d <= step)).sum())
                d = np.where(d <= step, 0, d)
            o["checked_error"] = max(o["checked_error"], float(d.max()))
        if part == "memory_attention":
            e.setdefault("pointer_tokens", set()).add(len(feed["pointers"]))
            e.setdefault("memory_tokens", set()).add(len(feed["memory"]))
    for e in errors.values():
        for k in ("pointer_tokens", "memory_tokens"):
            if k in e:
                e[k] = sorted(e[k])
    # the image encoder on a batch of the recorded frames at once (`track_many`), against torch frame by frame
    frames = [(feed, ref) for part, feed, ref in calls if part == "image_encoder"][:4]
    if len(frames) > 1:
        feed = {"pixel_values": np.concatenate([f["pixel_values"] for f, _ in frames])}
        got = part_arrays("image_encoder", part_result("image_encoder", sessions["image_encoder"].run(None, feed)))
        worst = max(
            float(np.abs(g - np.concatenate([r[i] for _, r in frames], axis=1)).max()) for i, g in enumerate(got)
        )
        e = errors["image_encoder"]
        e["batch"] = {"frames": len(frames), "max_abs_error": worst}
        e["outputs"]["top"]["checked_error"] = max(e["outputs"]["top"]["checked_error"], worst)
    return errors
