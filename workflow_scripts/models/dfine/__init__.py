"""D-FINE family (Hugging Face transformers `DFineForObjectDetection`).

Checkpoints are a Hugging Face id (`ustc-community/dfine-xlarge-coco`, or a size name such as
`dfine-n`), a local directory written by `save_pretrained`, an architecture name (`dfine-demo.yaml`:
a small D-FINE built from a config with seeded random weights), or a prepared checkpoint file
(`artifacts/checkpoints/{model}.pt`: the config and the state dict in one torch file, which loads
offline). Pre/post-processing are plain array functions, the same for every backend: a plain
resize to size×size (bilinear, antialiased, as the checkpoint's `RTDetrImageProcessor` does; torchvision,
or the same pixels in numpy where torch is absent, as in the Triton server), rescale by 1/255, no normalisation; sigmoid scores, top-k over queries×classes, cxcywh → xyxy in original pixels. D-FINE
needs no NMS, so `iou` is accepted and ignored.

The package, one concern a module (each imports only modules listed before it, never this file's names):
- `architectures`: the demo model and the published sizes' configs, built with seeded random weights;
- `checkpoints`: the checkpoint forms above loaded as a torch module, their settings (`num_queries`), inputs and outputs;
- `images`: pre- and post-processing (no torch needed: the Triton server's environment runs them);
- `onnx_export`: the ONNX export and the nodes INT8 quantization keeps in float.
"""

from __future__ import annotations

from workflow_scripts.models.dfine.architectures import (
    ARCHITECTURES,
    COCO80,
    DEMO_CLASSES,
    build_architecture,
    demo_config,
    is_architecture_name,
    published_config,
)
from workflow_scripts.models.dfine.checkpoints import (
    FORMAT,
    HUB_NAMES,
    INPUT_NAME,
    OUTPUT_NAMES,
    apply_settings,
    checkpoint_dir_problem,
    checkpoint_inputs,
    class_names,
    fix_input_size,
    forward_output,
    hub_id,
    hub_id_form,
    load_torch,
    save_checkpoint,
    settings_problem,
)
from workflow_scripts.models.dfine.images import META, ResizeMeta, postprocess, preprocess, resize, resize_aa
from workflow_scripts.models.dfine.onnx_export import QUANT_EXCLUDE, export_onnx, quant_exclude

__all__ = [
    "ARCHITECTURES",
    "COCO80",
    "DEMO_CLASSES",
    "FORMAT",
    "HUB_NAMES",
    "INPUT_NAME",
    "META",
    "OUTPUT_NAMES",
    "QUANT_EXCLUDE",
    "ResizeMeta",
    "apply_settings",
    "build_architecture",
    "checkpoint_dir_problem",
    "checkpoint_inputs",
    "class_names",
    "demo_config",
    "export_onnx",
    "fix_input_size",
    "forward_output",
    "hub_id",
    "hub_id_form",
    "is_architecture_name",
    "load_torch",
    "postprocess",
    "preprocess",
    "published_config",
    "quant_exclude",
    "resize",
    "resize_aa",
    "save_checkpoint",
    "settings_problem",
]
