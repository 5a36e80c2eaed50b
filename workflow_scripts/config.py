"""Config: schema validation with one-line errors, and the defaults filled in.

The schema's names (backends, precisions, calibration methods, samplers, families, backend options)
come from the registries; the job plan built from a valid config is workflow_scripts/plan/."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.isa import ISAS
from workflow_scripts.core.precisions import CALIBRATION_METHODS, PRECISIONS
from workflow_scripts.core.precisions import parse as parse_precision
from workflow_scripts.models import FAMILIES, checkpoint_problem, checkpoint_settings_problem, settings_problem
from workflow_scripts.power import SAMPLERS
from workflow_scripts.runners import BACKENDS
from workflow_scripts.tasks import TASKS

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"

DEFAULTS: dict[str, Any] = {
    "export": {"opset": 17, "dynamic_batch": True, "simplify": "auto", "check_images": 4, "max_abs_error": 0.05},
    "quantize": {
        "calibration": {"images": 128, "num_bins": 2048, "percentile": 99.99},
        "activation_type": "quint8",
        "per_channel": True,
        "reduce_range": False,
        "trt_version": 100300,
        "fallback": {"rank_images": 8, "max_runs": 6},
    },
    "bench": {
        "warmup": 10,
        "iterations": 100,
        "min_seconds": 0,
        "conf": 0.25,
        # a timed loop whose spread exceeds either limit was disturbed: measured again, up to `attempts` loops
        # in all, the least disturbed reported; still disturbed after the last, the row says "stable": false.
        # On a quiet 16-core host, 100-call loops of CPU ONNX Runtime at batch 1 (1-2 threads) stayed at cv <= 0.20
        # and p99/p50 <= 2.01 (79 of 80 loops passed), CUDA-event loops of eager torch at cv <= 0.25 (159 of 160)
        # Contention: other processes keeping more than max_other_cpus of the bench's usable CPUs busy (or, on CUDA,
        # any other process on its GPU) disturb a loop too; before measuring again the bench waits, at most
        # quiet_wait_s per row, for the machine to go quiet (docs/measured/cpu/README.md "Contention calibration").
        # 0.075, calibrated on the 2-core CI machine (docs/measured/cpu/contention_busy/calibration.md): every loop
        # with others at or below 0.085 of its CPUs stayed within 15 % of the row's quiet p50, the first beyond was at
        # 0.102 (1.40×: ONNX Runtime's 2 threads on 2 cores stall whenever one is descheduled); quiet loops read
        # 0.00-0.011. Beside 2 busy processes loops read 1.5-1.6 of 2 CPUs, p50 up to 9.8× the quiet one
        "stability": {
            "max_cv": 0.25,
            "max_p99_over_p50": 2.0,
            "attempts": 3,
            "max_other_cpus": 0.075,
            "quiet_wait_s": 30,
            "max_reference_slowdown": 0.15,
            "max_change_from_last_run": 0.15,
        },
    },
    "accuracy": {
        "gate": 0.95,
        "error_tolerance": 0.01,
        "strict": False,
        "baseline": {"backend": "torch", "precision": "fp32"},
        "batch": 8,
        "max_images": None,
        "conf": 0.001,
        "iou": 0.7,
        "max_det": 300,
    },
    # results/{target}/pictures/: the first `images` val images with predicted and true boxes, per run (0: none)
    "pictures": {"images": 4, "conf": 0.25},
    # Triton serving (rules/serving.smk): off in the embedded default, which must work offline;
    # the serving environment is made from PyPI on first use (workflow_scripts/serving/env.py).
    "serving": {
        "enabled": False,
        "max_batch_size": 8,
        "max_queue_delay_us": 1000,
        "preferred_batch_sizes": [4, 8],  # dynamic_batching of the inference models (sizes > max_batch_size: error)
        "instances": 1,
        "onnx_backend": "python",  # python: ORT inside a python-backend model (the CPU server has no onnxruntime backend)
        "sequence_idle_us": 5_000_000,  # tracking models: max_sequence_idle_microseconds; idle trackers are dropped
        "concurrency": [1, 2, 3, 4, 5, 6, 7, 8],
        "protocols": ["http", "grpc"],
        "requests": 50,  # per perf_analyzer measurement window (count_windows)
        "stability_percentage": 25,
        "max_trials": 6,
        "startup_timeout_s": 120,
        "http_port": None,
        "grpc_port": None,
        "accuracy": True,
        "map_tolerance": 0.001,
    },
}
DATASET_DEFAULTS = {
    "seed": 0,
    "splits": {"train": 0, "val": 200, "calib": 128},
    "image_size": [256, 416],
    "max_objects": 8,
}  # kinds episodes / videos: their own keys' defaults are tasks/vla.py EPISODE_DEFAULTS, tasks/tracking.py VIDEO_DEFAULTS
# num_queries (D-FINE), tracker (SAMURAI): None keeps the checkpoint's own (workflow_scripts/models: FamilySpec.settings)
MODEL_DEFAULTS = {"imgsz": 640, "accuracy": True, "keep_float": [], "num_queries": None, "tracker": None}
TENSORRT_DEFAULTS = {
    "workspace_mib": 4096,
    "batch_profile": "static",
    "builder_optimization_level": 3,
    "dla_core": None,
    "gpu_fallback": True,
    "int8": "explicit",
    "calibration": "entropy",
    "timing_cache": True,
    "extra_flags": [],
}
TARGET_DEFAULTS = {
    "machine": None,
    "models": None,  # the models this target measures (None: every model)
    "threads": None,
    "backend_options": {},
    "power": "none",
    "python": None,  # the interpreter the target's model jobs run under (None: `python` on PATH)
    "gpu": None,
    "container": None,
    "cpu_isa": None,  # None: the plan reads this machine's (core.isa.local_isa), dotprod for a Jetson
    "tensorrt": TENSORRT_DEFAULTS,
}


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def schema() -> dict:
    """config/schema.yaml with every axis's names filled in from its registry."""
    s = yaml.safe_load(SCHEMA.read_text())
    s["$defs"].update(
        backend={"enum": BACKENDS.names()},
        precision={"enum": PRECISIONS.names()},
        calibration={"enum": CALIBRATION_METHODS.names()},
        power={"enum": SAMPLERS.names()},
        family={"enum": FAMILIES.names()},
        cpu_isa={"enum": ISAS.names()},
        backend_options={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                name: {"type": "object", "additionalProperties": False, "properties": {k: {} for k in spec.options}}
                for name, spec in BACKENDS.items()
            },
        },
    )
    return s


def validate(config: dict, check_files: bool = True) -> dict:
    """Validate against the schema and cross-check names; return a copy with defaults filled in.

    With `check_files`, a checkpoint path that does not exist is an error here, before any job: Snakemake
    would otherwise keep the old model's results (a params change with a missing input is not rerun).
    """
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        where = _key(err.absolute_path)
        message = err.message
        if err.validator == "additionalProperties" and "properties" in err.schema:
            message += f"; allowed: {sorted(err.schema['properties'])}"
        raise PlanforgeError(f"config key {where}: {message}")
    cfg = copy.deepcopy(config)
    cfg.setdefault("downloads", False)
    for section, values in DEFAULTS.items():
        cfg[section] = _merge(values, cfg.get(section) or {})
    for name, ds in cfg["datasets"].items():
        cfg["datasets"][name] = _merge(DATASET_DEFAULTS, ds)
        _check_dataset(name, cfg["datasets"][name])
    for name, model in cfg["models"].items():
        cfg["models"][name] = _merge(MODEL_DEFAULTS, model)
        if model["dataset"] not in cfg["datasets"]:
            raise PlanforgeError(
                f"config key models.{name}.dataset: {model['dataset']!r} is not one of {sorted(cfg['datasets'])}"
            )
        kind, task = cfg["datasets"][model["dataset"]]["kind"], FAMILIES[model["family"]].task
        if kind not in TASKS[task].dataset_kinds:
            raise PlanforgeError(
                f"config key models.{name}.dataset: {model['dataset']!r} is a {kind} dataset; a {task} model "
                f"({model['family']}) reads kind {' / '.join(TASKS[task].dataset_kinds)}"
            )
        wrong = settings_problem(model["family"], model)
        if wrong:
            raise PlanforgeError(f"config key models.{name}.{wrong[0]}: {wrong[1]}")
        problem = checkpoint_problem(model["family"], model["checkpoint"], cfg["downloads"]) if check_files else None
        if problem:
            raise PlanforgeError(f"config key models.{name}.checkpoint: {problem}")
        wrong = checkpoint_settings_problem(model["family"], cfg["models"][name]) if check_files else None
        if wrong:
            raise PlanforgeError(f"config key models.{name}.{wrong[0]}: {wrong[1]}")
    for name, target in cfg["targets"].items():
        int8_given = (target.get("tensorrt") or {}).get("int8") is not None  # the schema allows no null
        target = cfg["targets"][name] = _merge(TARGET_DEFAULTS, target)
        unknown = [m for m in target["models"] or () if m not in cfg["models"]]
        if unknown:
            raise PlanforgeError(
                f"config key targets.{name}.models: {unknown[0]!r} is not one of {sorted(cfg['models'])}"
            )
        target["gpu"] = gpu_pattern(target["gpu"], f"targets.{name}.gpu")
        for backend, precisions in target["backends"].items():
            spec = BACKENDS[backend]
            where = f"config key targets.{name}.backends.{backend}"
            bad = [p for p in precisions if p not in spec.precisions]
            if bad:
                raise PlanforgeError(f"{where}: {bad[0]!r} is not one of {list(spec.precisions)}")
            for precision in precisions:
                problem = spec.device_problem(target["device"], precision)
                if problem:
                    raise PlanforgeError(f"{where}: {problem}")
        tensorrt_cfg = target["tensorrt"]
        dla_int8 = any(parse_precision(p).int8_engine for p in target["backends"].get("tensorrt", []))
        if tensorrt_cfg["dla_core"] is not None and dla_int8 and not int8_given:
            tensorrt_cfg["int8"] = "implicit"  # DLA INT8: from the calibration cache, unless the config says otherwise
        if tensorrt_cfg["dla_core"] is not None and dla_int8 and tensorrt_cfg["int8"] != "implicit":
            raise PlanforgeError(
                f"config key targets.{name}.tensorrt.int8: a DLA INT8 engine is built from the calibration cache "
                "the workflow makes (artifacts/calib/<model>/<method>.cache); set it to implicit"
            )
    _check_calibration(cfg)
    cfg.setdefault("references", [])
    for i, ref in enumerate(cfg["references"]):
        if ref["model"] not in cfg["models"]:
            raise PlanforgeError(
                f"config key references.{i}.model: {ref['model']!r} is not one of {sorted(cfg['models'])}"
            )
    srv = cfg["serving"]
    too_big = [b for b in srv["preferred_batch_sizes"] if b > srv["max_batch_size"]]
    if too_big:
        raise PlanforgeError(
            f"config key serving.preferred_batch_sizes: {too_big[0]} is above serving.max_batch_size "
            f"({srv['max_batch_size']}); Triton refuses such a model"
        )
    base = cfg["accuracy"]["baseline"]
    if base["precision"] not in BACKENDS[base["backend"]].precisions:
        raise PlanforgeError(
            f"config key accuracy.baseline.precision: {base['precision']!r} is not one of "
            f"{list(BACKENDS[base['backend']].precisions)}"
        )
    return cfg


def _check_dataset(name: str, ds: dict) -> None:
    """What a dataset job would refuse, refused before any job runs (Snakemake removes a job's outputs first)."""
    where = f"config key datasets.{name}"
    if ds["kind"] == "synthetic" and ds["image_size"][0] > ds["image_size"][1]:
        raise PlanforgeError(f"{where}.image_size: {ds['image_size']}: the first value must not exceed the second")
    if ds["kind"] == "coco":
        from workflow_scripts.coco import VAL2017_IMAGES

        val, calib = ds["splits"]["val"], ds["splits"]["calib"]
        if val + calib > VAL2017_IMAGES:
            raise PlanforgeError(
                f"{where}.splits: val + calib = {val + calib} is more than the {VAL2017_IMAGES} images of COCO "
                "val2017; lower them"
            )


def _check_calibration(cfg: dict) -> None:
    """quantize.calibration.images against the calib split of every model that is calibrated (a model whose task
    has calibration images, where some target runs an INT8 precision): the split's size is in the config, since
    the data is generated (or cut) from it deterministically. Checked here, the range files are not removed first."""
    images = cfg["quantize"]["calibration"]["images"]
    calibrated = any(
        parse_precision(p).calibration or parse_precision(p).int8_engine
        for target in cfg["targets"].values()
        for precisions in target["backends"].values()
        for p in precisions
    )
    for name, model in cfg["models"].items() if calibrated else ():
        if not TASKS[FAMILIES[model["family"]].task].calibration_images:
            continue
        dataset = model["dataset"]
        have = cfg["datasets"][dataset]["splits"]["calib"]
        if images > have:
            raise PlanforgeError(
                f"config key quantize.calibration.images: {images} is more than the {have} images of dataset "
                f"{dataset}'s calib split (datasets.{dataset}.splits.calib, model {name}); lower it or raise the split"
            )


def gpu_pattern(pin: str | list[str] | None, where: str) -> str | None:
    """A target's GPU pin as one pattern: a list of names is any of them ("H100|H200"); a string is a regex,
    case-insensitive, searched in the GPU's name (plain text such as "H100" matches as before)."""
    if pin is None:
        return None
    pattern = "|".join(re.escape(p) for p in pin) if isinstance(pin, list) else pin
    try:
        re.compile(pattern)
    except re.error as e:
        raise PlanforgeError(f"config key {where}: {pin!r} is not a valid pattern ({e}); e.g. H100|H200") from None
    return pattern


def _merge(defaults: dict, values: dict) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in values.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def load(path: str | Path) -> dict:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PlanforgeError(f"{p}: cannot read config ({exc})") from None
    return validate(raw or {})
