"""The job plan of a validated config: one planner per stage behind a thin `Plan`.

    plan.data      datasets' splits                       (plan/data.py)
    plan.export    prepared checkpoints, ONNX graphs      (plan/export.py)
    plan.quantize  calibration, QDQ variants, fallbacks   (plan/quantize.py)
    plan.engines   TensorRT engines                       (plan/engines.py)
    plan.measure   bench, accuracy and picture runs       (plan/measure.py)
    plan.serving   Triton repositories and sweeps         (plan/serving.py)
    plan.report    plots and the summary's inputs         (plan/report.py)

Each reads the config and this machine through one Context (plan/context.py). Snakemake reads the plan through
thin wildcard adapters (rules/common.smk) and the rules name the stage they ask; tests read it directly
(tests/test_plan.py), with no snakemake. Paths are the DAG's contract (plan/paths.py, ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable

from workflow_scripts.core import machine
from workflow_scripts.core.isa import local_isa
from workflow_scripts.plan.context import Context, Stage
from workflow_scripts.plan.data import DataPlanner
from workflow_scripts.plan.engines import EnginePlanner, model_job_code  # noqa: F401 (tests/test_py310.py)
from workflow_scripts.plan.export import ExportPlanner
from workflow_scripts.plan.measure import MeasurePlanner
from workflow_scripts.plan.paths import (  # noqa: F401 (the paths, where callers look for them)
    accuracy_path,
    bench_path,
    engine_path,
    onnx_part_path,
    onnx_path,
    outputs_path,
    picture_path,
)
from workflow_scripts.plan.quantize import QuantizePlanner
from workflow_scripts.plan.report import ReportPlanner
from workflow_scripts.plan.serving import ServingPlanner
from workflow_scripts.runners import BACKENDS, backend_available, backend_available_in
from workflow_scripts.tensorrt import engines as tensorrt_engines


class Plan:
    """Everything the DAG is built from, for one validated config on this machine.

    `available(backend)`, `gpu_name()`, `trt_builder()`, `available_in(python, backend)` and `machine_isa()` are
    what this machine has; tests pass their own.
    """

    def __init__(
        self,
        cfg: dict,
        available: Callable[[str], tuple[bool, str]] = backend_available,
        gpu_name: Callable[[], str] = machine.gpu_name,
        trt_builder: Callable[[], str | None] = tensorrt_engines.builder,
        available_in: Callable[[str, str], tuple[bool, str]] = backend_available_in,
        machine_isa: Callable[[], str] = local_isa,
    ) -> None:
        self.ctx = Context(cfg, available, gpu_name, available_in, machine_isa)
        self.datasets, self.models, self.targets = self.ctx.datasets, self.ctx.models, self.ctx.targets
        self.data = DataPlanner(self.ctx, self)
        self.export = ExportPlanner(self.ctx, self)
        self.quantize = QuantizePlanner(self.ctx, self)
        self.engines = EnginePlanner(self.ctx, self, trt_builder)
        self.measure = MeasurePlanner(self.ctx, self)
        self.serving = ServingPlanner(self.ctx, self)
        self.report = ReportPlanner(self.ctx, self)
        # the stage that builds each artifact kind a backend runs (runners.BackendSpec.artifact)
        self._artifact_stages: dict[str, Stage] = {
            "checkpoint": self.export,
            "onnx": self.export,
            "engine": self.engines,
        }

    def artifact_stage(self, backend: str) -> Stage:
        """The stage that builds what `backend` runs: it says where that file is, whether the backend's runs are
        timed and scored here, and why not."""
        return self._artifact_stages[BACKENDS[backend].artifact]

    def final_outputs(self) -> list[str]:
        return [
            "results/summary.md",
            *self.report.plot_outputs(),
            *self.quantize.calibration_cache_outputs(),
            *self.engines.outputs(),
            *self.serving.plot_outputs(),
        ]


# Plan.<name> → plan.<stage>.<method>: the flat names that callers outside the DAG use (tests, the scripts beside
# docs/measured/ results); the rules and rules/common.smk name the stage.
_DELEGATED = {
    "ctx": (
        "available job_python missing_interpreter available_on target_models here family imgsz dataset_dir "
        "dataset_kind val_annotations calib_annotations task models_of_task other_models scored input_name runs_on "
        "gpus container step_code model_code measure_code"
    ),
    "data": "datasets_of_kind split_settings episodes_settings videos_settings coco_settings",
    "export": "checkpoint_source model_settings export_code onnx_parts models_with_onnx_parts models_without_onnx_parts",
    "quantize": (
        "precision_problem calibration_settings calibration_cache_outputs quantize_settings qdq_ranges cpu_isa "
        "int8_scheme variant_isas fallback_source fallback_decisions fallback_decision_outputs fallback_inputs "
        "fallback_code fallback_settings fallback_outputs"
    ),
    "measure": (
        "runs scored_here bench_outputs accuracy_outputs picture_outputs model_artifact artifact_companions "
        "bench_trtexec=bench_timer baseline_accuracy reference_outputs baseline_label picture_code bench_settings "
        "accuracy_settings picture_settings unavailable_lines"
    ),
    "engines": (
        "engine_outputs=outputs engine_onnx=onnx engine_calibration=calibration engine_settings=settings timing_cache"
    ),
    "serving": (
        "serving_targets=targets served_here coserving serving_outputs=outputs serving_plot_outputs=plot_outputs "
        "serving_results=results triton_onnx triton_checkpoints triton_engines triton_engine_files triton_models "
        "triton_code triton_settings serving_settings=settings serving_accuracy_settings=accuracy_settings "
        "coserving_settings serving_bench_b1=bench_b1 serving_reference=reference"
    ),
    "report": "plot_outputs",
}


def _delegate(stage: str, method: str) -> Callable:
    def call(self: Plan, *args, **kwargs):
        return getattr(getattr(self, stage), method)(*args, **kwargs)

    call.__name__ = method
    call.__doc__ = f"plan.{stage}.{method}"
    return call


for _stage, _names in _DELEGATED.items():
    for _entry in _names.split():
        _name, _, _method = _entry.partition("=")
        setattr(Plan, _name, _delegate(_stage, _method or _name))
