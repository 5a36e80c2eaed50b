"""Model families: each turns images into arrays and arrays into detections.

A family module provides `load_torch`, `class_names`, `preprocess`, `postprocess` and
`export_onnx`. Families never import a runner; the step scripts join the two.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAMILIES = {"yolo": "workflow_scripts.models.yolo"}


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
    """A checkpoint given as an architecture name (`yolov8n.yaml`): built with random weights, no file needed."""
    from pathlib import Path

    return str(checkpoint).endswith((".yaml", ".yml")) and not Path(checkpoint).is_file()
