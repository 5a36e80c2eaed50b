"""The quantize stage: calibration ranges and TensorRT caches, QDQ variants (the target's instruction set picks
the scheme), and the float fallback of an INT8 row that misses the gate.

The plan's one reader of precision names: what a precision calibrates with, its QDQ variant, its fallback.
"""

from __future__ import annotations

from collections.abc import Callable

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.isa import ISAS, JETSON_ISA
from workflow_scripts.core.precisions import CALIBRATION_METHODS, INT8_SCHEMES, parse_variant
from workflow_scripts.core.precisions import parse as parse_precision
from workflow_scripts.plan import paths
from workflow_scripts.plan import settings as S
from workflow_scripts.plan.context import Stage
from workflow_scripts.runners import BACKENDS
from workflow_scripts.tasks import TASKS


class QuantizePlanner(Stage):
    # -- which precisions a model can run at ------------------------------------------------------------
    def precision_problem(self, model: str, precision: str) -> str | None:
        """Why a model cannot run at a precision whatever the backend, or None: static INT8 calibrates on
        images of a calib split, which only tasks with calibration images have (Pi0's episodes have none)."""
        task = self.ctx.task(model)
        if parse_precision(precision).calibration and not TASKS[task].calibration_images:
            return f"{precision} calibrates on images of a calib split; task {task} has none (its data: {TASKS[task].dataset})"
        return None

    def onnx_variant(self, target: str, precision: str) -> str | None:
        """A static INT8 precision's QDQ model: the variant of the target's INT8 scheme; None for other precisions."""
        spec = parse_precision(precision)
        return spec.qdq_variant(self.int8_scheme(target)) if spec.calibration else None

    # -- calibrate, trt_calibration_cache -------------------------------------------------------------------
    def calibration_settings(self, calib: str, **_) -> S.CalibrationSettings:
        c = self.ctx.cfg["quantize"]["calibration"]
        keys = CALIBRATION_METHODS[calib].settings
        return S.CalibrationSettings(**{k: (c[k] if k in keys else None) for k in ("images", "num_bins", "percentile")})

    def calibration_cache_outputs(self) -> list[str]:
        """A TensorRT calibration cache per model and INT8 method that some target measures."""
        methods = {
            (m, parse_precision(p).calibration)
            for t in self.ctx.targets
            for m, _, p in self.plan.measure.runs(t)
            if parse_precision(p).calibration
        }
        return [f"artifacts/calib/{m}/{c}.cache" for m, c in sorted(methods)]

    def trt_version(self) -> int:
        """The TensorRT version a calibration cache's header names (quantize.trt_version)."""
        return self.ctx.cfg["quantize"]["trt_version"]

    # -- quantize_onnx --------------------------------------------------------------------------------
    def quantize_settings(self, model: str, qdq: str, **_) -> S.QuantizeSettings:
        """A QDQ variant's settings: its scheme's weight type, and the instruction sets of the targets that run it
        (so a change of a target's cpu_isa remakes the model even where the scheme stays)."""
        q, v = self.ctx.cfg["quantize"], parse_variant(qdq)
        return S.QuantizeSettings(
            activation_type=q["activation_type"],
            weight_type=INT8_SCHEMES[v.scheme].weight_type,
            per_channel=q["per_channel"],
            reduce_range=q["reduce_range"],
            keep_float=self.ctx.models[model]["keep_float"],
            scheme=v.scheme,
            isa=self.variant_isas(model, v.plain),
        )

    @staticmethod
    def method(qdq: str, **_) -> str:
        """The calibration method of a QDQ variant."""
        return parse_variant(qdq).calibration

    def qdq_ranges(self, model: str, qdq: str, **_) -> str:
        return f"artifacts/calib/{model}/{parse_variant(qdq).calibration}.ranges.json"

    # -- the target's instruction set picks the QDQ scheme ---------------------------------------------------
    def cpu_isa(self, target: str) -> str:
        """targets.<t>.cpu_isa, else dotprod for a Jetson, else this machine's (core.isa)."""
        t = self.ctx.targets[target]
        if t["cpu_isa"]:
            return t["cpu_isa"]
        return JETSON_ISA if self.ctx.is_jetson(target) else self.ctx.machine_isa()

    def int8_scheme(self, target: str) -> str:
        """u8s8, or u8u8 where the target CPU's u8s8 kernels saturate; GPUs run no such kernels (u8s8)."""
        if self.ctx.targets[target]["device"].startswith("cuda"):
            return "u8s8"
        return ISAS[self.cpu_isa(target)].int8_scheme

    def int8_runs(self, target: str) -> list[tuple[str, str, str, str]]:
        """(model, backend, plain int8 precision, its QDQ variant) of the target's ONNX-backend INT8 runs (a listed
        fallback precision counts as its plain one: its decision reads the plain row)."""
        found = []
        for m, b, p in self.plan.measure.runs(target):
            spec = parse_precision(p)
            if BACKENDS[b].artifact == "onnx" and spec.calibration:
                plain = parse_precision(spec.plain)
                found.append((m, b, plain.name, plain.qdq_variant(self.int8_scheme(target))))
        return list(dict.fromkeys(found))

    def variant_isas(self, model: str, variant: str) -> dict[str, str]:
        """target → cpu_isa of the targets whose runs read this QDQ variant (in the quantize job's params)."""
        return {
            t: self.cpu_isa(t)
            for t in self.ctx.targets
            for m, _, _, v in self.int8_runs(t)
            if (m, v) == (model, variant)
        }

    # -- int8_fallback: a missed gate gets a float fallback ---------------------------------------------------
    def _decides(self, target: str, model: str, backend: str) -> bool:
        return self.ctx.scored(model) and self.plan.measure.scored_here(target, backend)

    def fallback_source(self, model: str, qdq: str) -> tuple[str, str, str]:
        """(target, backend, precision) whose accuracy row decides a QDQ variant's fallback, and whose settings the
        search measures with: the first scored run of that variant, in config order."""
        for t in self.ctx.targets:
            for m, b, p, v in self.int8_runs(t):
                if (m, v) == (model, qdq) and self._decides(t, m, b):
                    return t, b, p
        raise PlanforgeError(f"no target runs {model} as {qdq} with accuracy on: nothing to decide a fallback from")

    def fallback_decisions(self) -> list[tuple[str, str]]:
        """(model, plain QDQ variant) of every scored INT8 row: each gets a fallback decision (rules/quantize.smk)."""
        found = [
            (m, v)
            for t in self.ctx.targets
            for m, b, _, v in self.int8_runs(t)
            if self._decides(t, m, b) and TASKS[self.ctx.task(m)].calibration_images
        ]
        return list(dict.fromkeys(found))

    def fallback_decision_outputs(self) -> list[str]:
        """Every fallback decision's report: the summary needs them all, so a stale decision is remade (and may then
        add or drop its rows) even where no row of it is planned."""
        return [f"artifacts/onnx/{m}/{v}_fb.json" for m, v in self.fallback_decisions()]

    def fallback_inputs(self, model: str, qdq: str, **_) -> dict[str, str | list[str]]:
        """What a fallback decision reads: the row that decides it and its baseline (besides the models)."""
        t, b, p = self.fallback_source(model, qdq)
        return {
            "accuracy": paths.accuracy_path(t, model, b, p),
            "baseline": self.plan.measure.baseline_accuracy(t, model, b, p),
        }

    def fallback_code(self, model: str, qdq: str, **_) -> list[str]:
        """A fallback search's code: it quantizes and scores on the deciding row's backend."""
        return self.ctx.run_code("sensitivity", model, self.fallback_source(model, qdq)[1])

    def fallback_settings(self, model: str, qdq: str, **_) -> S.FallbackSettings:
        t, b, p = self.fallback_source(model, qdq)
        fb = self.ctx.cfg["quantize"]["fallback"]
        return S.FallbackSettings(
            target=t,
            backend=b,
            quantize=self.quantize_settings(model, qdq).as_dict(),
            accuracy=self.plan.measure.accuracy_settings(t, model, b).as_dict(),
            rank_images=fb["rank_images"],
            max_runs=fb["max_runs"],
        )

    def fallback_outputs(self, kind: str, decision: Callable[[str, str], dict]) -> list[str]:
        """The bench ('bench') or accuracy ('accuracy') rows of the fallback variants a decision found needed.

        `decision(model, qdq)` is the decision's JSON (in Snakemake: read once its checkpoint has run). A row goes
        to the target and backend of the INT8 run it was measured from, and to others of the same variant and
        backend; a fallback precision a target lists itself is planned like any precision (bench_outputs)."""
        decided = set(self.fallback_decisions())
        out = []
        for t in self.ctx.targets:
            planned = set(self.plan.measure.runs(t))
            for m, b, p, v in self.int8_runs(t):
                fb = parse_precision(p).fallback_variant
                if (m, v) not in decided or (m, b, fb) in planned:
                    continue
                d = decision(m, v)
                if not d["needed"] or d["backend"] != b:
                    continue
                if kind == "bench":
                    out += [paths.bench_path(t, m, b, fb, n) for n in self.ctx.targets[t]["batch_sizes"]]
                else:
                    out.append(paths.accuracy_path(t, m, b, fb))
        return out
