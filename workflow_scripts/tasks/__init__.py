"""Tasks: what a kind of model needs from the pipeline, whatever its family or backend.

A task brings its dataset kind, its accuracy metric and gate, its timed unit and its serving hooks.
Families declare their task (workflow_scripts/models: FamilySpec.task); the accuracy step, the summary
and the plots read the task's metric, never a metric name of their own; the serving jobs and the summary's
serving lines call the task's hooks (`ServingHooks`), never a branch on the task's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from workflow_scripts.core.registry import Registry, load_plugins


@dataclass(frozen=True)
class ServingHooks:
    """Where a task's Triton serving lives, each as "module:name" (tasks never import serving: `serving.hooks`
    resolves them when a serving job or the summary asks)."""

    # the served-model class: what the repository holds for one model of the task (config.pbtxt, model.py, files),
    # which Triton models a job loads for it (`serving/served.py`)
    model: str
    # the task's part of the perf_analyzer sweep, a `serving.perf.TaskSweep`: the in-process reference, the input
    # data, the comparison; `serving.perf.run_sweep` is the one loop every task shares
    sweep: str
    # the served-accuracy check: (AccuracyJob) -> Checked (the record, what differs from in-process, its line)
    accuracy: str
    # the summary's lines for one sweep record and its served-accuracy record (or None)
    summary: str


@dataclass(frozen=True)
class TaskSpec:
    module: str  # provides `evaluate(...)` (the accuracy loop) and the task's data helpers
    dataset: str  # what its data is
    dataset_kinds: tuple[str, ...]  # datasets.<d>.kind values it reads
    metric: str  # the accuracy JSON key its gate compares with the baseline's
    metric_label: str
    unit: str  # what one timed call processes
    serving: str  # how Triton serves it
    served: ServingHooks  # the code that serves it
    throughput_unit: str = "img/s"  # the summary's unit of throughput (items/s of `unit`)
    timer_note: str = ""  # the summary's line on what its timers include, beyond the shared ones
    # accuracy table columns beyond model/backend/precision: JSON key → (title, digits)
    columns: tuple[tuple[str, str, int], ...] = ()
    # True: a score, gated as a ratio to the baseline's (≥ accuracy.gate). False: an error measured against
    # the baseline's own outputs (0 for the baseline itself), gated absolutely (≤ accuracy.error_tolerance)
    higher_is_better: bool = True
    pictures: bool = False  # its module draws a picture of a run's predictions (`picture`, the pictures step)
    # its dataset has calibration images (a calib split of COCO-format images): static INT8 (int8_<method>) and
    # TensorRT calibration caches read them. Without: those precisions are listed as not run, with the reason
    calibration_images: bool = False


TASKS: Registry[TaskSpec] = Registry("task")
TASKS.register(
    "vla",
    TaskSpec(
        module="workflow_scripts.tasks.vla",
        dataset="episodes: camera images, robot state, prompt token ids, noise",
        dataset_kinds=("episodes",),
        metric="action_mse",
        metric_label="action MSE vs FP32",
        unit="one action chunk (prefix + denoising steps)",
        serving="python model (the family's own chunk), dynamic batching, ACTIONS [50, 32]",
        served=ServingHooks(
            model="workflow_scripts.serving.served:ChunkModel",
            sweep="workflow_scripts.serving.vla:VlaSweep",
            accuracy="workflow_scripts.serving.vla:served_accuracy",
            summary="workflow_scripts.serving.vla:summary_lines",
        ),
        throughput_unit="chunks/s",
        columns=(
            ("episodes", "episodes", 0),
            ("action_mse", "action MSE", 6),
            ("action_max_abs", "max abs", 5),
            ("action_rel_mse", "MSE / var", 6),
        ),
        higher_is_better=False,
    ),
)
TASKS.register(
    "tracking",
    TaskSpec(
        module="workflow_scripts.tasks.tracking",
        dataset="videos: frame sequences with the target's box on every frame",
        dataset_kinds=("videos",),
        metric="auc",
        metric_label="success AUC",
        unit="one frame of each live sequence (prompt frame timed apart)",
        serving="python model, sequence batching (state per correlation id)",
        served=ServingHooks(
            model="workflow_scripts.serving.served:SequenceModel",
            sweep="workflow_scripts.serving.tracking:TrackingSweep",
            accuracy="workflow_scripts.serving.tracking:served_accuracy",
            summary="workflow_scripts.serving.tracking:summary_lines",
        ),
        throughput_unit="frames/s",
        timer_note="- **tracking**: one call = one frame of each live sequence (batch = live sequences), host clock "
        "around the tracker's `track` after its prompt frame; **prompt frame ms**: `start` with the box, "
        "timed apart; throughput = frames/s over the live sequences.",
        columns=(
            ("sequences", "sequences", 0),
            ("auc", "success AUC", 4),
            ("precision_20", "precision@20px", 4),
            ("norm_precision", "norm. precision@0.2", 4),
        ),
    ),
)
TASKS.register(
    "detection",
    TaskSpec(
        module="workflow_scripts.tasks.detection",
        dataset="COCO-format images with boxes",
        dataset_kinds=("synthetic", "coco"),
        metric="map50_95",
        metric_label="mAP50-95",
        unit="an image batch",
        serving="ensemble: preprocess → model → postprocess",
        served=ServingHooks(
            model="workflow_scripts.serving.served:Ensemble",
            sweep="workflow_scripts.serving.detection:DetectionSweep",
            accuracy="workflow_scripts.serving.detection:served_accuracy",
            summary="workflow_scripts.serving.detection:summary_lines",
        ),
        columns=(
            ("images", "images", 0),
            ("map50_95", "mAP50-95", 4),
            ("map50", "mAP50", 4),
            ("ap_small", "AP small", 4),
            ("ap_medium", "AP medium", 4),
            ("ap_large", "AP large", 4),
        ),
        pictures=True,
        calibration_images=True,
    ),
)


def get_task(name: str) -> ModuleType:
    return importlib.import_module(TASKS[name].module)


DEFAULT_TASK = "detection"


def task_of(record: dict) -> str:
    """The task a result record (accuracy, serving) belongs to: its `task`; detection where it has none (records
    written before tasks existed, and the detection serving records, which never carried one)."""
    return record.get("task") or DEFAULT_TASK


def gate(record: dict, baseline: dict | None, threshold: float, tolerance: float | None = None) -> dict:
    """Add the baseline and the verdict.

    A score (higher_is_better): the ratio of this metric to the baseline's, passed when ≥ `threshold`.
    An error (vla's action MSE against the baseline's own actions): the baseline's value is 0 by
    construction, so a ratio to it means nothing (0/x fails every other run, x/0 is undefined); the gate is
    absolute instead: passed when the error ≤ `tolerance` (accuracy.error_tolerance), recorded in the JSON.
    """
    spec = TASKS[record["task"]]
    base = record if baseline is None else baseline
    value, base_value = record[spec.metric], base[spec.metric]
    record["baseline"] = {
        "backend": base["backend"],
        "precision": base["precision"],
        spec.metric: base_value,
        "is_self": baseline is None,
    }
    if spec.higher_is_better:
        ratio = value / base_value if base_value else None
        record["ratio_to_baseline"] = round(ratio, 5) if ratio is not None else None
        record["gate"] = {
            "metric": spec.metric,
            "threshold": threshold,
            "passed": bool(ratio is not None and ratio >= threshold),
        }
        return record
    if tolerance is None:
        raise ValueError(f"task {record['task']}: an error metric needs a tolerance")
    record["ratio_to_baseline"] = None
    record["gate"] = {
        "metric": spec.metric,
        "rule": f"{spec.metric} <= tolerance (absolute, against the baseline's outputs)",
        "tolerance": tolerance,
        "passed": bool(value is not None and value <= tolerance),
    }
    return record


load_plugins()  # last: a plugin module imports the names above
