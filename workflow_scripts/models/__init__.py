"""Model families: each turns a task's inputs into arrays and arrays into the task's outputs.

A family module provides `load_torch`, `class_names`, `preprocess`, `postprocess`, `export_onnx`,
`forward_output` and `INPUT_NAME` / `OUTPUT_NAMES` (the ONNX and engine tensor names). Its registry
entry says which task it serves and whether Triton pre/post models exist for it. Families never import
a runner; workflow_scripts/core/pipeline.py joins the two.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from workflow_scripts.core.registry import Registry, load_plugins


@dataclass(frozen=True)
class FamilySpec:
    module: str
    task: str  # a name in workflow_scripts.tasks.TASKS
    served: bool = False  # has Triton pre/post-processing models (workflow_scripts/serving/python_models.py)
    hub_ids: bool = False  # a checkpoint may be a Hugging Face id (needs `downloads: true`)
    # the backend artifact kinds it makes (runners.BackendSpec.artifact): its torch module, an ONNX export, engines
    artifacts: tuple[str, ...] = ("checkpoint", "onnx", "engine")

    def backend_problem(self, name: str, artifact: str) -> str | None:
        """Why this family cannot run on a backend that reads `artifact`, or None."""
        if artifact in self.artifacts:
            return None
        return f"family {name} runs only on backends that read its {' / '.join(self.artifacts)} (no {artifact} yet)"


FAMILIES: Registry[FamilySpec] = Registry("model family")
FAMILIES.register("yolo", FamilySpec("workflow_scripts.models.yolo", "detection", served=True))
FAMILIES.register("dfine", FamilySpec("workflow_scripts.models.dfine", "detection", hub_ids=True))
FAMILIES.register("pi0", FamilySpec("workflow_scripts.models.pi0", "vla", artifacts=("checkpoint",)))


def get_family(name: str) -> ModuleType:
    """The module implementing model family `name`."""
    return importlib.import_module(FAMILIES[name].module)


def family_file(name: str) -> str:
    """Path of the family's source file, relative to the repository (for Snakemake code inputs)."""
    from workflow_scripts.core.deps import source_file

    return source_file(FAMILIES[name].module)


def is_architecture(checkpoint: str) -> bool:
    """A checkpoint given as an architecture name (`yolov8n.yaml`, `dfine-demo.yaml`): random weights, no file."""
    return str(checkpoint).endswith((".yaml", ".yml")) and not Path(checkpoint).is_file()


# Checkpoints this workflow downloads itself (rules/data.smk: download_weights).
DOWNLOADED_WEIGHTS = "artifacts/weights/"


def checkpoint_problem(family: str, checkpoint: str, downloads: bool) -> str | None:
    """Why a model's checkpoint cannot be read, or None: a missing local path, or a download on an offline config."""
    if is_architecture(checkpoint):
        return None
    if Path(checkpoint).exists():
        return None
    offline = "this config does not allow downloads; set `downloads: true` or give a local path"
    if str(checkpoint).startswith(DOWNLOADED_WEIGHTS):
        return None if downloads else f"{checkpoint!r} is downloaded by the workflow, but {offline}"
    fam = get_family(family)
    if FAMILIES[family].hub_ids and fam.hub_id_form(checkpoint):
        return None if downloads else f"{checkpoint!r} is a Hugging Face id, but {offline}"
    return (
        f"{checkpoint!r}: no such file or directory (from {Path.cwd()}); train or copy it there, or give an "
        f"architecture name such as yolov8n.yaml"
    )


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


load_plugins()  # last: a plugin module imports the names above
