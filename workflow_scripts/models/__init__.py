"""Model families: each turns a task's inputs into arrays and arrays into the task's outputs.

A family module provides `load_torch`, `class_names`, `preprocess`, `postprocess`, `export_onnx`,
`forward_output`, `INPUT_NAME` / `OUTPUT_NAMES` (the ONNX and engine tensor names) and `META` (the
per-image dataclass `preprocess` returns beside the batch, numeric fields only: it travels between the
Triton pre and post models as a float32 row). `preprocess` checks each image with `check_image`. Its registry
entry says which task it serves and whether Triton pre/post models exist for it. Families never import
a runner; workflow_scripts/pipeline/ joins the two.
"""

from __future__ import annotations

import importlib
import json
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
    # model config keys (models.<m>.<key>) the family applies when it prepares the checkpoint
    # (`fam.apply_settings`); another family's model refuses them. None in the config: the checkpoint's own.
    settings: tuple[str, ...] = ()
    # the backend artifact kinds it makes (runners.BackendSpec.artifact): its torch module, an ONNX export, engines
    artifacts: tuple[str, ...] = ("checkpoint", "onnx", "engine")
    # an ONNX export of several graphs: the parts that lie beside `fp32.onnx` as `fp32.<part>.onnx` (SAMURAI's);
    # the export rule declares them, and the ONNX jobs read them and the checkpoint (the family's torch glue)
    onnx_parts: tuple[str, ...] = ()
    # the backends that run such a parts export (its family opens one session per part through the runner)
    onnx_parts_backends: tuple[str, ...] = ("onnxruntime", "onnxruntime-gpu")

    def backend_problem(self, name: str, artifact: str, backend: str | None = None) -> str | None:
        """Why this family cannot run on `backend`, which reads `artifact`, or None."""
        if artifact not in self.artifacts:
            return f"family {name} runs only on backends that read its {' / '.join(self.artifacts)} (no {artifact} yet)"
        if self.onnx_parts and artifact == "onnx" and backend and backend not in self.onnx_parts_backends:
            return (
                f"family {name} exports several ONNX graphs, which only {' / '.join(self.onnx_parts_backends)} "
                f"run (its tracker opens a session per part)"
            )
        return None


FAMILIES: Registry[FamilySpec] = Registry("model family")
FAMILIES.register("yolo", FamilySpec("workflow_scripts.models.yolo", "detection", served=True))
FAMILIES.register(
    "dfine",
    FamilySpec("workflow_scripts.models.dfine", "detection", served=True, hub_ids=True, settings=("num_queries",)),
)
FAMILIES.register("pi0", FamilySpec("workflow_scripts.models.pi0", "vla", artifacts=("checkpoint", "onnx")))
FAMILIES.register(
    "samurai",
    FamilySpec(
        "workflow_scripts.models.samurai",
        "tracking",
        artifacts=("checkpoint", "onnx"),
        onnx_parts=("memory_attention", "mask_decoder", "memory_encoder"),
        settings=("tracker",),
    ),
)


def family_settings(family: str, model_cfg: dict) -> dict:
    """The family settings a model's config sets (None values left out): what its prepared checkpoint applies."""
    return {k: model_cfg[k] for k in FAMILIES[family].settings if model_cfg.get(k) is not None}


def settings_problem(family: str, model_cfg: dict) -> tuple[str, str] | None:
    """(key, why) for a key the model's config sets that its family does not apply (another family's setting)."""
    for name, spec in FAMILIES.items():
        for key in spec.settings:
            if model_cfg.get(key) is not None and key not in FAMILIES[family].settings:
                return key, f"the {family} family has no {key} setting (only {name} models take it); remove it"
    return None


def checkpoint_settings_problem(family: str, model_cfg: dict) -> tuple[str, str] | None:
    """(key, why) for a setting the model's checkpoint cannot take, where its family can tell before loading it
    (the family module's `settings_problem(checkpoint, settings)`, e.g. D-FINE's learned queries); else None."""
    fam = get_family(family)
    if not hasattr(fam, "settings_problem"):
        return None
    return fam.settings_problem(model_cfg["checkpoint"], family_settings(family, model_cfg))


class BadImage(ValueError):
    """An image a family cannot preprocess; its message names the input and the expected form."""


def check_image(image, name: str = "IMAGE") -> None:
    """Raise BadImage unless `image` is an HxWx3 uint8 RGB array with H, W >= 1 (every family's preprocess input)."""
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", type(image).__name__)
    if shape is None or len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 1 or str(dtype) != "uint8":
        got = "x".join(str(d) for d in shape) if shape is not None else "no array"
        raise BadImage(f"{name}: expected HxWx3 uint8 RGB with H,W ≥ 1; got {got or 'a scalar'} {dtype}")


def read_saved_source(checkpoint, fmt: str, family: str) -> dict:
    """The dict a family wrote with torch.save (its `format` key is `fmt`: Pi0's and SAMURAI's checkpoints);
    one line naming the file if it cannot be read or is another kind of file."""
    import torch

    from workflow_scripts.core.io import PlanforgeError, exception_line

    try:
        source = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - one line naming the file
        raise PlanforgeError(f"{checkpoint}: not a readable {family} checkpoint ({exception_line(exc)})") from None
    if not isinstance(source, dict) or source.get("format") != fmt:
        raise PlanforgeError(f"{checkpoint}: not a {fmt} checkpoint (write it with prepare_checkpoint)")
    return source


def get_family(name: str) -> ModuleType:
    """The module implementing model family `name`."""
    return importlib.import_module(FAMILIES[name].module)


def family_files(name: str) -> list[str]:
    """The family's source files, relative to the repository (for Snakemake code inputs): its module, or every
    module of its package (SAMURAI's)."""
    from workflow_scripts.core.deps import module_files

    return list(module_files(FAMILIES[name].module))


def is_architecture(checkpoint: str) -> bool:
    """A checkpoint given as an architecture name (`yolov8n.yaml`, `dfine-demo.yaml`): random weights, no file."""
    return str(checkpoint).endswith((".yaml", ".yml")) and not Path(checkpoint).is_file()


# Checkpoints this workflow downloads itself (rules/data.smk: download_weights).
DOWNLOADED_WEIGHTS = "artifacts/weights/"


def checkpoint_problem(family: str, checkpoint: str, downloads: bool) -> str | None:
    """Why a model's checkpoint cannot be read, or None: a missing local path, or a download on an offline config."""
    if is_architecture(checkpoint):
        fam = get_family(family)  # a family with its own named architectures says whether it knows this one
        if hasattr(fam, "is_architecture_name") and not fam.is_architecture_name(checkpoint):
            return (
                f"{checkpoint!r} is not a {family} architecture; use one of {sorted(fam.ARCHITECTURES)} or a "
                f"{family} checkpoint"
            )
        return None
    if Path(checkpoint).exists():
        return checkpoint_kind_problem(family, checkpoint)
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


def saved_pickle(path: Path) -> bytes | str | None:
    """The pickle of a torch.save file (its data.pkl), read without loading it; a one-line reason where the file
    is no torch checkpoint or cannot be read; None for torch's legacy (pre-1.6) layout, which is not looked into."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not pickles:
                return "a zip archive without data.pkl, not a torch checkpoint"
            return z.read(pickles[0])
    except zipfile.BadZipFile as exc:
        try:
            with open(path, "rb") as f:
                head = f.read(2)
        except OSError as err:
            return f"cannot read it ({err.strerror})"
        if head[:1] == b"\x80":
            return None  # a legacy torch.save pickle
        return f"not a torch checkpoint, or a damaged one ({exc})"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"


def file_families(blob: bytes) -> list[str]:
    """The families whose checkpoint marker (the family module's CHECKPOINT_MARKER or FORMAT) a saved pickle holds."""
    return [name for name in FAMILIES.names() if (m := _marker(get_family(name))) and m.encode() in blob]


def _marker(fam: ModuleType) -> str | None:
    return getattr(fam, "CHECKPOINT_MARKER", None) or getattr(fam, "FORMAT", None)


def checkpoint_kind_problem(family: str, checkpoint: str) -> str | None:
    """Why an existing local checkpoint is not one `family` reads, or None; cheap (reads no weights, imports no
    framework), so a wrong path is refused when the plan loads instead of after Snakemake removed the old outputs.

    A directory is read only by a family with `checkpoint_dir_problem` (D-FINE's save_pretrained folders); a file
    must be a readable torch checkpoint that holds the family's marker (`CHECKPOINT_MARKER`, else `FORMAT`: the
    `format` its save_checkpoint writes). A family with neither is not checked here.
    """
    path = Path(checkpoint)
    fam = get_family(family)
    if _marker(fam) is None and not hasattr(fam, "checkpoint_dir_problem"):
        return None  # a family (a plugin's) that says nothing of its checkpoint's form: left to its loader
    if path.is_dir():
        if hasattr(fam, "checkpoint_dir_problem"):
            return fam.checkpoint_dir_problem(path)
        what = "a directory"
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
            what += f" of transformers weights (model_type {model_type!r})" if model_type else ""
        except (OSError, ValueError, AttributeError):
            pass
        return f"{checkpoint!r} is {what}; a {family} checkpoint is one file (or an architecture name); fix the path"
    blob = saved_pickle(path)
    if isinstance(blob, str):
        return f"{checkpoint!r}: {blob}; replace the file or fix the path"
    if blob is None or _marker(fam) is None:  # a legacy pickle, or a family that names no file marker
        return None
    found = file_families(blob)
    if family in found:
        return None
    what = f"a {' / '.join(found)} checkpoint" if found else "no checkpoint this workflow reads"
    return f"{checkpoint!r} is {what}, not a {family} one; give the model a {family} checkpoint or fix its family"


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
