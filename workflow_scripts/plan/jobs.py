"""The job plan of a validated config: the runs, the paths, the outputs per target, what is unavailable
here and why, and each rule's typed settings. Snakemake reads it through thin wildcard adapters
(rules/common.smk); tests read it directly (tests/test_plan.py), with no snakemake.

Paths are the DAG's contract (see ARCHITECTURE.md); they are spelled only here and in the rules' outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable, Iterator

from workflow_scripts.core import machine
from workflow_scripts.core.deps import code_files
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.isa import ISAS, JETSON_ISA, local_isa
from workflow_scripts.core.precisions import CALIBRATION_METHODS, INT8_SCHEMES, parse_variant
from workflow_scripts.core.precisions import parse as parse_precision
from workflow_scripts.models import FAMILIES, checkpoint_inputs, family_files, family_settings, get_family
from workflow_scripts.plan import settings as S
from workflow_scripts.power import SAMPLERS
from workflow_scripts.runners import BACKENDS, backend_available, backend_available_in, runner_file
from workflow_scripts.tasks import TASKS
from workflow_scripts.tasks.vla import EPISODE_DEFAULTS
from workflow_scripts.tensorrt import engines as trt

PLOT_KINDS = ("latency_vs_batch", "accuracy_vs_latency")
JETSON_SAMPLERS = ("tegrastats", "jtop")  # power samplers that mean "this target is a Jetson" (power mode in engines)
# the steps whose jobs run a model on a target, under targets.<t>.python where one is set (rules: params.python)
MODEL_JOB_STEPS = ("bench", "accuracy", "pictures", "tensorrt.build_engine")


def model_job_code() -> tuple[str, ...]:
    """Every project file a TensorRT job under targets.<t>.python imports: the model-job steps, and what they import
    by name (the TensorRT runner, the detection families and task, every power sampler). tests/test_py310.py checks
    these stay importable on JetPack 6's Python 3.10 (and the other runners' syntax)."""
    by_name = [
        BACKENDS["tensorrt"].module_path,
        *(f"workflow_scripts.models.{name}" for name, spec in FAMILIES.items() if spec.task == "detection"),
        "workflow_scripts.tasks.detection",
        *(spec.module for spec in SAMPLERS.values()),
    ]
    return code_files(*MODEL_JOB_STEPS, *by_name)


def bench_path(target: str, model: str, backend: str, precision: str, batch: int | str) -> str:
    return f"results/{target}/bench/{model}/{backend}_{precision}_b{batch}.json"


def accuracy_path(target: str, model: str, backend: str, precision: str) -> str:
    return f"results/{target}/accuracy/{model}/{backend}_{precision}.json"


def picture_path(target: str, model: str, backend: str, precision: str) -> str:
    return f"results/{target}/pictures/{model}/{backend}_{precision}.png"


def outputs_path(target: str, model: str, backend: str, precision: str) -> str:
    """An accuracy job's saved outputs, beside its JSON (vla: the action chunks; the baseline's are the reference)."""
    return f"results/{target}/accuracy/{model}/{backend}_{precision}.actions.npz"


def engine_path(target: str, model: str, precision: str, batch: int | str) -> str:
    return f"artifacts/engines/{target}/{model}/{precision}_b{batch}.plan"


def onnx_path(model: str, variant: str) -> str:
    return f"artifacts/onnx/{model}/{variant}.onnx"


def onnx_part_path(model: str, part: str) -> str:
    """A graph that travels beside a model's fp32.onnx (FamilySpec.onnx_parts: SAMURAI's parts)."""
    return f"artifacts/onnx/{model}/fp32.{part}.onnx"


class Plan:
    """Everything the DAG is built from, for one validated config on this machine.

    `available(backend)` and `gpu_name()` are what this machine has; tests pass their own.
    """

    def __init__(
        self,
        cfg: dict,
        available: Callable[[str], tuple[bool, str]] = backend_available,
        gpu_name: Callable[[], str] = machine.gpu_name,
        trt_builder: Callable[[], str | None] = trt.builder,
        available_in: Callable[[str, str], tuple[bool, str]] = backend_available_in,
        machine_isa: Callable[[], str] = local_isa,
    ) -> None:
        self.cfg = cfg
        self.datasets, self.models, self.targets = cfg["datasets"], cfg["models"], cfg["targets"]
        self.baseline = cfg["accuracy"]["baseline"]
        self.serving_cfg = cfg["serving"]
        self._available = available
        self._gpu_name = gpu_name
        self._trt_builder = trt_builder
        self._availability: dict[str, tuple[bool, str]] = {}
        self._available_in = available_in
        self._availability_in: dict[tuple[str, str], tuple[bool, str]] = {}
        self._machine_isa = machine_isa

    # -- what this machine runs -----------------------------------------------------------------------
    def available(self, backend: str) -> tuple[bool, str]:
        """Whether a backend is installed here, and why not (asked once per backend)."""
        if backend not in self._availability:
            self._availability[backend] = self._available(backend)
        return self._availability[backend]

    def job_python(self, target: str, **_) -> str:
        """The interpreter a target's model jobs run under: targets.<t>.python (e.g. JetPack's /usr/bin/python3,
        which has the TensorRT bindings), else `python` (Snakemake's environment)."""
        return self.targets[target]["python"] or "python"

    def missing_interpreter(self, target: str) -> str | None:
        """The target's `python` where it names no executable (its jobs are then not planned), else None."""
        python = self.targets[target]["python"]
        return python if python and shutil.which(python) is None else None

    def available_on(self, target: str, backend: str) -> tuple[bool, str]:
        """Whether a backend runs under the target's interpreter (asked of that interpreter once), and why not."""
        python = self.targets[target]["python"]
        if python is None:
            return self.available(backend)
        if (python, backend) not in self._availability_in:
            self._availability_in[python, backend] = self._available_in(python, backend)
        return self._availability_in[python, backend]

    def target_models(self, target: str) -> list[str]:
        """The models a target measures: targets.<t>.models where given (each kind at its own batches), else all."""
        names = self.targets[target]["models"]
        return [m for m in self.models if names is None or m in names]

    def here(self, target: str) -> bool:
        """A target names the machine it is for (targets.<t>.machine); on any other it is skipped."""
        pattern = self.targets[target]["machine"]
        return pattern is None or machine.matches(pattern, self._gpu_name())

    @functools.cached_property
    def trt_targets(self) -> list[str]:
        return [t for t in self.targets if "tensorrt" in self.targets[t]["backends"] and self.here(t)]

    @functools.cached_property
    def trt_builder(self) -> str | None:
        """'python', 'trtexec' or None in Snakemake's own environment; looked up only when a target asks for TensorRT."""
        return self._trt_builder() if self.trt_targets else None

    def target_trt_builder(self, target: str) -> str | None:
        """What builds a target's engines: 'python' where its interpreter has the TensorRT bindings, else as above."""
        if self.targets[target]["python"] and self.available_on(target, "tensorrt")[0]:
            return "python"
        return self.trt_builder

    def trt_timer(self, target: str) -> str | None:
        """What times a target's engines: 'runner' (the TensorRT runner, under the target's interpreter), 'trtexec'
        (its GPU compute time, where the bindings are missing but trtexec is here), or None."""
        if target not in self.trt_targets or self.missing_interpreter(target):
            return None
        if self.available_on(target, "tensorrt")[0]:
            return "runner"
        return "trtexec" if self.target_trt_builder(target) and trt.find_trtexec() else None

    def scored_here(self, target: str, backend: str) -> bool:
        """Whether a run's outputs can be scored: not for engines timed by trtexec (it keeps no outputs)."""
        return not (backend == "tensorrt" and self.trt_timer(target) == "trtexec")

    def bench_trtexec(self, target: str, backend: str, **_) -> str | None:
        """The trtexec a bench job times its engine with (the trtexec timing path), else None."""
        return trt.find_trtexec() if backend == "tensorrt" and self.trt_timer(target) == "trtexec" else None

    # -- models ---------------------------------------------------------------------------------------
    def family(self, model: str) -> str:
        return self.models[model]["family"]

    def imgsz(self, model: str) -> int:
        return self.models[model]["imgsz"]

    def dataset_dir(self, model: str) -> str:
        return f"artifacts/data/{self.models[model]['dataset']}"

    def dataset_kind(self, model: str) -> str:
        return self.datasets[self.models[model]["dataset"]]["kind"]

    def val_annotations(self, model: str) -> str:
        """The val split's index: COCO annotations, or the episodes / videos index (kinds episodes, videos)."""
        if self.dataset_kind(model) in ("episodes", "videos"):
            return f"{self.dataset_dir(model)}/{self.dataset_kind(model)}_val.json"
        return f"{self.dataset_dir(model)}/instances_val.json"

    def task(self, model: str) -> str:
        return FAMILIES[self.family(model)].task

    def models_of_task(self, task: str) -> list[str]:
        return [m for m in self.models if self.task(m) == task]

    def other_models(self, task: str) -> list[str]:
        return [m for m in self.models if self.task(m) != task]

    def calib_annotations(self, model: str) -> str:
        return f"{self.dataset_dir(model)}/instances_calib.json"

    def scored(self, model: str) -> bool:
        return self.models[model]["accuracy"]

    def checkpoint_source(self, model: str) -> list[str]:
        """The configured checkpoint's local files (none for an architecture name or a hub id)."""
        m = self.models[model]
        return checkpoint_inputs(m["family"], m["checkpoint"])

    def model_settings(self, model: str, **_) -> dict:
        """What the prepared checkpoint applies beyond its source (D-FINE's num_queries); {} for none.

        In the prepare rule's params: a change remakes that model's checkpoint, and so everything downstream of it.
        """
        return family_settings(self.family(model), self.models[model])

    def input_name(self, model: str) -> str:
        """The model's input tensor name (ONNX and engines), as its family declares it."""
        return get_family(self.family(model)).INPUT_NAME

    def served_models(self) -> list[str]:
        return [m for m in self.models if FAMILIES[self.family(m)].served]

    # -- runs and outputs ------------------------------------------------------------------------------
    def runs(self, target: str) -> Iterator[tuple[str, str, str]]:
        """(model, backend, precision) triples a target measures, available backends only."""
        for model in self.target_models(target) if self.here(target) else ():
            for backend, precisions in self.targets[target]["backends"].items():
                timed = self.available_on(target, backend)[0] or self.bench_trtexec(target, backend)
                if timed and self.runs_on(model, backend):
                    for precision in precisions:
                        if self.precision_problem(model, precision) is None:
                            yield model, backend, precision

    def precision_problem(self, model: str, precision: str) -> str | None:
        """Why a model cannot run at a precision whatever the backend, or None: static INT8 calibrates on
        images of a calib split, which only tasks with calibration images have (Pi0's episodes have none)."""
        task = FAMILIES[self.family(model)].task
        if parse_precision(precision).calibration and not TASKS[task].calibration_images:
            return f"{precision} calibrates on images of a calib split; task {task} has none (its data: {TASKS[task].dataset})"
        return None

    def runs_on(self, model: str, backend: str) -> bool:
        """Whether the model's family makes the artifact the backend reads (Pi0: its torch module only)."""
        fam = FAMILIES[self.family(model)]
        return fam.backend_problem(self.family(model), BACKENDS[backend].artifact, backend) is None

    def bench_outputs(self, targets: list[str] | None = None) -> list[str]:
        return [
            bench_path(t, m, b, p, n)
            for t in targets or self.targets
            for m, b, p in self.runs(t)
            for n in self.targets[t]["batch_sizes"]
        ]

    def accuracy_outputs(self, targets: list[str] | None = None) -> list[str]:
        out = []
        base = (self.baseline["backend"], self.baseline["precision"])
        for t in targets or self.targets:
            triples = [r for r in self.runs(t) if self.scored(r[0]) and self.scored_here(t, r[1])]
            # a target with nothing to measure here (e.g. only TensorRT, not installed) gets no baseline job
            for m in self.target_models(t) if triples else ():
                if self.scored(m) and self.available_on(t, base[0])[0] and self.runs_on(m, base[0]):
                    triples.append((m, *base))
            out += [accuracy_path(t, m, b, p) for m, b, p in dict.fromkeys(triples)]
        return out

    def picture_outputs(self, targets: list[str] | None = None) -> list[str]:
        """A picture per run of a scored model whose task draws them (random weights find nothing worth seeing)."""
        if not self.cfg["pictures"]["images"]:
            return []
        return [
            picture_path(t, m, b, p)
            for t in targets or self.targets
            for m, b, p in self.runs(t)
            if self.scored(m) and self.scored_here(t, b) and TASKS[FAMILIES[self.family(m)].task].pictures
        ]

    def engine_outputs(self, targets: list[str] | None = None) -> list[str]:
        """Every engine of the TensorRT targets (none where TensorRT is not installed)."""
        return [
            engine_path(t, m, p, n)
            for t in targets or self.trt_targets
            if t in self.trt_targets and self.target_trt_builder(t) and not self.missing_interpreter(t)
            for m in self.target_models(t)
            if self.runs_on(m, "tensorrt")
            for p in self.targets[t]["backends"]["tensorrt"]
            for n in self.targets[t]["batch_sizes"]
        ]

    def plot_outputs(self) -> list[str]:
        return [f"results/plots/{t}_{k}.png" for t in self.targets for k in PLOT_KINDS] + [
            f"results/plots/{t}_latency_vs_power.png" for t in self.targets if self.targets[t]["power"] != "none"
        ]

    def calibration_cache_outputs(self) -> list[str]:
        """A TensorRT calibration cache per model and INT8 method that some target measures."""
        methods = {
            (m, parse_precision(p).calibration)
            for t in self.targets
            for m, _, p in self.runs(t)
            if parse_precision(p).calibration
        }
        return [f"artifacts/calib/{m}/{c}.cache" for m, c in sorted(methods)]

    def final_outputs(self) -> list[str]:
        return [
            "results/summary.md",
            *self.plot_outputs(),
            *self.calibration_cache_outputs(),
            *self.engine_outputs(),
            *self.serving_plot_outputs(),
        ]

    def unavailable_lines(self) -> list[str]:
        """One line per target and backend that cannot run here (shown in the summary)."""
        lines = []
        for t, spec in self.targets.items():
            if not self.here(t):
                lines.append(
                    f"{t}: a target for a machine matching {spec['machine']!r}; this one is {self._gpu_name()!r}"
                )
                continue
            if self.missing_interpreter(t):
                lines.append(
                    f"{t}: targets.{t}.python {spec['python']!r}: no such interpreter, so none of its jobs run; "
                    "create it (README: On a Jetson) or fix the path"
                )
                continue
            for b in spec["backends"]:
                ok, why = self.available_on(t, b)
                if spec["python"] and not ok:  # "…(missing Python module tensorrt for Python 3.10.12)": say whose
                    why = f"{why.split(' (', 1)[-1].rstrip(')')} under targets.{t}.python {spec['python']}"
                if ok:  # installed: say which models it still does not run (their family has no such artifact)
                    for m in self.target_models(t):
                        why_not = FAMILIES[self.family(m)].backend_problem(self.family(m), BACKENDS[b].artifact, b)
                        if why_not:
                            lines.append(f"{t}: {b}: {m} not run: {why_not}")
                            continue
                        for p in spec["backends"][b]:
                            why_not = self.precision_problem(m, p)
                            if why_not:
                                lines.append(f"{t}: {b} {p}: {m} not run: {why_not}")
                    continue
                if b == "tensorrt" and self.trt_timer(t) == "trtexec":
                    lines.append(
                        f"{t}: tensorrt: engines timed by trtexec (GPU compute time); accuracy not measured: {why}; "
                        f"set targets.{t}.python to an interpreter with the TensorRT bindings and torch to score them"
                    )
                elif b == "tensorrt" and self.target_trt_builder(t):
                    lines.append(
                        f"{t}: tensorrt: engines built here with {self.target_trt_builder(t)} but not timed (no trtexec "
                        f"to time them either): {why}"
                    )
                elif b == "tensorrt":
                    lines.append(f"{t}: tensorrt: {trt.unavailable_reason()}" + (f"; {why}" if spec["python"] else ""))
                else:
                    lines.append(f"{t}: {why}")
        return lines

    # -- what a job reads -----------------------------------------------------------------------------
    def model_artifact(self, target: str, model: str, backend: str, precision: str, batch: str | None = None) -> str:
        """The file a backend runs: the prepared checkpoint, an ONNX model or a TensorRT engine.

        Engines are per batch profile: a bench job runs the engine of its batch; an accuracy job (no batch)
        the one of the target's largest batch, which the runner pads or splits to.
        """
        spec = BACKENDS[backend]
        if spec.artifact == "checkpoint":
            return f"artifacts/checkpoints/{model}.pt"
        if spec.artifact == "engine":
            return engine_path(target, model, precision, batch or max(self.targets[target]["batch_sizes"]))
        if parse_precision(precision).calibration:  # a QDQ model: the variant of the target's INT8 scheme
            return onnx_path(model, parse_precision(precision).qdq_variant(self.int8_scheme(target)))
        return onnx_path(model, spec.artifact_variant(precision))

    def onnx_parts(self, model: str) -> list[str]:
        """The graphs beside the model's fp32.onnx that its export also writes (none for a one-graph export)."""
        return [onnx_part_path(model, p) for p in FAMILIES[self.family(model)].onnx_parts]

    def models_with_onnx_parts(self) -> list[str]:
        return [m for m in self.models if FAMILIES[self.family(m)].onnx_parts]

    def models_without_onnx_parts(self) -> list[str]:
        return [m for m in self.models if not FAMILIES[self.family(m)].onnx_parts]

    def onnx_part_patterns(self) -> list[str]:
        """The export rule's extra outputs for models with parts: `fp32.<part>.onnx` per part their families name."""
        parts = dict.fromkeys(p for m in self.models_with_onnx_parts() for p in FAMILIES[self.family(m)].onnx_parts)
        return [onnx_part_path("{model}", p) for p in parts]

    def artifact_companions(self, target: str, model: str, backend: str, precision: str, **_) -> list[str]:
        """What a job reads beside its artifact: for an ONNX backend on a parts export, the other parts and the
        prepared checkpoint (the family's torch glue, named in the export's metadata); else nothing."""
        if BACKENDS[backend].artifact != "onnx" or not FAMILIES[self.family(model)].onnx_parts:
            return []
        return [*self.onnx_parts(model), f"artifacts/checkpoints/{model}.pt"]

    def is_baseline(self, backend: str, precision: str) -> bool:
        return (backend, precision) == (self.baseline["backend"], self.baseline["precision"])

    def baseline_accuracy(self, target: str, model: str, backend: str, precision: str, **_) -> list[str]:
        if self.is_baseline(backend, precision):
            return []
        return [accuracy_path(target, model, self.baseline["backend"], self.baseline["precision"])]

    def reference_outputs(self, target: str, model: str, backend: str, precision: str, **_) -> list[str]:
        """The baseline's saved outputs a vla accuracy job compares with (none for the baseline itself)."""
        if self.is_baseline(backend, precision):
            return []
        return [outputs_path(target, model, self.baseline["backend"], self.baseline["precision"])]

    def baseline_label(self) -> str:
        return f"{self.baseline['backend']}_{self.baseline['precision']}"

    def gpus(self, target: str) -> int:
        """GPU jobs declare gpu=1 (a cluster maps it to a GPU request; locally --resources gpu=N caps them)."""
        return int(self.targets[target]["device"].startswith("cuda"))

    def container(self, target: str) -> str | None:
        return self.targets[target]["container"]

    # -- code inputs: a job reruns when (and only when) the code it runs changes -----------------------------
    @staticmethod
    def step_code(step: str, *extra: str) -> list[str]:
        return list(code_files(step, *extra))

    def model_code(self, step: str, model: str) -> list[str]:
        return [*code_files(step), *family_files(self.family(model))]

    def export_code(self, model: str) -> list[str]:
        """The export's code: `model_code`, and the model's task (its `export_check_inputs`, imported by name)."""
        task = FAMILIES[self.family(model)].task
        return [*code_files("export", f"workflow_scripts.tasks.{task}"), *family_files(self.family(model))]

    def _run_code(self, step: str, model: str, backend: str, *extra: str) -> list[str]:
        """A job's code when it runs a model on a backend: the step (and `extra` modules), the model's task and
        family, the backend's runner (the last three are imported by name, so code_files cannot see them)."""
        task = FAMILIES[self.family(model)].task
        return [
            *code_files(step, f"workflow_scripts.tasks.{task}", *extra),
            runner_file(backend),
            *family_files(self.family(model)),
        ]

    def measure_code(self, step: str, target: str, model: str, backend: str) -> list[str]:
        """A bench/accuracy job's code: what `_run_code` lists, and the target's power sampler."""
        return self._run_code(step, model, backend, SAMPLERS[self.targets[target]["power"]].module)

    def picture_code(self, target: str, model: str, backend: str, **_) -> list[str]:
        """A picture job's code: what `_run_code` lists (no power sampler: nothing is timed)."""
        return self._run_code("pictures", model, backend)

    # -- each rule's settings -------------------------------------------------------------------------
    def target_settings(self, target: str, backend: str) -> dict:
        t = self.targets[target]
        return {
            "device": t["device"],
            "threads": t["threads"],
            # the registry's defaults, then the target's own: the same whether or not the backend is listed
            "backend_options": {**BACKENDS[backend].options, **t["backend_options"].get(backend, {})},
            "power": t["power"],
            "gpu": t["gpu"],
        }

    def bench_settings(self, target: str, model: str, backend: str, **_) -> S.BenchSettings:
        b = self.cfg["bench"]
        return S.BenchSettings(
            **self.target_settings(target, backend),
            imgsz=self.imgsz(model),
            warmup=b["warmup"],
            iterations=b["iterations"],
            min_seconds=b["min_seconds"],
            conf=b["conf"],
            stability=S.Stability(**b["stability"]),
        )

    def accuracy_settings(self, target: str, model: str, backend: str, **_) -> S.AccuracySettings:
        a = self.cfg["accuracy"]
        return S.AccuracySettings(
            **self.target_settings(target, backend),
            imgsz=self.imgsz(model),
            **{k: a[k] for k in ("gate", "error_tolerance", "strict", "batch", "max_images", "conf", "iou", "max_det")},
        )

    def picture_settings(self, target: str, model: str, backend: str, **_) -> S.PictureSettings:
        a, pic = self.cfg["accuracy"], self.cfg["pictures"]
        return S.PictureSettings(
            **self.target_settings(target, backend),
            imgsz=self.imgsz(model),
            images=pic["images"],
            batch=a["batch"],
            conf=pic["conf"],
            iou=a["iou"],
            max_det=a["max_det"],
        )

    def calibration_settings(self, calib: str, **_) -> S.CalibrationSettings:
        c = self.cfg["quantize"]["calibration"]
        keys = CALIBRATION_METHODS[calib].settings
        return S.CalibrationSettings(**{k: (c[k] if k in keys else None) for k in ("images", "num_bins", "percentile")})

    def quantize_settings(self, model: str, qdq: str, **_) -> S.QuantizeSettings:
        """A QDQ variant's settings: its scheme's weight type, and the instruction sets of the targets that run it
        (so a change of a target's cpu_isa remakes the model even where the scheme stays)."""
        q, v = self.cfg["quantize"], parse_variant(qdq)
        return S.QuantizeSettings(
            activation_type=q["activation_type"],
            weight_type=INT8_SCHEMES[v.scheme].weight_type,
            per_channel=q["per_channel"],
            reduce_range=q["reduce_range"],
            keep_float=self.models[model]["keep_float"],
            scheme=v.scheme,
            isa=self.variant_isas(model, v.plain),
        )

    # -- INT8: the target's instruction set picks the QDQ scheme; a missed gate gets a float fallback --------
    def cpu_isa(self, target: str) -> str:
        """targets.<t>.cpu_isa, else dotprod for a Jetson, else this machine's (core.isa)."""
        t = self.targets[target]
        if t["cpu_isa"]:
            return t["cpu_isa"]
        return JETSON_ISA if t["power"] in JETSON_SAMPLERS else self._machine_isa()

    def int8_scheme(self, target: str) -> str:
        """u8s8, or u8u8 where the target CPU's u8s8 kernels saturate; GPUs run no such kernels (u8s8)."""
        if self.targets[target]["device"].startswith("cuda"):
            return "u8s8"
        return ISAS[self.cpu_isa(target)].int8_scheme

    def _int8_runs(self, target: str) -> list[tuple[str, str, str, str]]:
        """(model, backend, plain int8 precision, its QDQ variant) of the target's ONNX-backend INT8 runs (a listed
        fallback precision counts as its plain one: its decision reads the plain row)."""
        found = []
        for m, b, p in self.runs(target):
            spec = parse_precision(p)
            if BACKENDS[b].artifact == "onnx" and spec.calibration:
                plain = parse_precision(spec.plain)
                found.append((m, b, plain.name, plain.qdq_variant(self.int8_scheme(target))))
        return list(dict.fromkeys(found))

    def variant_isas(self, model: str, variant: str) -> dict[str, str]:
        """target → cpu_isa of the targets whose runs read this QDQ variant (in the quantize job's params)."""
        return {
            t: self.cpu_isa(t) for t in self.targets for m, _, _, v in self._int8_runs(t) if (m, v) == (model, variant)
        }

    def qdq_ranges(self, model: str, qdq: str, **_) -> str:
        return f"artifacts/calib/{model}/{parse_variant(qdq).calibration}.ranges.json"

    def fallback_source(self, model: str, qdq: str) -> tuple[str, str, str]:
        """(target, backend, precision) whose accuracy row decides a QDQ variant's fallback, and whose settings the
        search measures with: the first scored run of that variant, in config order."""
        for t in self.targets:
            for m, b, p, v in self._int8_runs(t):
                if (m, v) == (model, qdq) and self.scored(m) and self.scored_here(t, b):
                    return t, b, p
        raise PlanforgeError(f"no target runs {model} as {qdq} with accuracy on: nothing to decide a fallback from")

    def fallback_decisions(self) -> list[tuple[str, str]]:
        """(model, plain QDQ variant) of every scored INT8 row: each gets a fallback decision (rules/quantize.smk)."""
        found = [
            (m, v)
            for t in self.targets
            for m, b, _, v in self._int8_runs(t)
            if self.scored(m) and self.scored_here(t, b) and TASKS[self.task(m)].calibration_images
        ]
        return list(dict.fromkeys(found))

    def fallback_decision_outputs(self) -> list[str]:
        """Every fallback decision's report: the summary needs them all, so a stale decision is remade (and may then
        add or drop its rows) even where no row of it is planned."""
        return [f"artifacts/onnx/{m}/{v}_fb.json" for m, v in self.fallback_decisions()]

    def fallback_inputs(self, model: str, qdq: str, **_) -> dict[str, str | list[str]]:
        """What a fallback decision reads: the row that decides it and its baseline (besides the models)."""
        t, b, p = self.fallback_source(model, qdq)
        return {"accuracy": accuracy_path(t, model, b, p), "baseline": self.baseline_accuracy(t, model, b, p)}

    def fallback_code(self, model: str, qdq: str, **_) -> list[str]:
        """A fallback search's code: it quantizes and scores on the deciding row's backend."""
        return self._run_code("sensitivity", model, self.fallback_source(model, qdq)[1])

    def fallback_settings(self, model: str, qdq: str, **_) -> S.FallbackSettings:
        t, b, p = self.fallback_source(model, qdq)
        return S.FallbackSettings(
            target=t,
            backend=b,
            quantize=self.quantize_settings(model, qdq).as_dict(),
            accuracy=self.accuracy_settings(t, model, b).as_dict(),
            rank_images=self.cfg["quantize"]["fallback"]["rank_images"],
            max_runs=self.cfg["quantize"]["fallback"]["max_runs"],
        )

    def fallback_outputs(self, kind: str, decision: Callable[[str, str], dict]) -> list[str]:
        """The bench ('bench') or accuracy ('accuracy') rows of the fallback variants a decision found needed.

        `decision(model, qdq)` is the decision's JSON (in Snakemake: read once its checkpoint has run). A row goes
        to the target and backend of the INT8 run it was measured from, and to others of the same variant and
        backend; a fallback precision a target lists itself is planned like any precision (bench_outputs)."""
        decided = set(self.fallback_decisions())
        out = []
        for t in self.targets:
            planned = set(self.runs(t))
            for m, b, p, v in self._int8_runs(t):
                fb = parse_precision(p).name + "_fb"
                if (m, v) not in decided or (m, b, fb) in planned:
                    continue
                d = decision(m, v)
                if not d["needed"] or d["backend"] != b:
                    continue
                if kind == "bench":
                    out += [bench_path(t, m, b, fb, n) for n in self.targets[t]["batch_sizes"]]
                else:
                    out.append(accuracy_path(t, m, b, fb))
        return out

    def split_settings(self, dataset: str, split: str, **_) -> dict:
        """A synthetic dataset's config with only `split`'s size (other splits' sizes do not change its images)."""
        ds = self.datasets[dataset]
        return {**ds, "splits": {split: ds["splits"][split]}}

    def episodes_settings(self, dataset: str, split: str, **_) -> dict:
        """What makes one episodes split: the seed, the episode shape and only this split's size."""
        from workflow_scripts.tasks.vla import EPISODE_DEFAULTS

        ds = self.datasets[dataset]
        keys = ("cameras", "camera_size", "state_dim", "prompt_tokens")
        return {
            "kind": "episodes",
            "seed": ds["seed"],
            "splits": {split: ds["splits"][split]},
            **{k: ds.get(k, EPISODE_DEFAULTS[k]) for k in keys},
        }

    def videos_settings(self, dataset: str, split: str, **_) -> dict:
        """What makes one videos split: the seed, the sequence shape and only this split's size."""
        from workflow_scripts.tasks.tracking import VIDEO_DEFAULTS

        ds = self.datasets[dataset]
        return {
            "kind": "videos",
            "seed": ds["seed"],
            "splits": {split: ds["splits"][split]},
            **{k: ds.get(k, v) for k, v in VIDEO_DEFAULTS.items()},
        }

    def coco_settings(self, dataset: str, split: str, **_) -> dict:
        """What makes one COCO split: the seed and the val size (calib is drawn after val), and its own size."""
        ds = self.datasets[dataset]
        keep = ("val",) if split == "val" else ("val", "calib")
        return {"kind": "coco", "seed": ds["seed"], "splits": {k: ds["splits"][k] for k in keep}}

    def datasets_of_kind(self, kind: str) -> list[str]:
        return [d for d, s in self.datasets.items() if s["kind"] == kind]

    # -- TensorRT engines -----------------------------------------------------------------------------
    def trt_config(self, target: str, precision: str) -> dict:
        if "tensorrt" not in self.targets[target]["backends"]:
            raise PlanforgeError(f"target {target} has no tensorrt backend; add it to targets.{target}.backends")
        if precision not in BACKENDS["tensorrt"].precisions:
            raise PlanforgeError(
                f"engine precision {precision!r} is not one of {list(BACKENDS['tensorrt'].precisions)}"
            )
        return self.targets[target]["tensorrt"]

    def engine_onnx(self, target: str, model: str, precision: str, **_) -> str:
        """The ONNX an engine is built from (QDQ model for explicit INT8, else the FP32 export)."""
        return trt.onnx_input(model, precision, self.trt_config(target, precision))

    def engine_calibration(self, target: str, model: str, precision: str, **_) -> list[str]:
        """The calibration cache an implicit-INT8 engine reads (none otherwise)."""
        cache = trt.calibration_cache(model, precision, self.trt_config(target, precision))
        return [cache] if cache else []

    def engine_settings(self, target: str, model: str, precision: str, batch: str, **_) -> dict:
        jetson = self.targets[target]["power"] in JETSON_SAMPLERS
        return trt.engine_settings(
            model,
            precision,
            int(batch),
            self.imgsz(model),
            self.input_name(model),
            self.trt_config(target, precision),
            trt.machine_identity(jetson=jetson, python=self.targets[target]["python"]),
        )

    def timing_cache(self, target: str, precision: str, **_) -> str | None:
        if not self.trt_config(target, precision)["timing_cache"]:
            return None
        return f"artifacts/engines/{target}/timing.cache"

    # -- Triton serving -------------------------------------------------------------------------------
    def serving_targets(self) -> list[str]:
        """Targets that serve: serving enabled, and a model the target can serve (`served_here`)."""
        if not self.serving_cfg["enabled"]:
            return []
        return [t for t in self.targets if self.served_here(t)]

    def served_detection(self, target: str) -> list[str]:
        """Detection ensembles, where ONNX Runtime is configured and installed (it runs their model)."""
        ok = "onnxruntime" in self.targets[target]["backends"] and self.available("onnxruntime")[0]
        return [m for m in self.served_models() if m in self.target_models(target)] if ok else []

    def served_vla(self, target: str) -> list[str]:
        """vla models (Pi0: the family's torch module in a python-backend model), where torch runs."""
        ok = "torch" in self.targets[target]["backends"] and self.available("torch")[0]
        return [m for m in self.models_of_task("vla") if m in self.target_models(target)] if ok else []

    def served_tracking(self, target: str) -> list[str]:
        """tracking models (SAMURAI: the family's Tracker per sequence behind the sequence batcher), where torch runs."""
        ok = "torch" in self.targets[target]["backends"] and self.available("torch")[0]
        return [m for m in self.models_of_task("tracking") if m in self.target_models(target)] if ok else []

    def served_here(self, target: str) -> list[str]:
        return [*self.served_detection(target), *self.served_vla(target), *self.served_tracking(target)]

    def coserving(self, target: str) -> tuple[str, str] | None:
        """(vla model, detection model) loaded together in one server, where the target serves both kinds."""
        vla, det = self.served_vla(target), self.served_detection(target)
        return (vla[0], det[0]) if vla and det else None

    def serving_outputs(self, targets: list[str] | None = None) -> list[str]:
        out = []
        for t in self.serving_targets():
            if targets is None or t in targets:
                for m in self.served_here(t):
                    out.append(f"results/{t}/serving/{m}.json")
                    if self.serving_cfg["accuracy"]:
                        out.append(f"results/{t}/serving/{m}_accuracy.json")
                if self.coserving(t):
                    out.append(f"results/{t}/serving/coserving.json")
        return out

    def serving_plot_outputs(self) -> list[str]:
        return [f"results/plots/{t}_serving_throughput_vs_p99.png" for t in self.serving_targets()]

    def serving_results(self, target: str) -> list[str]:
        return [f"results/{target}/serving/{m}.json" for m in self.served_here(target)]

    def _served_precisions(self, target: str) -> list[str]:
        return self.targets[target]["backends"].get("onnxruntime", [])

    def triton_onnx(self, target: str, **_) -> list[str]:
        return [
            self.model_artifact(target, m, "onnxruntime", p)
            for m in self.served_detection(target)
            for p in self._served_precisions(target)
        ]

    def triton_checkpoints(self, target: str, **_) -> list[str]:
        served = [*self.served_vla(target), *self.served_tracking(target)]
        return [self.model_artifact(target, m, "torch", "fp32") for m in served]

    def coserving_settings(self, target: str, **_) -> dict[str, str]:
        """The co-serving job's models and their datasets."""
        vla, det = self.coserving(target)
        return {"vla": vla, "vla_data": self.dataset_dir(vla), "det": det, "det_data": self.dataset_dir(det)}

    def triton_engines(self, target: str) -> dict[str, dict[str, dict]]:
        """{model: {precision: {"path", "max_batch"}}}: the TensorRT engines the repository serves natively.

        Only for a full Triton build (`serving.onnx_backend: onnxruntime`) on a CUDA target whose engines
        are planned here: the pytriton CPU server has no tensorrt backend and would refuse to start. A
        dynamic batch profile serves the engine of the largest batch (max_batch_size = that batch); a
        static one the batch-1 engine (no batching in the engine).
        """
        t = self.targets[target]
        if self.serving_cfg["onnx_backend"] != "onnxruntime" or not t["device"].startswith("cuda"):
            return {}
        planned = set(self.engine_outputs([target]))
        batch = max(t["batch_sizes"]) if t["tensorrt"]["batch_profile"] == "dynamic" else 1
        out: dict[str, dict[str, dict]] = {}
        for m in self.served_detection(target):
            for p in t["backends"].get("tensorrt", []):
                path = engine_path(target, m, p, batch)
                if path in planned:
                    out.setdefault(m, {})[p] = {"path": path, "max_batch": batch}
        return out

    def triton_engine_files(self, target: str, **_) -> list[str]:
        return [e["path"] for engines in self.triton_engines(target).values() for e in engines.values()]

    def triton_models(self, target: str, **_) -> dict:
        engines = self.triton_engines(target)
        models = {
            m: {
                "family": self.family(m),
                "imgsz": self.imgsz(m),
                "onnx": {p: self.model_artifact(target, m, "onnxruntime", p) for p in self._served_precisions(target)},
                **({"engines": engines[m]} if m in engines else {}),
            }
            for m in self.served_detection(target)
        }
        for m in self.served_vla(target):
            data = self.datasets[self.models[m]["dataset"]]
            models[m] = {
                "family": self.family(m),
                "checkpoint": self.model_artifact(target, m, "torch", "fp32"),
                "episodes": {k: data.get(k, v) for k, v in EPISODE_DEFAULTS.items()},
            }
        for m in self.served_tracking(target):
            models[m] = {"family": self.family(m), "checkpoint": self.model_artifact(target, m, "torch", "fp32")}
        return models

    def triton_code(self) -> list[str]:
        served = [*self.served_models(), *self.models_of_task("vla"), *self.models_of_task("tracking")]
        families = sorted({f for m in served for f in family_files(self.family(m))})
        return [*code_files("serving.repository", "serving.python_models"), *families]

    def triton_settings(self, target: str, **_) -> S.TritonRepositorySettings:
        t, acc, srv = self.targets[target], self.cfg["accuracy"], self.serving_cfg
        keys = ("max_batch_size", "max_queue_delay_us", "preferred_batch_sizes", "instances", "onnx_backend")
        keys += ("sequence_idle_us",)
        thresholds = {k: acc[k] for k in ("conf", "iou", "max_det")}
        return S.TritonRepositorySettings(
            device=t["device"],
            threads=t["threads"],
            serving={
                **{k: srv[k] for k in keys},
                "conf": self.cfg["bench"]["conf"],
                "iou": acc["iou"],
                "max_det": acc["max_det"],
            },
            accuracy=thresholds,
        )

    def serving_settings(self, **_) -> S.ServingSettings:
        keys = [f.name for f in dataclasses.fields(S.ServingSettings)]
        return S.ServingSettings(**{k: self.serving_cfg[k] for k in keys})

    def serving_accuracy_settings(self, **_) -> S.ServingAccuracySettings:
        acc = self.cfg["accuracy"]
        return S.ServingAccuracySettings(
            batch=acc["batch"],
            max_images=acc["max_images"],
            startup_timeout_s=self.serving_cfg["startup_timeout_s"],
            map_tolerance=self.serving_cfg["map_tolerance"],
        )

    def serving_bench_b1(self, target: str, model: str, **_) -> list[str]:
        """The in-process ONNX Runtime batch-1 bench the serving overhead is compared with, where it runs."""
        if model not in self.served_detection(target):
            return []  # vla: the sweep times the in-process chunk itself
        path = bench_path(target, model, "onnxruntime", self._served_precisions(target)[0], 1)
        return [path] if path in self.bench_outputs([target]) else []

    def serving_reference(self, target: str, model: str, **_) -> list[str]:
        """The in-process ONNX Runtime accuracy the served mAP must match (vla: none, the job runs torch itself)."""
        if model not in self.served_detection(target):
            return []
        return [accuracy_path(target, model, "onnxruntime", self._served_precisions(target)[0])]
