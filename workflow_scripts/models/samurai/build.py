"""Building the SAMURAI family: its architectures (the published SAM 2.1 Hiera sizes and a tiny one), checkpoints
(`build_architecture`, `save_checkpoint`, `load_torch`) and SAMURAI's settings (`SAMURAI_DEFAULTS`,
`apply_settings`, `settings_for`)."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, exception_line
from workflow_scripts.models import read_saved_source
from workflow_scripts.models.samurai.model import model_class

FORMAT = "planforge-samurai-v1"
INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("pred_masks", "object_score_logits")

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


def image_size(model) -> int:
    """The square image size a loaded model's frames are resized to."""
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
