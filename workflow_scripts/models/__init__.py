"""Model families: each turns images into arrays and arrays into detections.

A family module provides `load_torch`, `class_names`, `preprocess`, `postprocess` and
`export_onnx`. Families never import a runner; the step scripts join the two.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAMILIES = {"yolo": "workflow_scripts.models.yolo", "dfine": "workflow_scripts.models.dfine"}
# Families with Triton pre/post-processing models (workflow_scripts/triton_models.py); others are not served.
SERVED_FAMILIES = ("yolo",)


def get_family(name: str) -> ModuleType:
    """The module implementing model family `name`."""
    try:
        return importlib.import_module(FAMILIES[name])
    except KeyError:
        from workflow_scripts.io import PlanforgeError

        raise PlanforgeError(f"unknown model family {name!r}; allowed: {sorted(FAMILIES)}") from None


def family_file(name: str) -> str:
    """Path of the family's source file, relative to the repository (for Snakemake code inputs)."""
    return FAMILIES[name].replace(".", "/") + ".py"


def is_architecture(checkpoint: str) -> bool:
    """A checkpoint given as an architecture name (`yolov8n.yaml`, `dfine-demo.yaml`): random weights, no file."""
    from pathlib import Path

    return str(checkpoint).endswith((".yaml", ".yml")) and not Path(checkpoint).is_file()


def checkpoint_inputs(family: str, checkpoint: str) -> list[str]:
    """Local files a model's checkpoint is read from (the prepare rule's inputs).

    An architecture name has none; a family may add its own forms (D-FINE: a save_pretrained
    directory → its files, a Hugging Face id → none). Cheap: imports no framework.
    """
    if is_architecture(checkpoint):
        return []
    fam = get_family(family)
    if hasattr(fam, "checkpoint_inputs"):
        return fam.checkpoint_inputs(checkpoint)
    return [checkpoint]


def raw_outputs(fam: ModuleType, outputs: list):
    """What a family's `postprocess` takes from a runner's outputs: the one tensor, or all of them in order."""
    names = getattr(fam, "OUTPUT_NAMES", ("output0",))
    return outputs[0] if len(names) == 1 else list(outputs[: len(names)])
