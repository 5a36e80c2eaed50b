"""Config errors name the key and the allowed values; defaults fill in the rest."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import TINY_CONFIG, make_workflow_copy, snakemake
from workflow_scripts.config import load, validate
from workflow_scripts.core.io import PlanforgeError


def _mutated(fn) -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    fn(cfg)
    return cfg


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: c["targets"]["cpu"]["backends"].update(tensorrtx=["fp32"]),
            "config key targets.cpu.backends: 'tensorrtx' is not one of ['torch', 'torch-cudagraph',",
        ),
        (lambda c: c["models"]["a"].update(family="rtdetr"), "config key models.a.family: 'rtdetr' is not one of"),
        (
            lambda c: c["targets"]["cpu"]["backends"].update(torch=["int4"]),
            "config key targets.cpu.backends.torch.0: 'int4' is not one of ['fp32', 'fp16', 'bf16', 'int8', 'best', 'int8_minmax',",
        ),
        (
            lambda c: c["targets"]["cpu"]["backends"].update(torch=["int8_entropy"]),
            "config key targets.cpu.backends.torch: 'int8_entropy' is not one of ['fp32', 'fp16', 'bf16']",
        ),
        (
            lambda c: c.update(quantize={"calibration": {"method": "kl"}}),
            "config key quantize.calibration: Additional properties are not allowed ('method' was unexpected); "
            "allowed: ['images', 'num_bins', 'percentile']",
        ),
        (
            lambda c: c["targets"]["cpu"]["backends"].update(torch=["fp16"]),
            "config key targets.cpu.backends.torch: 'fp16' needs a cuda device",
        ),
        (
            lambda c: c["models"]["a"].update(dataset="coco"),
            "config key models.a.dataset: 'coco' is not one of ['tiny']",
        ),
        (lambda c: c["targets"]["cpu"].update(batch_sizes=[0]), "config key targets.cpu.batch_sizes.0"),
        (lambda c: c["models"]["a"].update(imgsz=100), "config key models.a.imgsz: 100 is not a multiple of 32"),
        (
            lambda c: c.update(benchmark={}),
            "allowed: ['accuracy', 'bench', 'datasets', 'downloads', 'export', 'models', 'pictures', 'quantize', 'references', 'serving', "
            "'targets']",
        ),
        (
            lambda c: c.update(
                references=[
                    {
                        "model": "dfine-x",
                        "source": "a T4",
                        "rows": [{"backend": "torch", "precision": "fp16", "batch": 1, "p50_ms": 59.5}],
                    }
                ]
            ),
            "config key references.0.model: 'dfine-x' is not one of ['a', 'b']",
        ),
        (lambda c: c["bench"].update(min_seconds=-1), "config key bench.min_seconds: -1 is less than the minimum of 0"),
        (lambda c: c["accuracy"].update(gate=1.5), "config key accuracy.gate: 1.5 is greater than the maximum of 1"),
    ],
)
def test_config_error_names_the_key_and_the_allowed_values(mutate, expected):
    with pytest.raises(PlanforgeError) as err:
        validate(_mutated(mutate), check_files=False)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_cuda_only_backends_are_refused_on_a_cpu_target():
    cfg = _mutated(lambda c: c["targets"]["cpu"]["backends"].update({"torch-cudagraph": ["fp32"]}))
    with pytest.raises(PlanforgeError, match="targets.cpu.backends.torch-cudagraph: needs a cuda device"):
        validate(cfg, check_files=False)
    cfg["targets"]["cpu"]["device"] = "cuda"
    validate(cfg, check_files=False)


def test_defaults_match_the_seeds_measurement_settings():
    cfg = validate(copy.deepcopy(TINY_CONFIG), check_files=False)
    assert cfg["accuracy"]["gate"] == 0.95
    assert cfg["export"]["opset"] == 17 and cfg["export"]["dynamic_batch"] is True
    fresh = validate({k: v for k, v in TINY_CONFIG.items() if k not in ("bench", "accuracy")}, check_files=False)
    assert (fresh["bench"]["warmup"], fresh["bench"]["iterations"]) == (10, 100)


def test_the_embedded_default_config_is_valid():
    cfg = load("config/config.yaml")
    assert cfg["models"]["yolo-demo"]["checkpoint"] == "weights/yolo-demo.pt"
    assert set(cfg["targets"]["cpu"]["backends"]) == {"torch", "onnxruntime"}


def test_snakemake_refuses_an_invalid_config_with_one_line_naming_the_key(tmp_path):
    work = make_workflow_copy(tmp_path / "wf", _mutated(lambda c: c["targets"]["edge"].update(device="gpu0")))
    proc = snakemake(work, "-n", check=False)
    assert proc.returncode != 0
    assert "planforge: config key targets.edge.device: 'gpu0' does not match" in proc.stdout + proc.stderr
