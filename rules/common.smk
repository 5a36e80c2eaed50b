# Thin adapters between Snakemake's wildcards and the job plan (workflow_scripts/plan/jobs.py): one planner per
# stage (PLAN.data, .export, .quantize, .engines, .measure, .serving, .report) over one Context (PLAN.ctx).
import json
import re

from snakemake.exceptions import WorkflowError

from workflow_scripts import config as pfconfig
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import (
    CALIBRATION_METHODS,
    PRECISIONS,
    qdq_variants,
)
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.plan.settings import Settings
from workflow_scripts.runners import BACKENDS

try:
    PLAN = Plan(pfconfig.validate(config))
except PlanforgeError as exc:
    raise WorkflowError(f"planforge: {exc}") from None


def _one_of(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    model=_one_of(PLAN.models),
    target=_one_of(PLAN.targets),
    dataset=_one_of(PLAN.datasets),
    backend=_one_of(BACKENDS),
    precision=_one_of(PRECISIONS),
    calib=_one_of(CALIBRATION_METHODS),
    split="train|val|calib",
    batch="[0-9]+",


def as_json(value):
    if isinstance(value, Settings):
        return value.to_json()
    return json.dumps(value, sort_keys=True)


def _call(fn, wildcards, as_text=False):
    try:
        value = fn(**dict(wildcards.items()))
    except PlanforgeError as exc:
        raise WorkflowError(f"planforge: {exc}") from None
    return as_json(value) if as_text else value


def w(fn):
    """An input/params function: the plan's `fn` called with the job's wildcards as keywords."""
    return lambda wildcards: _call(fn, wildcards)


def settings(fn):
    """The plan's typed settings for the job, as the --settings JSON its CLI parses."""
    return lambda wildcards: _call(fn, wildcards, as_text=True)


def family(wildcards):
    return PLAN.ctx.family(wildcards.model)


def imgsz(wildcards):
    return PLAN.ctx.imgsz(wildcards.model)


def dataset_dir(wildcards):
    return PLAN.ctx.dataset_dir(wildcards.model)


def val_annotations(wildcards):
    return PLAN.ctx.val_annotations(wildcards.model)


def model_code(step):
    return lambda wildcards: PLAN.ctx.model_code(step, wildcards.model)


def measure_code(step):
    return lambda wildcards: PLAN.ctx.measure_code(
        step, wildcards.target, wildcards.model, wildcards.backend
    )


def gpus(wildcards):
    return PLAN.ctx.gpus(wildcards.target)


def target_container(wildcards):
    """The target's pinned image (targets.<t>.container) for --sdm apptainer; none: the host environment."""
    return PLAN.ctx.container(wildcards.target)


def flag(name, fn):
    """`name value` when the plan gives a value for the job, else nothing."""
    return lambda wildcards: f"{name} {v}" if (v := _call(fn, wildcards)) else ""


def optional_arg(flag, key):
    """`--flag path` when the job has that optional input, else nothing."""
    return lambda wildcards, input: (
        f"{flag} {getattr(input, key)}" if getattr(input, key) else ""
    )


def exclusive_threads():
    """Timing jobs take every core Snakemake was given, so nothing runs beside them."""
    try:
        return max(1, workflow.cores or 1)
    except WorkflowError:  # --report and other modes run no job and set no cores
        return 1


def int8_fallback_rows(kind):
    """The bench or accuracy rows of the fallback variants their checkpoint found needed (read once it has run)."""

    def decision(model, qdq):
        with open(
            checkpoints.int8_fallback.get(model=model, qdq=qdq).output.report
        ) as f:
            return json.load(f)

    return lambda wildcards: PLAN.quantize.fallback_outputs(kind, decision)


def target_rows(kind):
    """A target's bench or accuracy rows for its plots: the planned ones and its INT8 fallback rows where needed."""
    fallback = int8_fallback_rows(kind)
    planned = (
        PLAN.measure.bench_outputs if kind == "bench" else PLAN.measure.accuracy_outputs
    )

    def rows(wildcards):
        mine = f"results/{wildcards.target}/"
        return planned([wildcards.target]) + [
            p for p in fallback(wildcards) if p.startswith(mine)
        ]

    return rows
