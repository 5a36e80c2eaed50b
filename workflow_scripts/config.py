"""Config: schema validation with one-line errors, defaults, and the job plan the DAG is built from."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from workflow_scripts.io import PlanforgeError
from workflow_scripts.runners import BACKENDS

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"

DEFAULTS: dict[str, Any] = {
    "export": {"opset": 17, "dynamic_batch": True, "simplify": "auto", "check_images": 4, "max_abs_error": 0.05},
    "quantize": {
        "calibration": {"images": 128, "num_bins": 2048, "percentile": 99.99},
        "activation_type": "quint8",
        "per_channel": True,
        "reduce_range": False,
        "trt_version": 100300,
    },
    "bench": {"warmup": 10, "iterations": 100, "min_seconds": 0, "conf": 0.25},
    "accuracy": {
        "gate": 0.95,
        "strict": False,
        "baseline": {"backend": "torch", "precision": "fp32"},
        "batch": 8,
        "max_images": None,
        "conf": 0.001,
        "iou": 0.7,
        "max_det": 300,
    },
    # Triton serving (rules/serving.smk): off in the embedded default, which must work offline;
    # the serving environment is made from PyPI on first use (workflow_scripts/triton_env.py).
    "serving": {
        "enabled": False,
        "max_batch_size": 8,
        "max_queue_delay_us": 1000,
        "instances": 1,
        "onnx_backend": "python",  # python: ORT inside a python-backend model (the CPU server has no onnxruntime backend)
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
}
MODEL_DEFAULTS = {"imgsz": 640, "accuracy": True, "keep_float": []}
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
    "threads": None,
    "backend_options": {},
    "power": "none",
    "gpu": None,
    "container": None,
    "tensorrt": TENSORRT_DEFAULTS,
}


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate(config: dict) -> dict:
    """Validate against config/schema.yaml and cross-check names; return a copy with defaults filled in."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        where = _key(err.absolute_path)
        message = err.message
        if err.validator == "additionalProperties" and "properties" in err.schema:
            message += f"; allowed: {sorted(err.schema['properties'])}"
        raise PlanforgeError(f"config key {where}: {message}")
    cfg = copy.deepcopy(config)
    for section, values in DEFAULTS.items():
        cfg[section] = _merge(values, cfg.get(section) or {})
    for name, ds in cfg["datasets"].items():
        cfg["datasets"][name] = _merge(DATASET_DEFAULTS, ds)
    for name, model in cfg["models"].items():
        cfg["models"][name] = _merge(MODEL_DEFAULTS, model)
        if model["dataset"] not in cfg["datasets"]:
            raise PlanforgeError(
                f"config key models.{name}.dataset: {model['dataset']!r} is not one of {sorted(cfg['datasets'])}"
            )
    for name, target in cfg["targets"].items():
        cfg["targets"][name] = _merge(TARGET_DEFAULTS, target)
        for backend, precisions in target["backends"].items():
            bad = [p for p in precisions if p not in BACKENDS[backend].precisions]
            if bad:
                raise PlanforgeError(
                    f"config key targets.{name}.backends.{backend}: {bad[0]!r} is not one of "
                    f"{list(BACKENDS[backend].precisions)}"
                )
            on_cpu = target["device"] == "cpu"
            if backend == "tensorrt" and on_cpu:
                raise PlanforgeError(
                    f"config key targets.{name}.backends.tensorrt: TensorRT needs a cuda device; set device: cuda"
                )
            if on_cpu and BACKENDS[backend].needs_cuda:
                raise PlanforgeError(
                    f"config key targets.{name}.backends.{backend}: needs a cuda device; allowed on cpu: "
                    f"{sorted(b for b, s in BACKENDS.items() if not s.needs_cuda)}"
                )
            if on_cpu and backend.startswith("torch") and "fp16" in precisions:
                raise PlanforgeError(
                    f"config key targets.{name}.backends.{backend}: 'fp16' needs a cuda device; allowed on cpu: ['fp32']"
                )
    cfg.setdefault("references", [])
    for i, ref in enumerate(cfg["references"]):
        if ref["model"] not in cfg["models"]:
            raise PlanforgeError(
                f"config key references.{i}.model: {ref['model']!r} is not one of {sorted(cfg['models'])}"
            )
    base = cfg["accuracy"]["baseline"]
    if base["precision"] not in BACKENDS[base["backend"]].precisions:
        raise PlanforgeError(
            f"config key accuracy.baseline.precision: {base['precision']!r} is not one of "
            f"{list(BACKENDS[base['backend']].precisions)}"
        )
    return cfg


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


def digest(value: Any) -> str:
    """Short stable hash of a JSON-able value (what makes a result what it is)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
