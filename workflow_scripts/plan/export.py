"""The export stage: prepared checkpoints and ONNX graphs (one per model, or a family's parts beside it), and the
artifact a checkpoint or ONNX backend runs (a QDQ variant's name comes from the quantize stage)."""

from __future__ import annotations

from workflow_scripts.core.deps import code_files
from workflow_scripts.models import FAMILIES, checkpoint_inputs, family_files, family_settings
from workflow_scripts.plan import paths
from workflow_scripts.plan.context import Stage
from workflow_scripts.runners import BACKENDS


class ExportPlanner(Stage):
    # -- prepare_checkpoint ---------------------------------------------------------------------------
    def checkpoint_source(self, model: str) -> list[str]:
        """The configured checkpoint's local files (none for an architecture name or a hub id)."""
        m = self.ctx.models[model]
        return checkpoint_inputs(m["family"], m["checkpoint"])

    def checkpoint(self, model: str) -> str:
        """The configured checkpoint: a path, an architecture name or a hub id."""
        return self.ctx.models[model]["checkpoint"]

    def model_settings(self, model: str, **_) -> dict:
        """What the prepared checkpoint applies beyond its source (D-FINE's num_queries); {} for none.

        In the prepare rule's params: a change remakes that model's checkpoint, and so everything downstream of it.
        """
        return family_settings(self.ctx.family(model), self.ctx.models[model])

    # -- export_onnx ----------------------------------------------------------------------------------
    def options(self) -> dict:
        """The export CLI's options from the config's `export` section (the rule's params)."""
        e = self.ctx.cfg["export"]
        return {
            "opset": e["opset"],
            "batch_flag": "" if e["dynamic_batch"] else "--static-batch",
            "simplify": e["simplify"],
            "check_images": e["check_images"],
            "max_abs_error": e["max_abs_error"],
        }

    def export_code(self, model: str) -> list[str]:
        """The export's code: the step, the model's family and its task (its `export_check_inputs`, by name)."""
        task = self.ctx.task(model)
        return [*code_files("export", f"workflow_scripts.tasks.{task}"), *family_files(self.ctx.family(model))]

    def onnx_parts(self, model: str) -> list[str]:
        """The graphs beside the model's fp32.onnx that its export also writes (none for a one-graph export)."""
        return [paths.onnx_part_path(model, p) for p in FAMILIES[self.ctx.family(model)].onnx_parts]

    def models_with_onnx_parts(self) -> list[str]:
        return [m for m in self.ctx.models if FAMILIES[self.ctx.family(m)].onnx_parts]

    def models_without_onnx_parts(self) -> list[str]:
        return [m for m in self.ctx.models if not FAMILIES[self.ctx.family(m)].onnx_parts]

    def onnx_part_patterns(self) -> list[str]:
        """The export rule's extra outputs for models with parts: `fp32.<part>.onnx` per part their families name."""
        parts = dict.fromkeys(p for m in self.models_with_onnx_parts() for p in FAMILIES[self.ctx.family(m)].onnx_parts)
        return [paths.onnx_part_path("{model}", p) for p in parts]

    # -- the artifact a checkpoint or ONNX backend runs --------------------------------------------------
    def artifact(self, target: str, model: str, backend: str, precision: str, batch: str | None = None) -> str:
        """The prepared checkpoint, or the ONNX model of the precision (a QDQ variant for static INT8)."""
        spec = BACKENDS[backend]
        if spec.artifact == "checkpoint":
            return paths.checkpoint_path(model)
        variant = self.plan.quantize.onnx_variant(target, precision)
        return paths.onnx_path(model, variant or spec.artifact_variant(precision))

    def companions(self, target: str, model: str, backend: str, precision: str) -> list[str]:
        """For an ONNX backend on a parts export: the other parts and the prepared checkpoint (the family's torch
        glue, named in the export's metadata); else nothing."""
        if BACKENDS[backend].artifact != "onnx" or not FAMILIES[self.ctx.family(model)].onnx_parts:
            return []
        return [*self.onnx_parts(model), paths.checkpoint_path(model)]
