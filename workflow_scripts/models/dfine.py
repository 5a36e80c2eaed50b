"""D-FINE family (Hugging Face transformers `DFineForObjectDetection`).

Checkpoints are a Hugging Face id (`ustc-community/dfine-xlarge-coco`, or a size name such as
`dfine-n`), a local directory written by `save_pretrained`, an architecture name (`dfine-demo.yaml`:
a small D-FINE built from a config with seeded random weights), or a prepared checkpoint file
(`artifacts/checkpoints/{model}.pt`: the config and the state dict in one torch file, which loads
offline). Pre/post-processing are plain array functions, the same for every backend: a plain
resize to size×size (bilinear, antialiased, as the checkpoint's `RTDetrImageProcessor` does; torchvision,
or the same pixels in numpy where torch is absent, as in the Triton server), rescale by 1/255, no normalisation; sigmoid scores, top-k over queries×classes, cxcywh → xyxy in original pixels. D-FINE
needs no NMS, so `iou` is accepted and ignored.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError, exception_line
from workflow_scripts.models import check_image

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("logits", "pred_boxes")
FORMAT = "planforge-dfine-v1"  # the prepared checkpoint file's layout

# Published checkpoints by size name; the seed's `ustc-community/dfine_x_coco` is today
# published as `ustc-community/dfine-xlarge-coco` (same snapshot), and both names are accepted.
HUB_NAMES = {
    "dfine-n": "ustc-community/dfine-nano-coco",
    "dfine-s": "ustc-community/dfine-small-coco",
    "dfine-m": "ustc-community/dfine-medium-coco",
    "dfine-l": "ustc-community/dfine-large-coco",
    "dfine-x": "ustc-community/dfine-xlarge-coco",
    "ustc-community/dfine_n_coco": "ustc-community/dfine-nano-coco",
    "ustc-community/dfine_s_coco": "ustc-community/dfine-small-coco",
    "ustc-community/dfine_m_coco": "ustc-community/dfine-medium-coco",
    "ustc-community/dfine_l_coco": "ustc-community/dfine-large-coco",
    "ustc-community/dfine_x_coco": "ustc-community/dfine-xlarge-coco",
}

# Nodes INT8 quantization leaves in float, by reason (ONNX node names of `export_onnx`'s graph).
# The decoder refines boxes as distributions over bins (FDR) and samples features at fractional
# offsets (deformable attention): 8-bit offsets and bin weights move every box. The encoder's
# query selection (score/box heads feeding TopK) picks the queries: 8 bits there reorder them.
QUANT_EXCLUDE = {
    "decoder (deformable attention sampling, box distributions, heads)": r"^/inner/model/decoder/",
    "query selection (encoder score and box heads)": r"^/inner/model/enc_(output|score_head|bbox_head)",
}

# The synthetic dataset's classes (workflow_scripts.core.data.SHAPE_CLASSES), in output order.
DEMO_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")


@dataclass(frozen=True)
class ResizeMeta:
    """How one original image was mapped into the model input: a plain resize, no padding."""

    orig_h: int
    orig_w: int


META = ResizeMeta  # what preprocess returns per image (the Triton pre → post models pass it along)


def _quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # from_pretrained imports torchao where it is installed (transformers' quantizers), and torchao >= 0.14 on torch
    # 2.14 logs a deprecation per enum it registers with torch's pytree: noise before the one line a job says
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def hub_id(name: str) -> str:
    """The Hugging Face id a checkpoint name stands for (size names and the old names mapped)."""
    return HUB_NAMES.get(str(name), str(name))


def hub_id_form(checkpoint: str) -> bool:
    """Written like a Hugging Face id (owner/name, or a size name that maps to one), not a local path."""
    return "/" in hub_id(checkpoint) and not str(checkpoint).startswith((".", "/"))


def demo_config(class_names=DEMO_CLASSES):
    """A small D-FINE (≈0.5 M parameters): HGNetV2 backbone with narrow stages, one encoder and
    two decoder layers, 100 queries. Fast enough on two CPU cores for the embedded default."""
    from transformers import DFineConfig, HGNetV2Config

    backbone = HGNetV2Config(
        embedding_size=16,
        depths=[1, 1, 1, 1],
        hidden_sizes=[32, 64, 128, 256],
        stem_channels=[3, 16, 16],
        stage_in_channels=[16, 32, 64, 128],
        stage_mid_channels=[16, 16, 32, 64],
        stage_out_channels=[32, 64, 128, 256],
        stage_num_blocks=[1, 1, 1, 1],
        stage_numb_of_layers=[2, 2, 2, 2],
        stage_light_block=[False, False, True, True],
        stage_kernel_size=[3, 3, 5, 5],
        stage_downsample=[False, True, True, True],
        out_features=["stage2", "stage3", "stage4"],
        use_learnable_affine_block=True,
    )
    names = list(class_names)
    return DFineConfig(
        backbone_config=backbone,
        encoder_in_channels=[64, 128, 256],
        encoder_hidden_dim=64,
        d_model=64,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        decoder_in_channels=[64, 64, 64],
        decoder_n_points=[3, 3, 3],
        hidden_expansion=0.34,
        depth_mult=0.34,
        num_queries=100,
        num_denoising=0,
        eval_idx=-1,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


COCO80 = (
    (
        "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter"
        " bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee"
        " skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle"
        " wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake"
        " chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven"
        " toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
    )
    .replace("_", "~")
    .split()
)
COCO80 = tuple(n.replace("~", " ") for n in COCO80)

# The published D-FINE sizes (COCO, 80 classes), as transformers' conversion script configures them:
# HGNetV2 backbone stages, hybrid encoder and decoder widths. Random weights: for latency, not accuracy.
_SIZES = {
    "n": dict(
        backbone=dict(
            hidden_sizes=[128, 256, 512, 1024],
            stem_channels=[3, 16, 16],
            stage_in_channels=[16, 64, 256, 512],
            stage_mid_channels=[16, 32, 64, 128],
            stage_out_channels=[64, 256, 512, 1024],
            stage_num_blocks=[1, 1, 2, 1],
            stage_numb_of_layers=[3, 3, 3, 3],
            out_indices=[3, 4],
            use_learnable_affine_block=True,
        ),
        num_feature_levels=2,
        encoder_ffn_dim=512,
        encode_proj_layers=[1],
        d_model=128,
        encoder_hidden_dim=128,
        decoder_ffn_dim=512,
        encoder_in_channels=[512, 1024],
        decoder_n_points=[6, 6],
        decoder_in_channels=[128, 128],
        feat_strides=[16, 32],
        depth_mult=0.5,
        decoder_layers=3,
        hidden_expansion=0.34,
    ),
    "s": dict(
        backbone=dict(
            hidden_sizes=[128, 256, 512, 1024],
            stem_channels=[3, 16, 16],
            stage_in_channels=[16, 64, 256, 512],
            stage_mid_channels=[16, 32, 64, 128],
            stage_out_channels=[64, 256, 512, 1024],
            stage_num_blocks=[1, 1, 2, 1],
            stage_numb_of_layers=[3, 3, 3, 3],
            use_learnable_affine_block=True,
        ),
        decoder_layers=3,
        hidden_expansion=0.5,
        depth_mult=0.34,
        decoder_n_points=[3, 6, 3],
        encoder_in_channels=[256, 512, 1024],
    ),
    "m": dict(
        backbone=dict(
            hidden_sizes=[192, 384, 768, 1536],
            stem_channels=[3, 24, 32],
            stage_in_channels=[32, 96, 384, 768],
            stage_mid_channels=[32, 64, 128, 256],
            stage_out_channels=[96, 384, 768, 1536],
            stage_num_blocks=[1, 1, 3, 1],
            stage_numb_of_layers=[4, 4, 4, 4],
            use_learnable_affine_block=True,
        ),
        decoder_layers=4,
        decoder_n_points=[3, 6, 3],
        encoder_in_channels=[384, 768, 1536],
        depth_mult=0.67,
    ),
    "l": dict(
        backbone=dict(
            hidden_sizes=[256, 512, 1024, 2048],
            stem_channels=[3, 32, 48],
            stage_in_channels=[48, 128, 512, 1024],
            stage_mid_channels=[48, 96, 192, 384],
            stage_out_channels=[128, 512, 1024, 2048],
            stage_num_blocks=[1, 1, 3, 1],
            stage_numb_of_layers=[6, 6, 6, 6],
        ),
        encoder_ffn_dim=1024,
        encoder_in_channels=[512, 1024, 2048],
        decoder_n_points=[3, 6, 3],
    ),
    "x": dict(
        backbone=dict(
            hidden_sizes=[256, 512, 1024, 2048],
            stem_channels=[3, 32, 64],
            stage_in_channels=[64, 128, 512, 1024],
            stage_mid_channels=[64, 128, 256, 512],
            stage_out_channels=[128, 512, 1024, 2048],
            stage_num_blocks=[1, 2, 5, 2],
            stage_numb_of_layers=[6, 6, 6, 6],
        ),
        encoder_in_channels=[512, 1024, 2048],
        encoder_hidden_dim=384,
        encoder_ffn_dim=2048,
        decoder_n_points=[3, 6, 3],
        decoder_in_channels=[384, 384, 384],
    ),
}


def published_config(size: str):
    """The config of published D-FINE-{N,S,M,L,X} (COCO classes), for latency work with random weights."""
    from transformers import DFineConfig

    settings = {"hidden_expansion": 1.0, "decoder_layers": 6}
    settings.update({k: v for k, v in _SIZES[size].items() if k != "backbone"})
    config = DFineConfig(
        num_labels=len(COCO80),
        id2label=dict(enumerate(COCO80)),
        label2id={n: i for i, n in enumerate(COCO80)},
        **settings,
    )
    backbone = config.backbone_config
    backbone.layer_type = "basic"
    backbone.embedding_size = 32
    backbone.stage_downsample = [False, True, True, True]
    backbone.stage_light_block = [False, False, True, True]
    backbone.stage_kernel_size = [3, 3, 5, 5]
    for key, value in _SIZES[size]["backbone"].items():
        setattr(backbone, key, value)
    if "out_indices" in _SIZES[size]["backbone"]:
        backbone.out_features = [backbone.stage_names[i] for i in backbone.out_indices]
    return config


ARCHITECTURES = {
    "dfine-demo.yaml": demo_config,
    **{f"dfine-{size}.yaml": (lambda size=size: published_config(size)) for size in _SIZES},
}


def is_architecture_name(checkpoint: str) -> bool:
    return str(checkpoint) in ARCHITECTURES and not Path(checkpoint).exists()


def build_architecture(name: str, seed: int = 0):
    """A randomly initialised (seeded) D-FINE from an architecture name (`dfine-demo.yaml`)."""
    _quiet()
    import torch
    from transformers import DFineForObjectDetection

    if name not in ARCHITECTURES:
        raise PlanforgeError(f"{name}: not a D-FINE architecture; use one of {sorted(ARCHITECTURES)}")
    torch.manual_seed(seed)
    model = DFineForObjectDetection(ARCHITECTURES[name]()).eval()
    # transformers' init is made for training: many matrices and some norm scales start at zero and
    # the others are too small for eval-mode batch norms, so features fade to a constant, every query
    # scores alike, and the encoder's top-k breaks the ties differently in each backend. Random weights
    # for latency work should behave like trained ones there: unit-gain matrices, norm scales of one.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
            elif pname.endswith("weight") and p.numel() > 1 and float(p.abs().max()) == 0.0:
                p.fill_(1.0)
    return model


def save_checkpoint(model, path: str | Path) -> None:
    """One torch file with the config and the weights: what `load_torch` reads back offline."""
    import torch

    torch.save(
        {"format": FORMAT, "config": model.config.to_dict(), "state_dict": model.state_dict()},
        str(path),
    )


def _from_file(path: Path):
    import torch
    from transformers import DFineConfig, DFineForObjectDetection

    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        model = DFineForObjectDetection(DFineConfig.from_dict(blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise PlanforgeError(
            f"{path}: not a loadable D-FINE checkpoint ({exception_line(exc)}); replace the file"
        ) from None
    return model


def _from_pretrained(src: str):
    from transformers import DFineForObjectDetection

    try:
        return DFineForObjectDetection.from_pretrained(src)
    except OSError as exc:
        local = Path(src).exists()
        what = "a directory written by save_pretrained" if local else "a Hugging Face id"
        raise PlanforgeError(
            f"{src}: cannot load D-FINE from {what} ({exception_line(exc)}); "
            + (
                "check the directory holds config.json and model.safetensors"
                if local
                else "download it once with network access (`hf download "
                + src
                + "`) or point `checkpoint` at a local copy"
            )
        ) from None


def load_torch(checkpoint: str | Path, device: str = "cpu"):
    """Load D-FINE as an eval-mode FP32 torch module, from any of the checkpoint forms above."""
    _quiet()
    src = str(checkpoint)
    if src.endswith((".yaml", ".yml")) and not Path(src).exists():
        model = build_architecture(src)
    elif Path(src).is_file():
        model = _from_file(Path(src))
    elif Path(src).is_dir():
        model = _from_pretrained(src)
    elif hub_id_form(src):
        model = _from_pretrained(hub_id(src))
    else:
        raise PlanforgeError(
            f"{src}: checkpoint not found; give a Hugging Face id, a save_pretrained directory or a file"
        )
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def apply_settings(model, settings: dict):
    """The model with its config's settings (`num_queries`) changed and its own weights: what prepare saves.

    num_queries is how many encoder proposals (top-k of the encoder's class scores, over every anchor)
    the decoder refines: it sizes a topk at inference time and no weight, unless the checkpoint learned its
    initial queries (`learn_initial_query`, an embedding per query). The model is rebuilt from the changed
    config and loads the weights strictly, so such a checkpoint is refused instead of half-loaded.
    """
    import copy

    from transformers import DFineForObjectDetection

    n = settings.get("num_queries")
    if n is None or int(n) == model.config.num_queries:
        return model
    config = copy.deepcopy(model.config)
    config.num_queries = int(n)
    _quiet()
    rebuilt = DFineForObjectDetection(config)
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as exc:
        raise PlanforgeError(
            f"num_queries {n}: this checkpoint's weights depend on its {model.config.num_queries} queries "
            f"({exception_line(exc)[:200]}); remove num_queries from its config entry"
        ) from None
    rebuilt = rebuilt.eval()
    for p in rebuilt.parameters():
        p.requires_grad_(False)
    return rebuilt


def checkpoint_dir_problem(path: Path) -> str | None:
    """Why a directory is not a D-FINE save_pretrained folder, or None (its config.json only, no weights read)."""
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"{path}: a directory without a readable config.json ({exc}); give a save_pretrained folder"
    if not isinstance(config, dict) or config.get("model_type") != "d_fine":
        got = config.get("model_type") if isinstance(config, dict) else None
        return f"{path}: config.json says model_type {got!r}, not 'd_fine'; give a D-FINE checkpoint or fix the family"
    if not any(
        (path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    ):
        return f"{path}: has config.json but no model.safetensors or pytorch_model.bin; copy the weights there"
    return None


def settings_problem(checkpoint: str, settings: dict) -> tuple[str, str] | None:
    """(key, why) for a setting this checkpoint cannot take, decided from a save_pretrained folder's config.json
    (num_queries on a checkpoint that learned its initial queries); None where fine or not known before loading."""
    import json

    n = settings.get("num_queries")
    path = Path(checkpoint) / "config.json"
    if n is None or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if config.get("learn_initial_query") and int(n) != config.get("num_queries"):
        return "num_queries", (
            f"{checkpoint} learned its {config.get('num_queries')} initial queries (learn_initial_query), so its "
            f"weights fix the count; remove num_queries or set it to {config.get('num_queries')}"
        )
    return None


def checkpoint_inputs(checkpoint: str) -> list[str]:
    """Local files the checkpoint is read from (Snakemake inputs): a directory's files, a file, or none."""
    p = Path(checkpoint)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    if is_architecture_name(checkpoint):
        return []
    if not p.exists() and hub_id_form(checkpoint) and not Path(str(checkpoint).split("/")[0]).is_dir():
        return []  # a Hugging Face id: nothing local to watch (changing the id reruns via params)
    return [str(checkpoint)]


def fix_input_size(model, height: int, width: int, device, dtype) -> None:
    """Make the eval forward capturable for one input size (CUDA graphs, torch.compile).

    Without `anchor_image_size`, transformers' D-FINE builds its anchors and valid mask on every
    call; with it, it keeps them as plain (non-buffer) CPU tensors that `.to(device, dtype)`
    copies to the GPU on every call, which a CUDA graph cannot capture. Here they are computed
    once for this size, on the model's device and in its dtype, so that copy is a no-op.
    """
    inner = model.model
    inner.config.anchor_image_size = [int(height), int(width)]
    anchors, valid_mask = inner.generate_anchors(device=device, dtype=dtype)
    inner.anchors, inner.valid_mask = anchors, valid_mask.to(dtype)


def class_names(model) -> list[str]:
    """Class names in output order, from the config's id2label."""
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def forward_output(raw):
    """The two outputs that matter, (logits [N, Q, C], pred_boxes [N, Q, 4] cxcywh in 0..1)."""
    if isinstance(raw, dict) or hasattr(raw, "logits"):
        return raw["logits"], raw["pred_boxes"]
    return raw[0], raw[1]


@functools.lru_cache(maxsize=64)
def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices, int16-range fixed-point weights and their precision for one axis of an antialiased
    bilinear resize: PyTorch's uint8 kernel (`_upsample_bilinear2d_aa`, itself PIL's ImagingResample),
    with its float64 steps in its order (C truncation, sequential sums) so the rounding is the same."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # the triangle filter's half-width, stretched when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    max_taps = int(np.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    n = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - lo, 0, max_taps)
    taps = int(n.max())
    j = np.arange(taps)
    w = np.maximum(1.0 - np.abs((j[None, :] + lo[:, None] - center[:, None] + 0.5) * invscale), 0.0)
    w[j[None, :] >= n[:, None]] = 0.0
    total = np.zeros(out_size)
    for k in range(taps):  # summed tap by tap, as the C loop does
        total += w[:, k]
    w = np.where(total[:, None] != 0, w / np.where(total == 0, 1.0, total)[:, None], w)
    wt_max = float(w.max()) if (total != 0).any() else 0.0
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    index = np.minimum(lo[:, None] + j[None, :], in_size - 1)  # past a row's taps: weight 0
    weight = (0.5 + w * (1 << precision)).astype(np.int32)  # weights are >= 0: C's rounding
    return index, weight, precision


def _aa_pass(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    index, weight, precision = _aa_weights(image.shape[axis], out_size)
    src = np.moveaxis(image, axis, 0)  # [in, ...]
    shape = (out_size,) + (1,) * (src.ndim - 1)
    acc = np.full((out_size, *src.shape[1:]), 1 << (precision - 1), dtype=np.int32)  # sums stay below 2^31
    for k in range(index.shape[1]):  # a few taps: one gather and multiply-add each
        acc += src[index[:, k]].astype(np.int32) * weight[:, k].reshape(shape)
    return np.moveaxis(np.clip(acc >> precision, 0, 255).astype(np.uint8), 0, axis)


def resize_aa(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 → size×size×3 uint8, bilinear with antialiasing, in numpy: torchvision's resize bit for bit.

    What transformers' default (torchvision) backend does on the uint8 image (`tvf.resize(..., BILINEAR,
    antialias=True)`: horizontal pass, then vertical, each in fixed point with uint8 rounding between
    them). `resize` uses it where torch is not installed (the Triton python backend's environment); it is
    far slower than torch's vectorised kernel (≈4 ms for 160×96 → 320, ≈30 ms for 640×480 → 640).
    """
    if image.shape[1] != size:
        image = _aa_pass(image, 1, size)
    if image.shape[0] != size:
        image = _aa_pass(image, 0, size)
    return image


@functools.cache
def _torch_resize():
    try:
        import torch
        from torchvision.transforms.v2 import functional as tvf
    except ImportError:
        return None

    def resize(image: np.ndarray, size: int) -> np.ndarray:
        chw = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
        out = tvf.resize(chw, [size, size], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)
        return out.permute(1, 2, 0).numpy()

    return resize


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """The image processor's resize: torchvision where installed, else `resize_aa` (the same pixels)."""
    return (_torch_resize() or resize_aa)(image, size)


def preprocess(images: list[np.ndarray], size: int) -> tuple[np.ndarray, list[ResizeMeta]]:
    """RGB uint8 HxWx3 images → float32 NCHW batch in [0, 1]: a plain size×size resize, no normalisation.

    The resize is the checkpoint's image processor's (transformers' default torchvision backend:
    bilinear with antialiasing on the uint8 image), so the pixels are the ones the model was trained on;
    without torch (the Triton server's environment) `resize_aa` gives the same pixels in numpy.
    """
    for im in images:
        check_image(im)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    metas = []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        out[i] = resize(im, size).transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        metas.append(ResizeMeta(h, w))
    return out, metas


def postprocess(
    outputs,
    metas: list[ResizeMeta],
    conf: float = 0.25,
    iou: float | None = None,
    max_det: int = 300,
) -> list[dict[str, np.ndarray]]:
    """(logits, pred_boxes) → per image {boxes (xyxy, original pixels), scores, classes}.

    Sigmoid scores, the top `max_det` over queries×classes (a query may give several classes),
    those above `conf`, boxes cxcywh (0..1) → xyxy scaled to the original image. No NMS.
    """
    logits, boxes = (np.asarray(o, dtype=np.float32) for o in outputs[:2])
    n_queries, n_classes = logits.shape[1:]
    k = min(max_det, n_queries * n_classes)
    scores_all = 1.0 / (1.0 + np.exp(-logits.reshape(len(logits), -1)))
    results = []
    for scores_flat, box, meta in zip(scores_all, boxes, metas):
        top = np.argpartition(-scores_flat, k - 1)[:k] if k < scores_flat.size else np.arange(scores_flat.size)
        top = top[np.argsort(-scores_flat[top], kind="stable")]
        scores = scores_flat[top]
        keep = scores > conf
        top, scores = top[keep], scores[keep]
        queries, classes = top // n_classes, top % n_classes
        cx, cy, w, h = box[queries].T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        xyxy *= np.array([meta.orig_w, meta.orig_h, meta.orig_w, meta.orig_h], dtype=np.float32)
        results.append(
            {
                "boxes": xyxy.astype(np.float32),
                "scores": scores.astype(np.float32),
                "classes": classes.astype(np.int64),
            }
        )
    return results


class _Trimmed:
    """Wraps the HF module so tracing sees only the two outputs that matter."""

    def __new__(cls, model):
        import torch

        class Trimmed(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                out = self.inner(pixel_values=pixel_values)
                return out.logits, out.pred_boxes

        return Trimmed(model).eval()


def export_onnx(checkpoint: str | Path, out: str | Path, imgsz: int, opset: int = 17, dynamic: bool = True) -> dict:
    """torch.onnx export (TorchScript exporter) of logits and pred_boxes only; simplified by the export step."""
    import warnings

    import torch

    hf = load_torch(checkpoint)
    # Anchors as constants for this input size (as checkpoints with `anchor_image_size` have them):
    # computed once in eager mode instead of traced op by op.
    fix_input_size(hf, imgsz, imgsz, torch.device("cpu"), torch.float32)
    model = _Trimmed(hf)
    dummy = torch.rand(2 if dynamic else 1, 3, imgsz, imgsz)
    axes = {INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUT_NAMES}} if dynamic else None
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(out),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return {"exporter": "torch.onnx (TorchScript)", "input_name": INPUT_NAME, "output_names": list(OUTPUT_NAMES)}


def quant_exclude(model) -> dict[str, list[str]]:
    """Node names of an exported ONNX model that QUANT_EXCLUDE keeps in float, by reason."""
    import re

    if not any(n.name.startswith("/inner/model/") for n in model.graph.node):
        raise PlanforgeError("the ONNX graph was not made by the D-FINE exporter (no /inner/model/ nodes); re-export")
    return {
        reason: [n.name for n in model.graph.node if re.match(pattern, n.name)]
        for reason, pattern in QUANT_EXCLUDE.items()
    }
