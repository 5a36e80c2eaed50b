"""The job plan as plain Python: outputs, availability, artifacts and typed settings, with no snakemake."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import REPO
from workflow_scripts.config import schema, validate
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import CALIBRATION_METHODS, PRECISIONS, parse
from workflow_scripts.models import FAMILIES
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.plan.settings import AccuracySettings, BenchSettings, CalibrationSettings, PictureSettings
from workflow_scripts.power import SAMPLERS
from workflow_scripts.runners import BACKENDS
from workflow_scripts.tasks import TASKS

DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def _plan(config: dict, missing: tuple[str, ...] = (), gpu: str = "NVIDIA H200") -> Plan:
    def available(backend):
        return (False, f"{backend}: not installed on this machine") if backend in missing else (True, "")

    return Plan(
        validate(config, check_files=False), available=available, gpu_name=lambda: gpu, trt_builder=lambda: None
    )


def _gpu_config() -> dict:
    config = copy.deepcopy(DEFAULT)
    config["targets"] = {
        "h200": {
            "device": "cuda",
            "machine": "H200",
            "backends": {"torch": ["fp16"], "onnxruntime-gpu": ["fp16", "int8_entropy"], "tensorrt": ["fp16", "int8"]},
            "batch_sizes": [1, 8],
            "tensorrt": {"int8": "implicit", "calibration": "entropy"},
        }
    }
    return config


def test_the_default_plans_every_model_backend_precision_and_batch():
    plan = _plan(DEFAULT)
    bench = plan.bench_outputs()
    # detectors × (torch fp32, ort fp32, ort int8_minmax) × batches, the tiny Pi0 and the tiny SAMURAI on torch and
    # ort fp32 × batches (SAMURAI's batch = live sequences)
    assert len(bench) == 2 * 3 * 2 + 2 * 2 + 2 * 2
    assert "results/cpu/bench/dfine-demo/onnxruntime_int8_minmax_b4.json" in bench
    assert "results/cpu/bench/pi0-tiny/torch_fp32_b4.json" in bench
    assert "results/cpu/bench/pi0-tiny/onnxruntime_fp32_b4.json" in bench
    assert "results/cpu/bench/samurai-tiny/torch_fp32_b4.json" in bench
    assert "results/cpu/bench/samurai-tiny/onnxruntime_fp32_b4.json" in bench
    assert sorted(plan.accuracy_outputs()) == sorted(
        [
            *(
                f"results/cpu/accuracy/{m}/{r}.json"
                for m in ("yolo-demo", "dfine-demo")
                for r in ("torch_fp32", "onnxruntime_fp32", "onnxruntime_int8_minmax")
            ),
            "results/cpu/accuracy/pi0-tiny/torch_fp32.json",  # the vla reference: the others' actions compare to it
            "results/cpu/accuracy/pi0-tiny/onnxruntime_fp32.json",
            "results/cpu/accuracy/samurai-tiny/torch_fp32.json",
            "results/cpu/accuracy/samurai-tiny/onnxruntime_fp32.json",
        ]
    )
    assert plan.calibration_cache_outputs() == [
        "artifacts/calib/dfine-demo/minmax.cache",
        "artifacts/calib/yolo-demo/minmax.cache",
    ]
    assert plan.final_outputs()[0] == "results/summary.md"
    # Pi0's episodes and SAMURAI's videos have no calibration images: their static INT8 runs are skipped, with the
    # reason
    assert plan.unavailable_lines() == [
        "cpu: onnxruntime int8_minmax: pi0-tiny not run: int8_minmax calibrates on images of a calib split; task "
        "vla has none (its data: episodes: camera images, robot state, prompt token ids, noise)",
        "cpu: onnxruntime int8_minmax: samurai-tiny not run: int8_minmax calibrates on images of a calib split; task "
        "tracking has none (its data: videos: frame sequences with the target's box on every frame)",
    ]
    # SAMURAI's ONNX Runtime jobs read its four parts and its checkpoint (the tracker's torch glue)
    assert plan.artifact_companions("cpu", "samurai-tiny", "onnxruntime", "fp32") == [
        "artifacts/onnx/samurai-tiny/fp32.memory_attention.onnx",
        "artifacts/onnx/samurai-tiny/fp32.mask_decoder.onnx",
        "artifacts/onnx/samurai-tiny/fp32.memory_encoder.onnx",
        "artifacts/checkpoints/samurai-tiny.pt",
    ]
    assert plan.artifact_companions("cpu", "samurai-tiny", "torch", "fp32") == []
    assert plan.artifact_companions("cpu", "pi0-tiny", "onnxruntime", "fp32") == []


def test_samurai_parts_run_on_onnx_runtime_and_other_onnx_backends_skip_them_with_a_line():
    config = copy.deepcopy(DEFAULT)
    config["targets"]["cpu"]["backends"] = {"onnxruntime": ["fp32"], "openvino": ["fp32"]}
    plan = _plan(config)
    runs = set(plan.runs("cpu"))
    assert ("samurai-tiny", "onnxruntime", "fp32") in runs and ("samurai-tiny", "openvino", "fp32") not in runs
    assert ("yolo-demo", "openvino", "fp32") in runs
    assert (
        "cpu: openvino: samurai-tiny not run: family samurai exports several ONNX graphs, which only onnxruntime / "
        "onnxruntime-gpu run (its tracker opens a session per part)"
    ) in plan.unavailable_lines()


def test_an_uninstalled_backend_plans_nothing_and_says_why():
    plan = _plan(DEFAULT, missing=("onnxruntime",))
    assert not [o for o in plan.bench_outputs() if "onnxruntime" in o]
    assert plan.unavailable_lines()[0] == "cpu: onnxruntime: not installed on this machine"
    assert plan.calibration_cache_outputs() == []


def test_a_target_for_another_machine_is_skipped_with_a_line():
    plan = _plan(_gpu_config(), gpu="NVIDIA T4")
    assert plan.bench_outputs() == [] and plan.accuracy_outputs() == []
    assert plan.unavailable_lines() == ["h200: a target for a machine matching 'H200'; this one is 'NVIDIA T4'"]


def test_each_backend_reads_the_artifact_its_registry_entry_names_for_the_precision():
    plan = _plan(_gpu_config())
    art = plan.model_artifact
    assert art("h200", "yolo-demo", "torch", "fp16") == "artifacts/checkpoints/yolo-demo.pt"
    assert art("h200", "yolo-demo", "onnxruntime-gpu", "fp16") == "artifacts/onnx/yolo-demo/fp32.onnx"
    assert art("h200", "yolo-demo", "onnxruntime-gpu", "int8_entropy") == "artifacts/onnx/yolo-demo/int8_entropy.onnx"
    assert art("h200", "yolo-demo", "tensorrt", "fp16", "1") == "artifacts/engines/h200/yolo-demo/fp16_b1.plan"
    # an accuracy job has no batch: the largest batch profile's engine
    assert art("h200", "yolo-demo", "tensorrt", "int8") == "artifacts/engines/h200/yolo-demo/int8_b8.plan"
    assert plan.engine_calibration("h200", "yolo-demo", "int8") == ["artifacts/calib/yolo-demo/entropy.cache"]
    assert plan.engine_calibration("h200", "yolo-demo", "fp16") == []


def test_engine_input_names_come_from_the_family():
    plan = _plan(_gpu_config())
    assert plan.input_name("yolo-demo") == "images"
    assert plan.input_name("dfine-demo") == "pixel_values"


def test_a_methods_calibration_settings_hold_only_what_changes_its_ranges():
    config = copy.deepcopy(DEFAULT)
    before = {m: _plan(config).calibration_settings(m) for m in CALIBRATION_METHODS}
    config["quantize"] = {"calibration": {"percentile": 99.9}}
    after = {m: _plan(config).calibration_settings(m) for m in CALIBRATION_METHODS}
    assert before["minmax"] == after["minmax"] and before["entropy"] == after["entropy"]
    assert before["percentile"] != after["percentile"]
    assert before["minmax"] == CalibrationSettings(images=128, num_bins=None, percentile=None)


def test_settings_round_trip_and_a_missing_key_is_one_line():
    s = _plan(DEFAULT).bench_settings("cpu", "yolo-demo", "onnxruntime")
    assert BenchSettings.from_json(s.to_json()) == s
    assert s.backend_options == {"graph_optimization": "all", "providers": ["CPUExecutionProvider"]}
    assert len(s.config_hash) == 16
    with pytest.raises(PlanforgeError, match=r"AccuracySettings: missing \['backend_options', 'batch'"):
        AccuracySettings.from_json('{"device": "cpu"}')


def test_the_schema_names_every_registry_entry_and_nothing_else():
    defs = schema()["$defs"]
    assert defs["backend"]["enum"] == BACKENDS.names()
    assert defs["precision"]["enum"] == PRECISIONS.names()
    assert defs["calibration"]["enum"] == CALIBRATION_METHODS.names()
    assert defs["power"]["enum"] == SAMPLERS.names()
    assert defs["family"]["enum"] == FAMILIES.names()
    assert set(defs["backend_options"]["properties"]) == set(BACKENDS)
    assert all(FAMILIES[f].task in TASKS for f in FAMILIES)


def test_precisions_are_parsed_once_into_what_they_mean():
    assert parse("int8_percentile").kind == "int8" and parse("int8_percentile").calibration == "percentile"
    assert parse("fp16").onnx_variant == "fp32" and parse("int8_minmax").onnx_variant == "int8_minmax"
    assert parse("best").int8_engine and parse("int8").int8_engine and not parse("int8_minmax").int8_engine
    with pytest.raises(PlanforgeError, match="unknown precision 'int3'"):
        parse("int3")


@pytest.mark.parametrize(
    "backend, precision, message",
    [
        ("openvino", "fp32", "targets.cpu.backends.openvino: needs a cpu device"),
        ("tensorrt", "fp16", None),
        ("torch", "fp16", None),
    ],
)
def test_the_device_rules_come_from_the_backend_registry(backend, precision, message):
    config = _gpu_config()
    config["targets"] = {"cpu": {"device": "cuda", "backends": {backend: [precision]}, "batch_sizes": [1]}}
    if message:
        with pytest.raises(PlanforgeError, match=message):
            validate(config, check_files=False)
    else:
        validate(config, check_files=False)
    config["targets"]["cpu"]["device"] = "cpu"
    if backend != "openvino":
        with pytest.raises(PlanforgeError, match="cuda device"):
            validate(config, check_files=False)


def test_a_missing_checkpoint_is_a_config_error_and_a_hub_id_needs_downloads(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = copy.deepcopy(DEFAULT)
    validate(config)  # the shipped checkpoints exist
    config["models"]["yolo-demo"]["checkpoint"] = "weights/nope.pt"
    with pytest.raises(PlanforgeError, match=r"models\.yolo-demo\.checkpoint: 'weights/nope.pt': no such file"):
        validate(config)
    config["models"]["yolo-demo"]["checkpoint"] = "yolov8n.yaml"  # an architecture name: nothing to find
    validate(config)
    config["models"]["dfine-demo"]["checkpoint"] = "ustc-community/dfine-nano-coco"
    with pytest.raises(PlanforgeError, match="Hugging Face id, but this config does not allow downloads"):
        validate(config)
    validate({**config, "downloads": True})


def test_each_run_of_a_scored_model_gets_a_picture_with_its_own_settings():
    config = copy.deepcopy(DEFAULT)
    config["models"]["dfine-demo"]["accuracy"] = False  # random weights: nothing worth seeing
    plan = _plan(config)
    assert plan.picture_outputs() == [
        f"results/cpu/pictures/yolo-demo/{r}.png" for r in ("torch_fp32", "onnxruntime_fp32", "onnxruntime_int8_minmax")
    ]
    s = plan.picture_settings("cpu", "yolo-demo", "onnxruntime")
    assert (s.images, s.conf, s.imgsz, s.threads) == (4, 0.25, 320, 2)
    assert PictureSettings.from_json(s.to_json()) == s
    code = plan.picture_code("cpu", "yolo-demo", "onnxruntime")
    assert "workflow_scripts/pictures.py" in code and "workflow_scripts/runners/ort_runner.py" in code
    assert "workflow_scripts/tasks/detection.py" in code and not any("torch_runner" in c for c in code)
    config["pictures"] = {"images": 0}
    assert _plan(config).picture_outputs() == []


def test_a_full_triton_build_on_a_cuda_target_serves_its_engines_natively():
    config = _gpu_config()
    config["targets"]["h200"]["backends"]["onnxruntime"] = ["fp32"]
    config["serving"] = {"enabled": True, "onnx_backend": "onnxruntime"}
    plan = Plan(
        validate(config, check_files=False),
        available=lambda b: (True, ""),
        gpu_name=lambda: "NVIDIA H200",
        trt_builder=lambda: "trtexec",
    )
    models = plan.triton_models("h200")
    assert models["dfine-demo"]["engines"] == {
        p: {"path": f"artifacts/engines/h200/dfine-demo/{p}_b1.plan", "max_batch": 1} for p in ("fp16", "int8")
    }
    assert "artifacts/engines/h200/yolo-demo/fp16_b1.plan" in plan.triton_engine_files("h200")
    config["targets"]["h200"]["tensorrt"]["batch_profile"] = "dynamic"
    plan = Plan(
        validate(config, check_files=False),
        available=lambda b: (True, ""),
        gpu_name=lambda: "NVIDIA H200",
        trt_builder=lambda: "trtexec",
    )
    assert plan.triton_models("h200")["yolo-demo"]["engines"]["fp16"]["max_batch"] == 8
    config["serving"]["onnx_backend"] = "python"  # the pytriton server: no tensorrt backend, so no engines
    assert "engines" not in _plan(config).triton_models("h200")["yolo-demo"]
