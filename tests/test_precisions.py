"""The precision object: a name is parsed once (core/precisions.py) and the runner gets the parsed `Precision`;
one table gives the TensorRT Python builder, trtexec and ONNX Runtime's TensorRT provider their flags."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.test_tensorrt_builder import IDENTITY, make_fake_tensorrt
from workflow_scripts.config import TENSORRT_DEFAULTS
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import (
    PRECISIONS,
    TENSORRT_FLAGS,
    Precision,
    calibrated,
    is_int8_name,
    known,
    parse,
)
from workflow_scripts.runners import BACKENDS
from workflow_scripts.runners.ort_runner import gpu_providers
from workflow_scripts.tensorrt import engines
from workflow_scripts.tensorrt.build_engine import build_with_python_api


@pytest.fixture
def identity_onnx(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output0"])], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# what each TensorRT precision turned on before the table existed (build_engine.py and engines.py, main 05b7c02)
BEFORE = {
    "fp32": ([], []),
    "fp16": (["FP16"], ["--fp16"]),
    "int8": (["INT8"], ["--int8"]),
    "best": (["FP16", "INT8"], ["--best"]),
}


@pytest.mark.parametrize("name", BACKENDS["tensorrt"].precisions)
def test_one_table_gives_the_python_builder_and_trtexec_their_flags(name, identity_onnx, tmp_path):
    settings = engines.engine_settings("m", name, 2, 8, "images", TENSORRT_DEFAULTS, IDENTITY)
    calls: list = []
    build_with_python_api(make_fake_tensorrt(calls), settings, identity_onnx, tmp_path / "e.plan", None)
    set_flags = [c[1] for c in calls if c[0] == "config.set_flag"]
    cmd = engines.trtexec_command("trtexec", settings, identity_onnx, tmp_path / "e.plan", None)
    precision_flags = [a for a in cmd if a in ("--fp16", "--int8", "--best", "--bf16", "--fp8")]
    assert (set_flags, precision_flags) == BEFORE[name]
    flags = parse(name).tensorrt
    assert (list(flags.builder), list(flags.trtexec)) == BEFORE[name] and TENSORRT_FLAGS[name] is flags


def test_onnx_runtimes_tensorrt_provider_reads_the_same_table():
    for name in BACKENDS["onnxruntime-gpu"].precisions:
        trt = dict(gpu_providers(name, "cuda", {"execution_providers": ["tensorrt"]}))["TensorrtExecutionProvider"]
        flags = parse(name).tensorrt
        assert (trt["trt_fp16_enable"], trt["trt_int8_enable"]) == (flags.fp16, flags.int8), name
    assert parse("int8_minmax_fb").tensorrt.builder == ("FP16", "INT8")  # a QDQ model: its scales fix the INT8 layers
    with pytest.raises(PlanforgeError, match="'bf16': TensorRT does not build it"):
        _ = parse("bf16").tensorrt


def test_the_object_answers_what_callers_asked_the_name():
    assert [parse(n).torch_dtype for n in ("fp32", "fp16", "bf16", "int8_weight", "int4_weight")] == [
        "float32",
        "float16",
        "bfloat16",
        "float32",  # int8 weight-only: float32 activations
        "bfloat16",  # int4 (tinygemm): bf16 activations
    ]
    assert (parse("int4_weight").weight_bits, parse("int8_weight").weight_bits, parse("int8").weight_bits) == (
        4,
        8,
        None,
    )
    assert [n for n in PRECISIONS if PRECISIONS[n].is_int8] == [
        "int8",
        "best",
        *(f"int8_{m}" for m in ("minmax", "entropy", "percentile")),
        *(f"int8_{m}_fb" for m in ("minmax", "entropy", "percentile")),
        "int8_weight",
    ]
    assert parse("fp32").is_fp32 and not parse("fp16").is_fp32 and str(parse("int8_entropy")) == "int8_entropy"
    assert parse("int8_entropy").fallback_variant == "int8_entropy_fb" and calibrated("percentile").name == (
        "int8_percentile"
    )
    assert parse("int8_minmax_fb").qdq_variant("u8u8") == "int8_minmax_u8u8_fb"  # the u8u8 keep-float model
    with pytest.raises(ValueError, match="no QDQ model"):
        _ = parse("fp16").fallback_variant
    assert parse(parse("fp16")) is PRECISIONS["fp16"]  # an object passes through: parsed once
    assert known("int3") is None and is_int8_name("int8_plugin") and not is_int8_name("fp16")


def test_the_runner_gets_the_parsed_precision_not_the_name(identity_onnx):
    from workflow_scripts.pipeline import make_runner

    runner = make_runner("onnxruntime", identity_onnx, "yolo", "fp32", "cpu", 1)
    assert isinstance(runner.precision, Precision) and runner.precision is PRECISIONS["fp32"]
    assert runner.facts().precision is runner.precision
    with pytest.raises(PlanforgeError, match="unknown precision 'fp12'"):
        make_runner("onnxruntime", identity_onnx, "yolo", "fp12", "cpu", 1)
