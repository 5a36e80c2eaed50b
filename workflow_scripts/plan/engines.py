"""The engine stage: TensorRT engines, the one backend whose artifact is built per target (and per batch profile).

Everything TensorRT-specific about planning is here: which targets build engines and with what, what times them
(the TensorRT runner, or trtexec where the bindings are missing), whether their outputs can be scored, the line
the summary shows where they do not run, each engine's inputs and settings, and the engines Triton serves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from workflow_scripts.core.deps import code_files
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.models import FAMILIES
from workflow_scripts.plan import paths
from workflow_scripts.plan.context import Context, Stage
from workflow_scripts.power import SAMPLERS
from workflow_scripts.runners import BACKENDS
from workflow_scripts.tensorrt import engines as tensorrt_engines

BACKEND = "tensorrt"  # the backend that runs engines (BACKENDS[BACKEND].artifact == "engine")
# the steps whose jobs run a model on a target, under targets.<t>.python where one is set (rules: params.python)
MODEL_JOB_STEPS = ("bench", "accuracy", "pictures", "tensorrt.build_engine")


def model_job_code() -> tuple[str, ...]:
    """Every project file a TensorRT job under targets.<t>.python imports: the model-job steps, and what they import
    by name (the TensorRT runner, the detection families and task, every power sampler). tests/test_py310.py checks
    these stay importable on JetPack 6's Python 3.10 (and the other runners' syntax)."""
    by_name = [
        BACKENDS[BACKEND].module_path,
        *(f"workflow_scripts.models.{name}" for name, spec in FAMILIES.items() if spec.task == "detection"),
        "workflow_scripts.tasks.detection",
        *(spec.module for spec in SAMPLERS.values()),
    ]
    return code_files(*MODEL_JOB_STEPS, *by_name)


class EnginePlanner(Stage):
    """`builder()` is what builds engines in Snakemake's own environment ('python', 'trtexec' or None)."""

    def __init__(self, ctx: Context, plan, builder: Callable[[], str | None]) -> None:
        super().__init__(ctx, plan)
        self._builder = builder

    # -- what builds and times a target's engines ------------------------------------------------------
    @functools.cached_property
    def targets(self) -> list[str]:
        return [t for t in self.ctx.targets if BACKEND in self.ctx.targets[t]["backends"] and self.ctx.here(t)]

    @functools.cached_property
    def builder(self) -> str | None:
        """'python', 'trtexec' or None in Snakemake's own environment; looked up only when a target asks for TensorRT."""
        return self._builder() if self.targets else None

    def target_builder(self, target: str) -> str | None:
        """What builds a target's engines: 'python' where its interpreter has the TensorRT bindings, else as above."""
        if self.ctx.targets[target]["python"] and self.ctx.available_on(target, BACKEND)[0]:
            return "python"
        return self.builder

    def timed_by(self, target: str) -> str | None:
        """What times a target's engines: 'runner' (the TensorRT runner, under the target's interpreter), 'trtexec'
        (its GPU compute time, where the bindings are missing but trtexec is here), or None."""
        if target not in self.targets or self.ctx.missing_interpreter(target):
            return None
        if self.ctx.available_on(target, BACKEND)[0]:
            return "runner"
        return "trtexec" if self.target_builder(target) and tensorrt_engines.find_trtexec() else None

    # -- the engine as a backend's artifact (Stage's questions) -------------------------------------------
    def artifact(self, target: str, model: str, backend: str, precision: str, batch: str | None = None) -> str:
        """Engines are per batch profile: a bench job runs the engine of its batch; an accuracy job (no batch)
        the one of the target's largest batch, which the runner pads or splits to."""
        return paths.engine_path(target, model, precision, batch or max(self.ctx.targets[target]["batch_sizes"]))

    def companions(self, target: str, model: str, backend: str, precision: str) -> list[str]:
        return []

    def timed_here(self, target: str, backend: str) -> bool:
        return self.ctx.available_on(target, backend)[0] or bool(self.timer(target, backend))

    def scored_here(self, target: str, backend: str) -> bool:
        """Not for engines timed by trtexec (it keeps no outputs)."""
        return self.timed_by(target) != "trtexec"

    def timer(self, target: str, backend: str) -> str | None:
        """The trtexec a bench job times its engine with (the trtexec timing path), else None."""
        return tensorrt_engines.find_trtexec() if self.timed_by(target) == "trtexec" else None

    def unavailable_line(self, target: str, backend: str, why: str) -> str:
        if self.timed_by(target) == "trtexec":
            return (
                f"{target}: tensorrt: engines timed by trtexec (GPU compute time); accuracy not measured: {why}; "
                f"set targets.{target}.python to an interpreter with the TensorRT bindings and torch to score them"
            )
        if self.target_builder(target):
            return (
                f"{target}: tensorrt: engines built here with {self.target_builder(target)} but not timed (no "
                f"trtexec to time them either): {why}"
            )
        python = self.ctx.targets[target]["python"]
        return f"{target}: tensorrt: {tensorrt_engines.unavailable_reason()}" + (f"; {why}" if python else "")

    # -- build_engine ---------------------------------------------------------------------------------
    def outputs(self, targets: list[str] | None = None) -> list[str]:
        """Every engine of the TensorRT targets (none where TensorRT is not installed)."""
        return [
            paths.engine_path(t, m, p, n)
            for t in targets or self.targets
            if t in self.targets and self.target_builder(t) and not self.ctx.missing_interpreter(t)
            for m in self.ctx.target_models(t)
            if self.ctx.runs_on(m, BACKEND)
            for p in self.ctx.targets[t]["backends"][BACKEND]
            for n in self.ctx.targets[t]["batch_sizes"]
        ]

    def config(self, target: str, precision: str) -> dict:
        """targets.<t>.tensorrt, for an engine precision the target can build."""
        if BACKEND not in self.ctx.targets[target]["backends"]:
            raise PlanforgeError(f"target {target} has no tensorrt backend; add it to targets.{target}.backends")
        if precision not in BACKENDS[BACKEND].precisions:
            raise PlanforgeError(f"engine precision {precision!r} is not one of {list(BACKENDS[BACKEND].precisions)}")
        return self.ctx.targets[target]["tensorrt"]

    def onnx(self, target: str, model: str, precision: str, **_) -> str:
        """The ONNX an engine is built from (QDQ model for explicit INT8, else the FP32 export)."""
        return tensorrt_engines.onnx_input(model, precision, self.config(target, precision))

    def calibration(self, target: str, model: str, precision: str, **_) -> list[str]:
        """The calibration cache an implicit-INT8 engine reads (none otherwise)."""
        cache = tensorrt_engines.calibration_cache(model, precision, self.config(target, precision))
        return [cache] if cache else []

    def settings(self, target: str, model: str, precision: str, batch: str, **_) -> dict:
        return tensorrt_engines.engine_settings(
            model,
            precision,
            int(batch),
            self.ctx.imgsz(model),
            self.ctx.input_name(model),
            self.config(target, precision),
            tensorrt_engines.machine_identity(
                jetson=self.ctx.is_jetson(target), python=self.ctx.targets[target]["python"]
            ),
        )

    def timing_cache(self, target: str, precision: str, **_) -> str | None:
        if not self.config(target, precision)["timing_cache"]:
            return None
        return f"artifacts/engines/{target}/timing.cache"

    # -- engines served by Triton ---------------------------------------------------------------------
    def served(self, target: str, models: list[str]) -> dict[str, dict[str, dict]]:
        """{model: {precision: {"path", "max_batch"}}}: the planned engines of `models` a Triton repository serves.

        A dynamic batch profile serves the engine of the largest batch (max_batch_size = that batch); a static one
        the batch-1 engine (no batching in the engine).
        """
        t = self.ctx.targets[target]
        planned = set(self.outputs([target]))
        batch = max(t["batch_sizes"]) if t["tensorrt"]["batch_profile"] == "dynamic" else 1
        out: dict[str, dict[str, dict]] = {}
        for m in models:
            for p in t["backends"].get(BACKEND, []):
                path = paths.engine_path(target, m, p, batch)
                if path in planned:
                    out.setdefault(m, {})[p] = {"path": path, "max_batch": batch}
        return out
