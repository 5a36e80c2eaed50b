"""Tasks: what a kind of model needs from the pipeline, whatever its family or backend.

A task brings its dataset kind, its accuracy metric and gate, its timed unit and its serving shape.
Families declare their task (workflow_scripts/models: FamilySpec.task); the accuracy step, the summary
and the plots read the task's metric, never a metric name of their own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from workflow_scripts.core.registry import Registry, load_plugins


@dataclass(frozen=True)
class TaskSpec:
    module: str  # provides `evaluate(...)` (the accuracy loop) and the task's data helpers
    dataset: str  # what its data is
    dataset_kinds: tuple[str, ...]  # datasets.<d>.kind values it reads
    metric: str  # the accuracy JSON key its gate compares with the baseline's
    metric_label: str
    unit: str  # what one timed call processes
    serving: str  # how Triton serves it
    # accuracy table columns beyond model/backend/precision: JSON key → (title, digits)
    columns: tuple[tuple[str, str, int], ...] = ()
    higher_is_better: bool = True


TASKS: Registry[TaskSpec] = Registry("task")
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
        columns=(
            ("images", "images", 0),
            ("map50_95", "mAP50-95", 4),
            ("map50", "mAP50", 4),
            ("ap_small", "AP small", 4),
            ("ap_medium", "AP medium", 4),
            ("ap_large", "AP large", 4),
        ),
    ),
)


def get_task(name: str) -> ModuleType:
    return importlib.import_module(TASKS[name].module)


def gate(record: dict, baseline: dict | None, threshold: float) -> dict:
    """Add the baseline, the ratio of the task's metric to the baseline's, and the verdict (ratio ≥ threshold)."""
    spec = TASKS[record["task"]]
    base = record if baseline is None else baseline
    value, base_value = record[spec.metric], base[spec.metric]
    if spec.higher_is_better:
        ratio = value / base_value if base_value else None
    else:  # an error: the baseline's over this one's (1.0 = as good as the baseline)
        ratio = base_value / value if value else (1.0 if not base_value else None)
    record["baseline"] = {
        "backend": base["backend"],
        "precision": base["precision"],
        spec.metric: base_value,
        "is_self": baseline is None,
    }
    record["ratio_to_baseline"] = round(ratio, 5) if ratio is not None else None
    record["gate"] = {
        "metric": spec.metric,
        "threshold": threshold,
        "passed": bool(ratio is not None and ratio >= threshold),
    }
    return record


load_plugins()  # last: a plugin module imports the names above
