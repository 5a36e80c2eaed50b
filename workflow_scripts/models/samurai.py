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
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError, exception_line
from workflow_scripts.models import check_image, read_saved_source

FORMAT = "planforge-samurai-v1"
INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("pred_masks", "object_score_logits")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
NO_OBJ_SCORE = -1024.0  # transformers' and upstream's logit for "no object" masks

# SAMURAI's settings (upstream configs/samurai/sam2.1_hiera_*.yaml); `alpha` None: the size's own (ALPHA).
SAMURAI_DEFAULTS: dict = {
    "samurai": True,  # False: plain SAM 2 (no Kalman filter, no memory filter, objects appear at logit > 0)
    "alpha": None,  # kf_score_weight
    "stable_frames": 15,  # stable_frames_threshold
    "stable_iou": 0.3,  # stable_ious_threshold
    "min_obj_score_logits": -1.0,
    "memory_filter": True,
    "memory_iou": 0.5,  # memory_bank_iou_threshold
    "memory_obj_score": 0.0,  # memory_bank_obj_score_threshold
    "memory_kf_score": 0.0,  # memory_bank_kf_score_threshold; None: not applied (upstream's code)
    "memory_window": 15,  # max_obj_ptrs_in_encoder - 1 qualifying frames scanned
}
ALPHA = {"t": 0.25, "s": 0.25, "b+": 0.25, "l": 0.15, "tiny": 0.25}

_HIERA = {
    "t": {
        "hidden_size": 96,
        "num_attention_heads": 1,
        "blocks_per_stage": [1, 2, 7, 2],
        "global_attention_blocks": [5, 7, 9],
    },
    "s": {
        "hidden_size": 96,
        "num_attention_heads": 1,
        "blocks_per_stage": [1, 2, 11, 2],
        "global_attention_blocks": [7, 10, 13],
    },
    "b+": {
        "hidden_size": 112,
        "num_attention_heads": 2,
        "blocks_per_stage": [2, 3, 16, 3],
        "global_attention_blocks": [12, 16, 20],
        "window_positional_embedding_background_size": [14, 14],
    },
    "l": {
        "hidden_size": 144,
        "num_attention_heads": 2,
        "blocks_per_stage": [2, 6, 36, 4],
        "global_attention_blocks": [23, 33, 43],
        "window_size_per_stage": [8, 4, 16, 8],
    },
}


def _sam21(size: str) -> dict:
    """Sam2VideoConfig kwargs of a published SAM 2.1 Hiera size (1024 px)."""
    h = dict(_HIERA[size])
    dim, heads = h["hidden_size"], h["num_attention_heads"]
    h["embed_dim_per_stage"] = [dim, 2 * dim, 4 * dim, 8 * dim]
    h["num_attention_heads_per_stage"] = [heads, 2 * heads, 4 * heads, 8 * heads]
    return {
        "vision_config": {
            "model_type": "sam2_vision_model",
            "backbone_config": {"model_type": "sam2_hiera_det_model", **h},
            "backbone_channel_list": [8 * dim, 4 * dim, 2 * dim, dim],
        }
    }


TINY_SIZE = 128
_TINY_HIDDEN = 128  # > the memory width (64): transformers reshapes object pointers only when it is smaller
# A few hundred K parameters at 128 px: the Hiera trunk, FPN, prompt encoder, mask decoder, memory attention and
# memory encoder of SAM 2 with every width and depth cut down (feature maps 32 / 16 / 8).
_TINY = {
    "image_size": TINY_SIZE,
    "vision_config": {
        "model_type": "sam2_vision_model",
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": 16,
            "num_attention_heads": 1,
            "image_size": [TINY_SIZE, TINY_SIZE],
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [16, 32, 64, 128],
            "num_attention_heads_per_stage": [1, 1, 2, 2],
            "window_size_per_stage": [8, 4, 8, 8],
            "global_attention_blocks": [3],
            "window_positional_embedding_background_size": [4, 4],
        },
        "backbone_channel_list": [128, 64, 32, 16],
        "backbone_feature_sizes": [[TINY_SIZE // 4] * 2, [TINY_SIZE // 8] * 2, [TINY_SIZE // 16] * 2],
        "fpn_hidden_size": _TINY_HIDDEN,
    },
    "prompt_encoder_config": {"hidden_size": _TINY_HIDDEN, "image_size": TINY_SIZE, "mask_input_channels": 8},
    "mask_decoder_config": {
        "hidden_size": _TINY_HIDDEN,
        "mlp_dim": 128,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 64,
    },
    "memory_attention_hidden_size": _TINY_HIDDEN,
    "memory_attention_num_layers": 2,
    "memory_attention_feed_forward_hidden_size": 128,
    "memory_attention_rope_feat_sizes": [TINY_SIZE // 16, TINY_SIZE // 16],
    "memory_encoder_hidden_size": _TINY_HIDDEN,
    "memory_encoder_output_channels": 64,  # transformers fixes the memory cross-attention input at 64
    "mask_downsampler_embed_dim": _TINY_HIDDEN,
    "memory_fuser_embed_dim": _TINY_HIDDEN,
    "memory_fuser_intermediate_dim": 128,
}

# Architecture name → (SAMURAI size for α, Sam2VideoConfig keyword arguments).
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "samurai-t.yaml": ("t", _sam21("t")),
    "samurai-s.yaml": ("s", _sam21("s")),
    "samurai-b+.yaml": ("b+", _sam21("b+")),
    "samurai-l.yaml": ("l", _sam21("l")),
    "samurai-tiny.yaml": ("tiny", _TINY),
}


def is_architecture_name(checkpoint: str) -> bool:
    return Path(str(checkpoint)).name in ARCHITECTURES


def _config(kwargs: dict):
    from transformers import Sam2VideoConfig
    from transformers.models.sam2_video.configuration_sam2_video import Sam2VideoMaskDecoderConfig

    kwargs = dict(kwargs)
    # transformers < 5.18 builds a mask_decoder_config given as a dict with the prompt encoder's config class (its
    # decoder then has no num_multimask_outputs): the config object itself is taken as it is by every version
    if isinstance(kwargs.get("mask_decoder_config"), dict):
        kwargs["mask_decoder_config"] = Sam2VideoMaskDecoderConfig(**kwargs["mask_decoder_config"])
    return Sam2VideoConfig(**kwargs)


def _build(kwargs: dict, seed: int, device: str = "cpu"):
    import torch

    from workflow_scripts.core import attention

    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class()(_config(kwargs))
    # the memory attention (the only attention on the top-level config) splits its keys over the GPU's idle
    # multiprocessors where that pays (`core.attention`); elsewhere it is transformers' SDPA, unchanged
    model.config._attn_implementation = attention.register()
    return model.eval()


def build_architecture(name: str, seed: int = 0, device: str = "cpu"):
    """`SamuraiVideoModel` of a named architecture with seeded random weights (`device="meta"`: shapes only)."""
    key = Path(str(name)).name
    if key not in ARCHITECTURES:
        raise PlanforgeError(f"{name!r}: not a samurai architecture; one of {sorted(ARCHITECTURES)}")
    size, kwargs = ARCHITECTURES[key]
    model = _build(kwargs, seed, device)
    model.planforge_source = {"format": FORMAT, "architecture": key, "size": size, "config": kwargs, "seed": seed}
    return model


def apply_settings(model, settings: dict):
    """The model with its config entry's `tracker` (SAMURAI's settings: `SAMURAI_DEFAULTS`' keys) kept in its
    source, which the prepared checkpoint saves: every tracker on it (bench, accuracy, ONNX Runtime glue, Triton)
    starts from them. An unknown key is one line naming it."""
    tracker = dict(settings.get("tracker") or {})
    _check_settings(tracker, "models.<name>.tracker")
    model.planforge_source = {**getattr(model, "planforge_source", {}), "tracker": tracker}
    return model


def save_checkpoint(model, path: str | Path) -> None:
    """The architecture, its config and the seed; a trained model's weights too (random ones are rebuilt)."""
    import torch

    source = dict(model.planforge_source)
    if source.get("trained"):
        source["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(source, path)


def load_torch(checkpoint: str | Path, device: str = "cpu"):
    """A `SamuraiVideoModel` from an architecture name or a checkpoint file; one line if it cannot be read."""

    if is_architecture_name(str(checkpoint)) and not Path(checkpoint).is_file():
        return build_architecture(str(checkpoint)).to(device)
    source = read_saved_source(checkpoint, FORMAT, "samurai")
    try:
        model = _build(source["config"], int(source["seed"]))
        if "state_dict" in source:
            model.load_state_dict({k: v.float() for k, v in source["state_dict"].items()})
    except Exception as exc:  # noqa: BLE001
        raise PlanforgeError(
            f"{checkpoint}: its samurai config or weights do not load ({exception_line(exc)})"
        ) from None
    model.planforge_source = {k: v for k, v in source.items() if k != "state_dict"}
    return model.to(device)


def class_names(model) -> list[str]:
    return []  # one tracked object, no classes


def forward_output(raw):
    return raw


def input_size(model) -> int:
    """The square image size frames are resized to (`model`: the torch model, or an ONNX Runtime runner of its parts)."""
    if _is_ort_runner(model):
        model = ort_model(model)
    return int(model.config.image_size)


def _check_settings(settings: dict, where: str = "samurai settings") -> None:
    unknown = sorted(set(settings) - set(SAMURAI_DEFAULTS))
    if unknown:
        raise PlanforgeError(f"{where}: {unknown[0]!r} is not one of {sorted(SAMURAI_DEFAULTS)}")


def settings_for(model, settings: dict | None = None) -> dict:
    """SAMURAI_DEFAULTS with the model size's α, then the checkpoint's own (`apply_settings`: the config entry's
    `tracker`), then `settings`; `samurai: False` is plain SAM 2."""
    settings = dict(settings or {})
    _check_settings(settings)
    source = getattr(model, "planforge_source", {})
    size = source.get("size", "t")
    out = {**SAMURAI_DEFAULTS, "alpha": ALPHA.get(size, 0.25), **source.get("tracker", {}), **settings}
    if not out["samurai"]:
        out.update(memory_filter=False, min_obj_score_logits=0.0)
    return out


# ---------------------------------------------------------------- Kalman filter and memory selection (numpy)


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


# ---------------------------------------------------------------- the model


_MODEL_CLASS: list = []


def model_class():
    """`SamuraiVideoModel`, defined on first use so that importing this module does not import torch."""
    if not _MODEL_CLASS:
        _MODEL_CLASS.append(_make_model_class())
    return _MODEL_CLASS[0]


def _make_model_class():
    import torch
    import torch.nn.functional as F
    from transformers import Sam2VideoModel

    class SamuraiVideoModel(Sam2VideoModel):
        """`Sam2VideoModel` whose tracked frames use SAMURAI's mask and memory selection when the session
        carries a `SamuraiState` (`session.samurai`); without one it is exactly `Sam2VideoModel`."""

        def _run_single_frame_inference(
            self,
            inference_session,
            frame_idx,
            obj_idx,
            batch_size,
            is_init_cond_frame,
            point_inputs,
            mask_inputs,
            reverse,
            prev_sam_mask_logits=None,
            streaming=False,
        ):
            st = getattr(inference_session, "samurai", None)
            plain = (
                st is None
                or is_init_cond_frame
                or point_inputs is not None
                or mask_inputs is not None
                or prev_sam_mask_logits is not None
                or batch_size != 1
                or not self._use_multimask(False, None)
            )
            if plain:
                return super()._run_single_frame_inference(
                    inference_session,
                    frame_idx,
                    obj_idx,
                    batch_size,
                    is_init_cond_frame,
                    point_inputs,
                    mask_inputs,
                    reverse,
                    prev_sam_mask_logits,
                    streaming,
                )
            feats, pos = self._prepare_vision_features(inference_session, frame_idx, batch_size)
            high_res = [
                x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)
                for x, s in zip(feats[:-1], self.backbone_feature_sizes[:-1])
            ]
            pix_feat = self._prepare_memory_conditioned_features(
                inference_session=inference_session,
                frame_idx=frame_idx,
                obj_idx=obj_idx,
                is_initial_conditioning_frame=False,
                current_vision_features=feats[-1],
                current_vision_positional_embeddings=pos[-1],
                num_total_frames=inference_session.num_frames,
                track_in_reverse_time=reverse,
                streaming=streaming,
            )
            return self._samurai_heads(st, obj_idx, high_res + [pix_feat])

        def _samurai_heads(self, st: SamuraiState, obj_idx: int, image_embeddings: list) -> dict:
            """`_single_frame_forward` of a tracked frame (no prompt, multimask) with SAMURAI's choice of mask."""
            emb = image_embeddings[-1]
            low_multi, iou_scores, tokens, obj_logits, high_multi, boxes = self._tracked_heads(
                emb, image_embeddings[0], image_embeddings[1], float(st.settings["min_obj_score_logits"])
            )
            # what the host decides with, in one transfer: the candidates' predicted IoUs, their boxes, the score
            n = iou_scores.shape[-1]
            host = torch.cat(
                [iou_scores[0, 0].float(), boxes[0].reshape(-1).float(), obj_logits.reshape(-1)[:1].float()]
            )
            host = host.cpu().numpy().astype(np.float64)
            ious, obj_score = host[:n], float(host[-1])
            kf_score = None
            if st.settings["samurai"]:
                cand = [[int(v) for v in host[n + 4 * i : n + 4 * i + 4]] for i in range(n)]
                k, kf_score = select_candidate(st.object(obj_idx), ious, cand, st.settings, st.kf)
            else:
                k = int(np.argmax(ious))
            # the host's choice indexes the candidates as a Python int: no host-to-device copy (which would wait for
            # the device); the same values and shapes as transformers' argmax indexing over [batch, objects]
            token = tokens[:, :, k] if tokens.size(2) > 1 else tokens[:, :, 0]
            pointer = self.object_pointer_proj(token)
            lam = (obj_logits > st.settings["min_obj_score_logits"]).to(pointer.dtype)
            pointer = lam * pointer + (1 - lam) * self.no_object_pointer
            return {
                "pred_masks": low_multi[:, :, k],
                "object_pointer": pointer,
                "high_res_masks": high_multi[:, :, k],
                "object_score_logits": obj_logits,
                "object_score": obj_score,
                "best_iou_score": float(ious[k]),
                "kf_score": kf_score,
            }

        def _tracked_heads(self, emb, feat_s0, feat_s1, min_obj_score_logits: float):
            """The tensor work of a tracked frame's heads (one CUDA graph in the graph modes): the decoder's
            candidates, hidden when the object score is ≤ the threshold, at the model's resolution, and each
            candidate's box on the device (xyxy, `mask_box`'s convention) so that the host reads 4 numbers a mask."""
            low_multi, iou_scores, tokens, obj_logits = self._tracked_decoder(emb, feat_s0, feat_s1)
            appearing = obj_logits > min_obj_score_logits
            low_multi = torch.where(appearing[:, None, None], low_multi, NO_OBJ_SCORE)
            high_multi = (
                F.interpolate(
                    low_multi.squeeze(1).float(),
                    size=(self.image_size, self.image_size),
                    mode="bilinear",
                    align_corners=False,
                )
                .unsqueeze(1)
                .to(low_multi.dtype)
            )
            boxes = mask_boxes((high_multi[:, 0] > 0).flatten(0, 1)).view(*high_multi.shape[:1], -1, 4)
            return low_multi, iou_scores, tokens, obj_logits, high_multi, boxes  # boxes [batch, candidates, 4]

        def _tracked_decoder(self, emb, feat_s0, feat_s1):
            """Prompt encoder (no prompt) and mask decoder of a tracked frame, multimask: the candidates' low-res
            logits, predicted IoUs, output tokens and the object score logit (the part an ONNX graph replaces)."""
            batch = emb.shape[0]
            pe = self.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
            points = torch.zeros(batch, 1, 1, 2, dtype=emb.dtype, device=emb.device)
            labels = -torch.ones(batch, 1, 1, dtype=torch.int32, device=emb.device)
            sparse, dense = self.prompt_encoder(
                input_points=points, input_labels=labels, input_boxes=None, input_masks=None
            )
            return self.mask_decoder(
                image_embeddings=emb,
                image_positional_embeddings=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
                high_resolution_features=[feat_s0, feat_s1],
            )

        def _gather_memory_frame_outputs(self, inference_session, obj_idx, frame_idx, track_in_reverse_time=False):
            st = getattr(inference_session, "samurai", None)
            if st is None or not st.settings["memory_filter"] or track_in_reverse_time:
                return super()._gather_memory_frame_outputs(
                    inference_session, obj_idx, frame_idx, track_in_reverse_time
                )
            outputs = inference_session.output_dict_per_obj[obj_idx]
            cond = outputs["cond_frame_outputs"]
            if not cond:
                raise ValueError(
                    "maskmem_features in conditioning outputs cannot be empty when not is_initial_conditioning_frame"
                )
            selected, unselected = self._select_closest_cond_frames(frame_idx, cond, self.config.max_cond_frame_num)
            picked = [(0, out) for out in selected.values()]
            non_cond = outputs["non_cond_frame_outputs"]
            frames = select_memory_frames(non_cond, frame_idx, st.first_frame, st.settings, self.num_maskmem)
            # oldest first, as upstream's t_pos 1 … num_maskmem − 1; the newest selected frame has offset 1
            for i, idx in enumerate(frames):
                picked.append((len(frames) - i, non_cond.get(idx, unselected.get(idx))))
            return picked

    return SamuraiVideoModel


# ---------------------------------------------------------------- ONNX parts and the ONNX Runtime tracker

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

    s = input_size(model)
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


def _result(part: str, outs: list, high_res_pos: list | None = None):
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


def _arrays(part: str, result) -> list[np.ndarray]:
    """A hook's result (torch's or `_result`'s) as float32 arrays in the order of PART_OUTPUTS."""
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


def _hook_targets(model) -> dict[str, tuple[object, str]]:
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
    targets = _hook_targets(model)

    def recording(part, fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls.append((part, FEEDS[part](*args, **kwargs), _arrays(part, out)))
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


BF16_OUTPUTS = {("memory_encoder", "maskmem_features")}  # kept in bfloat16 by transformers (and by `_result`)


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
        got = _arrays(part, _result(part, sessions[part].run(None, feed)))
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
        got = _arrays("image_encoder", _result("image_encoder", sessions["image_encoder"].run(None, feed)))
        worst = max(
            float(np.abs(g - np.concatenate([r[i] for _, r in frames], axis=1)).max()) for i, g in enumerate(got)
        )
        e = errors["image_encoder"]
        e["batch"] = {"frames": len(frames), "max_abs_error": worst}
        e["outputs"]["top"]["checked_error"] = max(e["outputs"]["top"]["checked_error"], worst)
    return errors


# -- the ONNX Runtime tracker: the torch model's four hook points run by ONNX Runtime sessions

_ORT_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_ort_runner(obj) -> bool:
    return hasattr(obj, "session") and hasattr(obj, "open_session") and hasattr(obj, "path")


def ort_model(runner):
    """The torch model whose four parts run in the runner's ONNX Runtime sessions (one per part, the runner's
    providers and threads), built once per runner and shared by its trackers. The glue (prompt frame's decoder,
    memory assembly, pointer projection, Kalman filter) comes from the checkpoint named in the export's metadata."""
    import json

    model = _ORT_MODELS.get(runner)
    if model is not None:
        return model
    path = Path(runner.path)
    raw = runner.session.get_modelmeta().custom_metadata_map.get(PARTS_KEY)
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
    # the image encoder is the runner's own file: its session is reopened so, not opened a second time
    sessions = {part: runner.open_session(f, spinning=False) for part, f in files.items() if part != "image_encoder"}
    sessions["image_encoder"] = runner.stop_spinning()
    import torch

    with torch.inference_mode():  # the high-res levels' position encodings: shapes only, so computed once here
        size = input_size(model)
        pos = model.get_image_features(torch.zeros(1, 3, size, size), return_dict=True).fpn_position_encoding[:2]

    def hook(part, session):
        feed = FEEDS[part]

        def call(*args, **kwargs):
            return _result(part, session.run(None, feed(*args, **kwargs)), pos)

        return call

    for part, (obj, name) in _hook_targets(model).items():
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
    _ORT_MODELS[runner] = model
    return model


# ---------------------------------------------------------------- the Tracker contract


def frame_pixels(frame: np.ndarray, size: int, device="cpu", dtype=None):
    """HxWx3 uint8 RGB → 3xSxS tensor on `device`: resized (bilinear, antialiased as PIL's) and ImageNet-normalised
    as SAM 2's processor does; the uint8 frame is what crosses to the device."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float() / 255.0
    if x.shape[1] != size or x.shape[2] != size:
        x = F.interpolate(x[None], (size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.as_tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=x.device)[:, None, None]
    x = (x - mean) / std
    return x if dtype is None else x.to(dtype)


def preprocess_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """`frame_pixels` on the CPU, as float32 numpy (the training script and tests)."""
    return frame_pixels(frame, size).numpy()


def mask_to_frame(pred_masks, size: int, height: int, width: int) -> np.ndarray:
    """Low-res mask logits [.., h, w] → boolean HxW mask of the frame (model size, then frame size, as the processor)."""
    return frame_mask(pred_masks, size, height, width).cpu().numpy()


def frame_mask(pred_masks, size: int, height: int, width: int):
    """`mask_to_frame` on the logits' device (a boolean tensor)."""
    import torch.nn.functional as F

    m = pred_masks.reshape(1, 1, *pred_masks.shape[-2:]).float()
    m = F.interpolate(m, (size, size), mode="bilinear", align_corners=False)
    m = F.interpolate(m, (height, width), mode="bilinear", align_corners=False)
    return m[0, 0] > 0


def _xywh(box_xyxy) -> np.ndarray:
    x1, y1, x2, y2 = box_xyxy
    return np.array([x1, y1, x2 - x1 + 1, y2 - y1 + 1], np.float64)


def tensor_bytes(obj) -> int:
    """Bytes of every tensor reachable through dicts, lists and tuples."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class Tracker:
    """One live sequence of one object: `start` on the prompt frame with its box, then `track` per frame.

    The session (memories, Kalman state) belongs to this tracker; between frames it keeps the prompt frame's
    output and, of the tracked frames, only those a later frame can still read — the last
    `max_object_pointers − 1` (object pointers, and plain SAM 2's memories) and the newest `num_maskmem − 1`
    that qualify for SAMURAI's memory — without their masks, and no pixels or image features.
    """

    OBJ_ID = 1

    def __init__(self, model, settings: dict | None = None) -> None:
        self.model = model
        self.settings = settings_for(model, settings)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.size = input_size(model)
        self.session = None
        self.frame_idx = -1
        self.last_box = np.zeros(4)
        self.frame_shape: tuple[int, int] = (0, 0)
        self.last_logits = None  # the last frame's low-res mask logits (torch, on the model's device)
        self._mask = None  # its boolean HxW mask on the device (`last_mask` copies it to the host when read)

    @property
    def last_mask(self) -> np.ndarray | None:
        """The last frame's boolean HxW mask (numpy)."""
        return None if self._mask is None else self._mask.cpu().numpy()

    def _read_frame_result(self, pred_masks, score=None) -> tuple[np.ndarray, bool, float | None]:
        """The frame's mask (kept on the device), its xyxy box, whether it is empty, and the score: one host copy."""
        import torch

        self._mask = frame_mask(pred_masks, self.size, *self.frame_shape)
        self.last_logits = pred_masks
        parts = [mask_boxes(self._mask[None])[0].float(), self._mask.any().reshape(1).float()]
        if score is not None:
            parts.append(score.reshape(-1)[:1].float())
        host = torch.cat(parts).cpu().numpy()
        return host[:4].astype(np.int64), bool(host[4]), (float(host[5]) if score is not None else None)

    @property
    def frames_held(self) -> int:
        if self.session is None:
            return 0
        return sum(
            len(o["cond_frame_outputs"]) + len(o["non_cond_frame_outputs"])
            for o in self.session.output_dict_per_obj.values()
        )

    def state_bytes(self) -> int:
        s = self.session
        if s is None:
            return 0
        return tensor_bytes(
            [
                s.output_dict_per_obj,
                s.processed_frames or {},
                s.cache._vision_features,
                s.point_inputs_per_obj,
                s.mask_inputs_per_obj,
            ]
        )

    def _pixels(self, frame: np.ndarray):

        return frame_pixels(frame, self.size, self.device, self.dtype)

    def start(self, frame: np.ndarray, box_xywh) -> np.ndarray:
        """Prompt frame and the object's box (x, y, w, h pixels) → the box of the mask on that frame."""
        import torch
        from transformers import Sam2VideoInferenceSession

        check_image(frame, "frame")
        box = np.asarray(box_xywh, np.float64).reshape(-1)
        if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            raise PlanforgeError(f"box: expected (x, y, w, h) with w, h > 0; got {np.asarray(box_xywh).tolist()}")
        self.close()
        h, w = frame.shape[:2]
        self.frame_shape = (h, w)
        self.session = Sam2VideoInferenceSession(
            video_height=h,
            video_width=w,
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device=self.device,
            dtype=self.dtype,
        )
        self.session.samurai = SamuraiState(self.settings, first_frame=0)
        sx, sy = self.size / w, self.size / h
        x1, y1, x2, y2 = box[0] * sx, box[1] * sy, (box[0] + box[2]) * sx, (box[1] + box[3]) * sy
        obj_idx = self.session.obj_id_to_idx(self.OBJ_ID)
        coords = torch.tensor([[[[x1, y1], [x2, y2]]]], dtype=torch.float32)
        labels = torch.tensor([[[2, 3]]], dtype=torch.int32)
        self.session.add_point_inputs(obj_idx, 0, {"point_coords": coords, "point_labels": labels})
        self.session.obj_with_new_inputs = [self.OBJ_ID]
        self.frame_idx = 0
        out = self.model(inference_session=self.session, frame=self._pixels(frame), frame_idx=0)
        xyxy, found, _ = self._read_frame_result(out.pred_masks)
        self.last_box = _xywh(xyxy) if found else box.copy()
        self._prune()
        return self.last_box.copy()

    def check_frame(self, frame: np.ndarray) -> None:
        """One line if `frame` cannot be this sequence's next frame (no sequence, not an image, another size)."""
        if self.session is None:
            raise PlanforgeError("Tracker.track before Tracker.start: give the prompt frame and box first")
        check_image(frame, "frame")
        if frame.shape[:2] != self.frame_shape:
            raise PlanforgeError(
                f"frame: {frame.shape[0]}x{frame.shape[1]}, but this sequence is {self.frame_shape[0]}x{self.frame_shape[1]}"
            )

    def track(self, frame: np.ndarray, pixels=None, features: dict | None = None) -> tuple[np.ndarray, float]:
        """The next frame → (box xywh, object score logit). Lost (empty mask): the Kalman prediction, score ≤ 0.

        `pixels` / `features`: the frame already on the device and its image-encoder output (`track_many`
        encodes the frames of several sequences in one batch, after `check_frame` of each); the session then skips
        its own encoding, and the frame is not checked again."""
        if pixels is None:
            self.check_frame(frame)
        self.frame_idx += 1
        if features is not None:
            self.session.cache.cache_vision_features(self.frame_idx, features)
        pixels = self._pixels(frame) if pixels is None else pixels
        out = self.model(inference_session=self.session, frame=pixels, frame_idx=self.frame_idx)
        xyxy, found, score = self._read_frame_result(out.pred_masks, out.object_score_logits)
        if found:
            self.last_box = _xywh(xyxy)
        else:
            score = min(score, 0.0)
            predicted = self.session.samurai.object(0).get("predicted")
            if predicted is not None:
                h, w = self.frame_shape
                sx, sy = w / self.size, h / self.size
                x1, y1, x2, y2 = predicted
                self.last_box = np.array([x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy], np.float64)
        self._prune()
        return self.last_box.copy(), score

    def _prune(self) -> None:
        """Drop what no later frame reads: the frame's pixels and image features (the next frame computes its
        own), the outputs of frames no later frame attends to, and every kept output's masks."""
        s, t = self.session, self.frame_idx
        s.processed_frames = {}
        s.cache.clear_all()  # at 1024 px the FPN maps and their position encodings are ~100 MB
        cfg = self.model.config
        window = max(self.model.num_maskmem - 1, cfg.max_object_pointers_in_encoder - 1)
        for obj_idx, outputs in s.output_dict_per_obj.items():
            non_cond = outputs["non_cond_frame_outputs"]
            keep = {i for i in non_cond if i > t - window}
            if self.settings["memory_filter"]:
                keep |= set(
                    select_memory_frames(non_cond, t + 1, s.samurai.first_frame, self.settings, self.model.num_maskmem)
                )
            for i in list(non_cond):
                if i not in keep:
                    del non_cond[i]
                else:
                    non_cond[i].pop("high_res_masks", None)
                    non_cond[i].pop("pred_masks", None)  # only a prompt frame's masks are ever read back
            for out in outputs["cond_frame_outputs"].values():
                out.pop("high_res_masks", None)
            tracked = s.frames_tracked_per_obj[obj_idx]
            for i in list(tracked):
                if i not in keep:
                    del tracked[i]

    def describe(self) -> dict:
        """How the model's per-frame parts run (`parts_record`), and the SAMURAI settings this tracker applies."""
        return {**parts_record(self.model), "settings": dict(self.settings)}

    def close(self) -> None:
        """Drop all state of the sequence."""
        if self.session is not None:
            self.session.reset_inference_session()
            self.session.processed_frames = None
        self.session = None
        self.frame_idx = -1
        self._mask = self.last_logits = None


# How the per-frame parts a `Rendezvous` batches take a batch: the batch dimension of each tensor argument (by
# name) and of each output (by position). Arguments not named are plain values: calls batch together only when
# those, and every tensor's other dimensions, are equal.
BATCH_DIMS = {
    "memory_attention": (
        {
            "current_vision_features": 1,
            "current_vision_position_embeddings": 1,
            "memory": 1,
            "memory_posision_embeddings": 1,
        },
        (1,),  # [1, batch, HW, C]
    ),
    "heads": ({"emb": 0, "feat_s0": 0, "feat_s1": 0}, (0, 0, 0, 0, 0, 0)),
    "memory_encoder": (
        {"current_vision_feats": 1, "pred_masks_high_res": 0, "object_score_logits": 0},
        (1, 1),  # [HW, batch, C]
    ),
}
_HOOKS = {  # part → (object attribute holding it, argument names in call order)
    "memory_attention": (("memory_attention", "forward"), None),
    "heads": (("", "_tracked_heads"), ("emb", "feat_s0", "feat_s1", "min_obj_score_logits")),
    "memory_encoder": (("", "_encode_new_memory"), None),
}


class _Slot:
    def __init__(self, part: str, kwargs: dict) -> None:
        self.part, self.kwargs = part, kwargs
        self.done, self.result, self.error = False, None, None


class Rendezvous:
    """Steps several live sequences of one model in lockstep threads and runs each per-frame part once for all of
    them: every sequence's thread runs transformers' session code as it always does, and a part's call waits until
    each still-running thread has reached a part; then the waiting calls are grouped (same part, same shapes but
    the batch dimension, same plain arguments), each group runs as one batch (`BATCH_DIMS`) and every thread gets
    its slice. The memory attention of 8 sequences at 1024 px is one attention over 8 query batches instead of 8
    launches of 32 query tiles each. Used by `track_many`; the hooks are the model's own (eager, compiled or
    graphed) and are restored when the step ends."""

    def __init__(self, model, threads: int) -> None:
        import threading

        self.model, self.active = model, threads
        self.cv = threading.Condition()
        self.pending: list[_Slot] = []
        self.batches: list[int] = []  # sizes of the batches run (the record of what was batched)
        self.fns = {}
        for part, ((attr, name), _) in _HOOKS.items():
            owner = getattr(model, attr) if attr else model
            self.fns[part] = (owner, name, getattr(owner, name), name in owner.__dict__)

    def __enter__(self) -> Rendezvous:
        for part, (owner, name, _, _) in self.fns.items():
            setattr(owner, name, self._hook(part))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, fn, own in self.fns.values():
            if own:
                setattr(owner, name, fn)
            else:
                del owner.__dict__[name]

    def _hook(self, part: str):
        names = _HOOKS[part][1]

        def call(*args, **kwargs):
            if args:
                kwargs = {**dict(zip(names, args)), **kwargs}
            slot = _Slot(part, kwargs)
            with self.cv:
                self.pending.append(slot)
                self._run_if_all_waiting()
                while not slot.done:
                    self.cv.wait()
            if slot.error is not None:
                raise slot.error
            return slot.result

        return call

    def leave(self) -> None:
        """A sequence's step ended (or failed): the others no longer wait for it."""
        with self.cv:
            self.active -= 1
            self._run_if_all_waiting()

    def _key(self, slot: _Slot) -> tuple:
        dims = BATCH_DIMS[slot.part][0]
        key = [slot.part]
        for k, v in sorted(slot.kwargs.items()):
            if k in dims:
                shape = list(v.shape)
                shape[dims[k]] = -1
                key.append((k, tuple(shape), v.dtype))
            else:
                key.append((k, repr(v)))
        return tuple(key)

    def _run_if_all_waiting(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        import torch

        groups: dict[tuple, list[_Slot]] = {}
        for slot in self.pending:
            groups.setdefault(self._key(slot), []).append(slot)
        self.pending = []
        for slots in groups.values():
            part = slots[0].part
            dims, out_dims = BATCH_DIMS[part]
            owner, name, fn, _ = self.fns[part]
            try:
                if len(slots) == 1:
                    outs = [fn(**slots[0].kwargs)]
                else:
                    kwargs = {
                        k: torch.cat([s.kwargs[k] for s in slots], dim=dims[k]) if k in dims else v
                        for k, v in slots[0].kwargs.items()
                    }
                    out = fn(**kwargs)
                    single = not isinstance(out, tuple)
                    parts = (out,) if single else out
                    split = [o.split(1, dim=d) for o, d in zip(parts, out_dims)]
                    outs = [x[0].clone() if single else tuple(p.clone() for p in x) for x in zip(*split)]
                self.batches.append(len(slots))
                for s, o in zip(slots, outs):
                    s.result = o
            except Exception as exc:  # noqa: BLE001 - every sequence of the group gets the error
                for s in slots:
                    s.error = exc
            for s in slots:
                s.done = True
        self.cv.notify_all()


def track_many(
    trackers: list[Tracker], frames: list[np.ndarray], batch_parts: bool | None = None
) -> list[tuple[np.ndarray, float]]:
    """The next frame of each of several live sequences of one model, batched: the image encoder runs once on all
    the frames, and (`batch_parts`) the memory attention, heads and memory encoder once per group of sequences at
    the same point (`Rendezvous`: each sequence's step in its own thread, its Kalman choice its own); the result is
    what `Tracker.track` of each gives, up to the rounding of batched kernels. `batch_parts` None: on CUDA only (a
    GPU runs one batch faster than several small launches; on 2 CPU cores the threads cost more than they save:
    1.26 s vs 1.07 s for 4 sequences × 11 frames of samurai-demo). Sequences of different models or frame sizes,
    and the ONNX Runtime tracker (its graphs take one sequence), are stepped one by one after the batched image
    encoder. A bad frame raises before any sequence is stepped."""
    import threading

    import torch

    for t, f in zip(trackers, frames, strict=True):
        t.check_frame(f)
    if len(trackers) < 2 or len({id(t.model) for t in trackers}) > 1 or len({f.shape for f in frames}) > 1:
        return [t.track(f) for t, f in zip(trackers, frames)]
    model = trackers[0].model
    pixels = [t._pixels(f) for t, f in zip(trackers, frames)]
    with torch.inference_mode():
        out = model.get_image_features(torch.stack(pixels), return_dict=True)
    feats, pos = out.fpn_hidden_states, out.fpn_position_encoding  # [HW, batch, C] per level
    steps = [
        (
            t,
            f,
            p,
            {"vision_feats": [x[:, i : i + 1] for x in feats], "vision_pos_embeds": [x[:, i : i + 1] for x in pos]},
        )
        for i, (t, f, p) in enumerate(zip(trackers, frames, pixels))
    ]
    if batch_parts is None:
        batch_parts = next(model.parameters()).device.type == "cuda"
    if not batch_parts or getattr(model, "planforge_parts", {}).get("mode") == "onnxruntime":
        return [t.track(f, pixels=p, features=v) for t, f, p, v in steps]
    results: list = [None] * len(steps)
    with Rendezvous(model, len(steps)) as meet:

        def step(i: int) -> None:
            t, f, p, v = steps[i]
            try:
                results[i] = t.track(f, pixels=p, features=v)
            except Exception as exc:  # noqa: BLE001 - raised below, in the caller's thread
                results[i] = exc
            finally:
                meet.leave()

        workers = [threading.Thread(target=step, args=(i,), name=f"samurai-seq{i}") for i in range(len(steps))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    counts = model.__dict__.setdefault("planforge_batched_calls", {})
    for size in meet.batches:
        counts[size] = counts.get(size, 0) + 1
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


# what the tracking task tells a family about the runner that holds its model (tasks.tracking.tracker_settings)
RUNNER_KEYS = (
    "backend",
    "precision",
    "device",
    "mode",
    "compile_mode",
    "compile_backend",
    "inductor_options",
    "options",
)
TRACKER_MODES = ("eager", "cudagraph", "compile", "compile-graph")  # the torch runner modes the tracker runs
PARTS = ("image_encoder", "memory_attention", "heads", "memory_encoder")  # what a frame runs, heaviest first
COMPILED_PARTS = PARTS  # the memory attention with a dynamic memory length (it grows over the first frames)


def accelerate(
    model,
    mode: str,
    inductor_options: dict | None = None,
    compile_backend: str = "inductor",
    compile_mode: str | None = None,
    stand_in: bool = False,
) -> dict:
    """Run the model's per-frame parts compiled and / or from CUDA graphs (once per model; every tracker of the
    model shares them, as the runner's one module is shared by all live sequences).

    The four parts (`PARTS`) are what a tracked frame spends its kernels on: the image encoder (Hiera, FPN and
    the decoder's high-res projections), the memory attention over the selected memories and object pointers,
    the heads (prompt encoder, mask decoder, candidate masks at model size and their boxes) and the memory
    encoder. Between them the session's bookkeeping and SAMURAI's Kalman choice stay eager, in Python.
    - `cudagraph`: each part replayed from a CUDA graph per input signature (`core.cudagraphs.ShapeGraphs`);
      the memory attention gets one graph per memory length (it grows over the first frames of a sequence).
    - `compile`: the parts compiled by torch.compile (`compile_backend`, `compile_mode`) and run as compiled;
      the memory attention with a dynamic memory length (one compile, not one per length).
    - `compile-graph`: inductor's kernels of the parts (`inductor_options`), each in CUDA graphs.
    `stand_in`: CPU tests only — `ShapeGraphs` re-runs instead of replaying (there is no CUDA here).
    """
    import torch

    from workflow_scripts.core.cudagraphs import ShapeGraphs, graph_pool

    done = getattr(model, "planforge_parts", None)
    if done is not None:
        if done["mode"] != mode:
            raise PlanforgeError(f"samurai: this model's parts already run as {done['mode']}, not {mode}")
        return done
    if mode not in TRACKER_MODES[1:]:
        raise PlanforgeError(f"samurai: tracker mode {mode!r} is not one of {list(TRACKER_MODES)}")
    graphed = mode in ("cudagraph", "compile-graph")
    if graphed and not stand_in and next(model.parameters()).device.type != "cuda":
        raise PlanforgeError(f"samurai: {mode} needs the model on a CUDA device (it is on the CPU)")
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoVisionEncoderOutput

    image_features = model.get_image_features

    def image_encoder(pixel_values):
        out = image_features(pixel_values, return_dict=True)
        return tuple(out.fpn_hidden_states), tuple(out.fpn_position_encoding)

    fns = {
        "image_encoder": image_encoder,
        "memory_attention": model.memory_attention.forward,
        "heads": model._tracked_heads,
        "memory_encoder": model._encode_new_memory,
    }
    eager = dict(fns)
    compiled: set[str] = set()
    if mode in ("compile", "compile-graph"):
        for name in COMPILED_PARTS:
            dynamic = name == "memory_attention"  # one compile for every memory length, not one per length
            if mode == "compile-graph":
                fns[name] = torch.compile(fns[name], backend="inductor", options=inductor_options, dynamic=dynamic)
            else:
                fns[name] = torch.compile(fns[name], backend=compile_backend, mode=compile_mode, dynamic=dynamic)
            compiled.add(name)
            if not graphed:  # reduce-overhead keeps its outputs in its own graphs' pool: the session keeps copies
                fns[name] = _cloning(fns[name])
    if graphed:
        pool = graph_pool(stand_in)
        fns = {
            k: ShapeGraphs(f, k, pool, compiled=k in compiled, stand_in=stand_in, fallback=eager[k])
            for k, f in fns.items()
        }
    run_image = fns["image_encoder"]

    def get_image_features(pixel_values, **kwargs):
        feats, pos = run_image(pixel_values)
        return Sam2VideoVisionEncoderOutput(fpn_hidden_states=list(feats), fpn_position_encoding=list(pos))

    model.get_image_features = get_image_features
    model.memory_attention.forward = fns["memory_attention"]
    model._tracked_heads = fns["heads"]
    model._encode_new_memory = fns["memory_encoder"]
    model.planforge_parts = {"mode": mode, "fns": fns, "compiled": sorted(compiled)}
    return model.planforge_parts


def _cloning(fn):
    from torch.utils._pytree import tree_map

    def call(*args, **kwargs):
        return tree_map(lambda t: t.clone() if hasattr(t, "clone") else t, fn(*args, **kwargs))

    return call


def parts_record(model) -> dict:
    """How the model's per-frame parts run (the bench JSON's `tracker`): eager, compiled, graphs captured."""
    done = getattr(model, "planforge_parts", None)
    batched = getattr(model, "planforge_batched_calls", None)  # track_many: part calls per batch size
    extra = {"batched_part_calls": {str(k): v for k, v in sorted(batched.items())}} if batched else {}
    if done is None:
        return {"mode": "eager", **extra}
    if "record" in done:  # the ONNX Runtime tracker (`ort_model`)
        return done["record"]
    parts = {}
    for name in PARTS:
        fn = done["fns"][name]
        info = fn.describe() if hasattr(fn, "describe") else {}
        parts[name] = {"compiled": name in done["compiled"], **info}
    return {"mode": done["mode"], "parts": parts, **extra}


def tracker(model, settings: dict | None = None) -> Tracker:
    """A `Tracker` over a loaded model (on its own device and dtype) with SAMURAI's settings overridden by `settings`.

    `settings` may also carry the runner's facts (`RUNNER_KEYS`): a torch runner's mode (`TRACKER_MODES`) makes
    the tracker run the model's per-frame parts compiled and / or from CUDA graphs (`accelerate`). `model` may
    also be an ONNX Runtime runner of the parts export: its four parts then run in ONNX Runtime (`ort_model`).
    Any other backend is refused in one line.
    """
    settings = dict(settings or {})
    runner = {k: settings.pop(k) for k in RUNNER_KEYS if k in settings}
    if _is_ort_runner(model):  # an ONNX Runtime runner of the parts export (tasks.tracking.tracked_model)
        if runner.get("precision", "fp32") != "fp32":
            raise PlanforgeError(f"samurai on {runner.get('backend')}: the parts are exported in fp32 only")
        return Tracker(ort_model(model), settings)
    if not hasattr(model, "parameters"):
        raise PlanforgeError(
            f"samurai on {runner.get('backend')}: the tracker runs a torch module or the ONNX Runtime parts; "
            "this backend gives neither"
        )
    mode = runner.get("mode") or "eager"
    if mode not in TRACKER_MODES:
        raise PlanforgeError(
            f"samurai on {runner.get('backend')}: the tracker runs a torch module ({', '.join(TRACKER_MODES)}); "
            f"{mode} is not built for it (use a torch backend)"
        )
    if mode != "eager":
        accelerate(
            model,
            mode,
            inductor_options=runner.get("inductor_options"),
            compile_backend=runner.get("compile_backend") or "inductor",
            compile_mode=runner.get("compile_mode"),
        )
    return Tracker(model, settings)
