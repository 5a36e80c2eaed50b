"""Train the tiny SAMURAI (`samurai-tiny.yaml`, 128 px) on generated moving-shape clips.

Each clip is a coloured shape (rectangle, ellipse or triangle) moving and scaling over a textured
background, often beside a distractor shape; the first frame's box is the prompt, every frame's
rendered mask the target. Training unrolls SAM 2's video forward over a clip with gradients (the same
modules the tracker runs: Hiera + FPN, prompt encoder and mask decoder, memory encoder, memory attention
with the previous frames' memories and object pointers) and SAM 2's losses: focal + dice on the best of
the multimask candidates, the predicted IoU against the actual one, and the object score.

Evaluation is the real `Tracker` (SAMURAI settings) on held-out clips: the success AUC (mean over 21 IoU
thresholds 0, 0.05, …, 1 of the fraction of tracked frames whose box IoU exceeds it, per clip, averaged),
next to what a tracker that never moves its box scores on the same clips. Writes one checkpoint file the
family loads (`checkpoint: weights/samurai-demo.pt`, weights in fp16), a JSON with the arguments, the
times, the machine and every evaluation, and prints progress (redirect it to `<out>.train.log`).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError, atomic_path, read_json, run_cli, write_json
from workflow_scripts.models import samurai
from workflow_scripts.tasks import tracking

THRESHOLDS = np.linspace(0.0, 1.0, 21)


# ---------------------------------------------------------------- clips


def _shape_mask(kind: str, cx: float, cy: float, w: float, h: float, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if kind == "rect":
        d.rectangle(box, fill=255)
    elif kind == "ellipse":
        d.ellipse(box, fill=255)
    else:
        d.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=255)
    return np.asarray(img) > 127


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image

    coarse = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), np.float32)
    fine = rng.normal(0, 12, (size, size, 3))
    stripes = 20 * np.sin(np.arange(size)[:, None] * rng.uniform(0.1, 0.6) + rng.uniform(0, 6))[..., None]
    return np.clip(0.6 * smooth + fine + stripes * rng.integers(0, 2), 0, 255)


def make_clip(rng: np.random.Generator, frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames [T, S, S, 3] uint8, masks [T, S, S] bool) of one target shape (drawn last, on top)."""
    bg = _background(rng, size)
    kinds = ("rect", "ellipse", "triangle")
    objects = []
    for _ in range(1 + int(rng.random() < 0.6)):  # the target, then maybe a distractor
        w, h = rng.uniform(0.12, 0.35, 2) * size
        objects.append(
            {
                "kind": kinds[rng.integers(3)],
                "c": rng.uniform(0.25, 0.75, 2) * size,
                "wh": np.array([w, h]),
                "v": rng.uniform(-4, 4, 2) * size / 128,
                "s": rng.uniform(0.97, 1.03),
                "colour": rng.integers(30, 256, 3),
            }
        )
    video = np.empty((frames, size, size, 3), np.uint8)
    masks = np.empty((frames, size, size), bool)
    for t in range(frames):
        img = bg.copy()
        for o in reversed(objects):  # distractor first, the target on top
            m = _shape_mask(o["kind"], *o["c"], *o["wh"], size)
            img[m] = o["colour"]
            if o is objects[0]:
                masks[t] = m
            o["c"] = o["c"] + o["v"]
            for k in range(2):  # bounce off the borders
                if not 0.1 * size < o["c"][k] < 0.9 * size:
                    o["v"][k] = -o["v"][k]
            o["wh"] = np.clip(o["wh"] * o["s"], 0.08 * size, 0.45 * size)
        video[t] = img.astype(np.uint8)
    return video, masks


def videos_clip(rng: np.random.Generator, frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames, masks) of one sequence from the tracking task's own generator (`make_videos`: textured
    background, a moving, scale-changing target, two distractors crossing it, some in front)."""
    masks: list = []
    video, _, _, _ = tracking.make_sequence(rng, frames, size, 2, masks=masks)
    return video, np.stack(masks)


def task_val_clips(count: int, frames: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The tracking task's val sequences (`make_videos` split val, seed `seed`): the first of them are the
    embedded default's `clips` val split when frames, size and seed match it (24, 160, 0)."""
    rng = np.random.default_rng([seed, 1])  # make_videos' val stream
    out = []
    for _ in range(count):
        video, boxes, _, _ = tracking.make_sequence(rng, frames, size, 2)
        out.append((video, boxes))
    return out


def mask_xywh(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4)
    return np.array([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], np.float64)


def iou_xywh(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def success_auc(ious: np.ndarray) -> float:
    """Mean over 21 IoU thresholds of the fraction of frames whose IoU exceeds it (OTB's success AUC)."""
    ious = np.asarray(ious)
    return float(np.mean([(ious > t).mean() for t in THRESHOLDS]))


def evaluate(model, clips: list[tuple[np.ndarray, np.ndarray]], settings: dict | None = None) -> dict:
    """Success AUC of the real Tracker on `clips`, and of a box that never moves."""
    tr = samurai.tracker(model, settings)
    aucs, static = [], []
    for video, truth_or_masks in clips:  # masks [T, S, S] (this script's clips) or boxes [T, 4] (the task's)
        truth = [mask_xywh(m) for m in truth_or_masks] if truth_or_masks.ndim == 3 else list(truth_or_masks)
        tr.start(video[0], truth[0])
        got = [tr.track(f)[0] for f in video[1:]]
        aucs.append(success_auc([iou_xywh(g, t) for g, t in zip(got, truth[1:])]))
        static.append(success_auc([iou_xywh(truth[0], t) for t in truth[1:]]))
    tr.close()
    return {
        "auc": round(float(np.mean(aucs)), 4),
        "auc_std": round(float(np.std(aucs)), 4),
        "static_box_auc": round(float(np.mean(static)), 4),
        "clips": len(clips),
        "frames": int(sum(len(v) for v, _ in clips)),
    }


# ---------------------------------------------------------------- SAM 2's video forward, with gradients


def _heads(model, high_res, pix, points=None, labels=None, multimask=True, as_tracker=False):
    """The prompt encoder and mask decoder on a batch. `as_tracker`: the decoder in eval mode, as the tracker runs
    it: a single-mask output (a box prompt) whose token-0 mask is unstable (stability < 0.98) is replaced by the
    best of the multimask tokens 1-3 (transformers' `_dynamic_multimask_via_stability`, skipped in train mode);
    gradients flow to whichever mask it returns."""
    import torch

    b = pix.shape[0]
    if points is None:
        points = torch.zeros(b, 1, 1, 2, dtype=pix.dtype, device=pix.device)
        labels = -torch.ones(b, 1, 1, dtype=torch.int32, device=pix.device)
    pe = model.get_image_wide_positional_embeddings().repeat(b, 1, 1, 1)
    sparse, dense = model.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None, input_masks=None)
    was_training = model.mask_decoder.training
    model.mask_decoder.train(was_training and not as_tracker)
    try:
        low, ious, tokens, obj = model.mask_decoder(
            image_embeddings=pix,
            image_positional_embeddings=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            high_resolution_features=high_res,
        )
    finally:
        model.mask_decoder.train(was_training)
    return low[:, 0], ious[:, 0], tokens[:, 0], obj[:, 0]  # [B, K, h, w], [B, K], [B, K, C], [B, 1]


def _mask_terms(low, ious, target, size: int, all_iou: bool = True) -> tuple:
    """SAM 2's mask losses: 20 · focal + dice of the best candidate, L1 of the predicted IoUs — of every candidate
    (`all_iou`, SAM 2.1's training config `supervise_all_iou: true`) or of the best only (SAM 1) — and the
    upsampled logits. The tracker picks the candidate with the highest predicted IoU, so an IoU head trained on
    the best candidate only leaves the others' scores free to drift above it (the whole frame, say)."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)  # [B, K, S, S]
    target = target[:, None].expand_as(up)
    focal = torchvision_focal(up, target).mean((2, 3))
    prob = up.sigmoid()
    dice = 1 - (2 * (prob * target).sum((2, 3)) + 1) / (prob.sum((2, 3)) + target.sum((2, 3)) + 1)
    per_candidate = 20 * focal + dice  # [B, K]
    rows = torch.arange(low.shape[0])
    best = per_candidate.argmin(1)
    hard = (up > 0).float()
    actual = ((hard * target).sum((2, 3)) / ((hard + target).clamp(max=1).sum((2, 3)) + 1e-6)).detach()
    l_iou = F.l1_loss(ious, actual) if all_iou else F.l1_loss(ious[rows, best], actual[rows, best])
    return per_candidate[rows, best].mean(), l_iou, up


def clip_loss(
    model, pixels, masks, boxes, box_weight: float = 0.0, all_iou: bool = True, prompt_as_tracker: bool = True
) -> tuple:
    """SAM 2's losses over a batch of clips: pixels [T, B, 3, S, S], masks [T, B, S, S] float, boxes [T, B, 4]
    xyxy (the first frame's are the prompt). `box_weight` > 0 adds, on every later frame, the loss of the mask
    its own box prompts without memory (SAM 2 also trains on still images): the prompt frame's skill, T times."""
    import torch
    import torch.nn.functional as F

    steps, batch = pixels.shape[:2]
    size = pixels.shape[-1]
    vis = model.get_image_features(pixels.flatten(0, 1), return_dict=True)
    feats, pos = vis.fpn_hidden_states, vis.fpn_position_encoding
    sizes = model.backbone_feature_sizes
    hidden = model.hidden_dim
    h, w = sizes[-1]
    labels = torch.tensor([2, 3], dtype=torch.int32).repeat(batch, 1, 1)
    rows = torch.arange(batch)
    mems, ptrs = [], []
    total, parts = 0.0, {"mask": 0.0, "iou": 0.0, "obj": 0.0, "box": 0.0, "prompt_as_tracker": 0.0}
    for t in range(steps):
        sl = slice(t * batch, (t + 1) * batch)
        high_res = [x[:, sl].permute(1, 2, 0).reshape(batch, x.size(2), *s) for x, s in zip(feats[:-1], sizes[:-1])]
        top, top_pos = feats[-1][:, sl], pos[-1][:, sl]
        no_memory = (top + model.no_memory_embedding).permute(1, 2, 0).reshape(batch, hidden, h, w)
        tracker_view = None
        if t == 0:
            low, ious, tokens, obj = _heads(model, high_res, no_memory, boxes[0].view(batch, 1, 2, 2), labels, False)
            if prompt_as_tracker:  # also the mask the tracker would take from this prompt (see `_heads`)
                tracker_view = _heads(model, high_res, no_memory, boxes[0].view(batch, 1, 2, 2), labels, False, True)
        else:
            memory, memory_pos = [], []
            for i, (feat, fpos) in enumerate(mems):
                offset = 0 if i == 0 else t - i
                if i and offset >= model.num_maskmem:
                    continue
                memory.append(feat)
                memory_pos.append(fpos + model.memory_temporal_positional_encoding[offset - 1])
            offsets = [t - i for i in range(len(ptrs))]
            obj_ptrs, obj_pos = model._process_object_pointers(
                offsets, ptrs, model.config.max_object_pointers_in_encoder, batch, hidden, pixels.device
            )
            out = model.memory_attention(
                current_vision_features=top,
                current_vision_position_embeddings=top_pos,
                memory=torch.cat([*memory, obj_ptrs]).to(top.dtype),
                memory_posision_embeddings=torch.cat([*memory_pos, obj_pos]),
                num_object_pointer_tokens=obj_ptrs.shape[0],
            )
            pix = out[0].transpose(1, 2).reshape(batch, hidden, h, w)
            low, ious, tokens, obj = _heads(model, high_res, pix)
            if box_weight > 0:
                box_low, box_ious, _, _ = _heads(
                    model, high_res, no_memory, boxes[t].view(batch, 1, 2, 2), labels, False
                )
                l_box, l_box_iou, _ = _mask_terms(box_low, box_ious, masks[t], size, all_iou)
                total = total + box_weight * (l_box + l_box_iou)
                parts["box"] += float(l_box.detach()) / steps
        l_mask, l_iou, up = _mask_terms(low, ious, masks[t], size, all_iou)
        l_obj = F.binary_cross_entropy_with_logits(obj, torch.ones_like(obj))
        total = total + l_mask + l_iou + l_obj
        if tracker_view is not None:
            l_view, l_view_iou, up = _mask_terms(tracker_view[0], tracker_view[1], masks[t], size, all_iou)
            total = total + l_view + l_view_iou  # and its mask is the one the prompt frame's memory encodes
            parts["prompt_as_tracker"] = float(l_view.detach())
        parts["mask"] += float(l_mask.detach()) / steps
        parts["iou"] += float(l_iou.detach()) / steps
        parts["obj"] += float(l_obj.detach()) / steps
        if t == steps - 1:
            break
        # the memory of this frame, from the mask the tracker would keep (the best predicted IoU)
        chosen = ious.detach().argmax(1)
        high = up[rows, chosen][:, None]
        feat, fpos = model._encode_new_memory(top, high, obj[:, None], is_mask_from_pts=t == 0)
        mems.append((feat, fpos))
        pointer = model.object_pointer_proj(tokens[rows, chosen])
        lam = (obj > 0).to(pointer.dtype)
        ptrs.append(lam * pointer + (1 - lam) * model.no_object_pointer)
    return total / steps, parts


def torchvision_focal(logits, target, alpha: float = 0.25, gamma: float = 2.0):
    import torch.nn.functional as F

    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    return (alpha * target + (1 - alpha) * (1 - target)) * loss


# ---------------------------------------------------------------- training


def train(a: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    val_rng = np.random.default_rng(a.seed + 1000)
    if a.clips == "videos":  # the task's own val sequences (the embedded default's are the first 4)
        val = task_val_clips(a.val_clips, a.val_frames, a.val_size)
    else:
        val = [make_clip(val_rng, a.val_frames, samurai.TINY_SIZE) for _ in range(a.val_clips)]
    make = videos_clip if a.clips == "videos" else make_clip
    earlier: list[dict] = []
    if a.init:  # a later leg: the weights of a checkpoint this script wrote, its record kept
        model = samurai.load_torch(a.init).float().to(a.device)
        prev = read_json(Path(a.init).with_suffix(".json"))
        earlier = [*prev.pop("earlier_legs", []), prev]
        rng = np.random.default_rng([a.seed, len(earlier)])  # new training clips, the same validation clips
    else:
        model = samurai.build_architecture("samurai-tiny.yaml", seed=a.seed).to(a.device)
    model.planforge_source["trained"] = True
    size = samurai.input_size(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    history, losses = [], []
    t0 = time.perf_counter()

    def checkpoint(step: int, final: bool = False) -> dict:
        model.eval()
        t_eval = time.perf_counter()
        stats = evaluate(model, val)
        if final:  # the same weights as plain SAM 2 (no Kalman filter, no memory filter)
            stats["plain_sam2_auc"] = evaluate(model, val, {"samurai": False})["auc"]
        history.append(
            {
                "step": step,
                "train_seconds": round(time.perf_counter() - t0, 1),
                "eval_seconds": round(time.perf_counter() - t_eval, 1),
                "loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
                **stats,
            }
        )
        with atomic_path(a.out) as tmp:
            half = samurai.build_architecture("samurai-tiny.yaml", seed=a.seed)
            half.load_state_dict(model.state_dict())
            half.planforge_source = dict(model.planforge_source)
            samurai.save_checkpoint(half.half(), tmp)
        record = {
            "checkpoint": str(a.out),
            "command": "python -m workflow_scripts.training.samurai_demo " + " ".join(a.argv),
            "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "argv"},
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "steps": step,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
            "torch_threads": torch.get_num_threads(),
            "history": history,
            "val": history[-1],
            "total_steps": step + sum(e["steps"] for e in earlier),
            "earlier_legs": earlier,
        }
        write_json(Path(a.out).with_suffix(".json"), record)
        print(
            f"step {step} {history[-1]['train_seconds']} s: loss {history[-1]['loss']} val AUC "
            f"{stats['auc']:.4f} ± {stats['auc_std']:.4f} (static box {stats['static_box_auc']:.4f})",
            flush=True,
        )
        model.train()
        return record

    checkpoint(0)
    model.train()
    step = 0
    while time.perf_counter() - t0 < a.minutes * 60:
        clips = [make(rng, a.frames, size) for _ in range(a.batch)]
        video = np.stack([c[0] for c in clips], 1)  # [T, B, S, S, 3]
        masks = torch.from_numpy(np.stack([c[1] for c in clips], 1).astype(np.float32)).to(a.device)
        pixels = torch.from_numpy(
            np.stack([[samurai.preprocess_frame(f, size) for f in frame_b] for frame_b in video])
        ).to(a.device)
        boxes = np.zeros((a.frames, a.batch, 4), np.float32)
        for t in range(a.frames if a.box_weight > 0 else 1):
            for b in range(a.batch):
                x, y, w, h = mask_xywh(clips[b][1][t])
                jitter = rng.normal(0, 0.05, 4) * [w, h, w, h]  # prompts are not pixel-exact
                boxes[t, b] = [x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]]
        boxes = torch.from_numpy(boxes).to(a.device)
        if a.schedule == "cosine":
            frac = min(1.0, (time.perf_counter() - t0) / (a.minutes * 60))
            for g in optimizer.param_groups:
                g["lr"] = a.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
        loss, parts = clip_loss(model, pixels, masks, boxes, a.box_weight, a.iou == "all", a.prompt_as_tracker)
        if not torch.isfinite(loss):
            raise PlanforgeError(f"{a.out}: the loss became {float(loss)} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 20 == 0:
            print(f"step {step} {time.perf_counter() - t0:.0f} s: loss {np.mean(losses[-20:]):.4f} {parts}", flush=True)
        if a.eval_every and step % a.eval_every == 0:
            checkpoint(step)
    return checkpoint(step, final=True)


def main(argv: list[str] | None = None) -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("weights/samurai-demo.pt"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=12.0, help="training time budget (evaluations included)")
    p.add_argument("--frames", type=int, default=4, help="frames per training clip (the first is the prompt)")
    p.add_argument("--batch", type=int, default=4, help="clips per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument(
        "--iou",
        choices=("all", "best"),
        default="all",
        help="train the predicted IoU of every candidate (SAM 2.1) or of the best one only (SAM 1; the first four legs)",
    )
    p.add_argument(
        "--prompt-as-tracker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the prompt frame's mask as the tracker takes it (the decoder in eval mode: an unstable "
        "single mask falls back to a multimask token); off: the first four legs",
    )
    p.add_argument("--box-weight", type=float, default=0.0, help="weight of the box-prompted mask loss on later frames")
    p.add_argument("--init", type=Path, help="start from a checkpoint this script wrote (its JSON beside it)")
    p.add_argument(
        "--clips",
        choices=("shapes", "videos"),
        default="shapes",
        help="training and validation clips: this script's moving shapes, or the tracking task's generator "
        "(train clips from their own stream; validation = the task's val sequences at --val-size)",
    )
    p.add_argument("--val-size", type=int, default=160, help="--clips videos: the val frame size (the default's clips)")
    p.add_argument("--val-clips", type=int, default=12)
    p.add_argument("--val-frames", type=int, default=24)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate (and save) every N steps; 0: at the end")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    if a.init and not Path(a.init).with_suffix(".json").is_file():
        raise PlanforgeError(
            f"--init {a.init}: not a checkpoint this script wrote (needs {Path(a.init).with_suffix('.json')})"
        )
    if a.frames < 2 or a.batch < 1 or a.minutes <= 0:
        raise PlanforgeError("--frames must be at least 2, --batch at least 1 and --minutes above 0")
    r = train(a)
    v = r["val"]
    print(
        f"{a.out}: {r['steps']} steps (total {r['total_steps']}), val AUC {v['auc']:.4f} ± {v['auc_std']:.4f}, "
        f"plain SAM 2 {v['plain_sam2_auc']:.4f}, static box {v['static_box_auc']:.4f}"
    )


if __name__ == "__main__":
    run_cli(main)
