"""D-FINE architectures: the demo model and the published sizes' configs, built with seeded random weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError

# The synthetic dataset's classes (workflow_scripts.core.data.SHAPE_CLASSES), in output order.
DEMO_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")


def quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # from_pretrained imports torchao where it is installed (transformers' quantizers), and torchao >= 0.14 on torch
    # 2.14 logs a deprecation per enum it registers with torch's pytree: noise before the one line a job says
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


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
    quiet()
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
