"""dfine-demo / yolo-demo INT8 MinMax as U8U8 (the plan for an AVX2 target), scored on this (VNNI) machine."""

import sys
from pathlib import Path

import yaml

from workflow_scripts.accuracy import evaluate
from workflow_scripts.config import validate
from workflow_scripts.core.io import read_json
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.quantize import quantize
from workflow_scripts.tasks import gate

cfg = yaml.safe_load(open("config/config.yaml"))
cfg["targets"]["cpu"]["cpu_isa"] = "avx2"
plan = Plan(validate(cfg))
for model in sys.argv[1:]:
    q = plan.quantize_settings(model, "int8_minmax_u8u8")
    out = Path(f"/tmp/u8u8/{model}.onnx")
    out.parent.mkdir(exist_ok=True)
    quantize(
        plan.family(model),
        Path(f"artifacts/onnx/{model}/fp32.onnx"),
        Path(f"artifacts/calib/{model}/minmax.ranges.json"),
        "minmax",
        out,
        out.with_suffix(".json"),
        q.keep_float,
        q.activation_type,
        q.per_channel,
        q.reduce_range,
        q.weight_type,
        q.scheme,
        q.isa,
    )
    s = plan.accuracy_settings("cpu", model, "onnxruntime")
    r = evaluate(
        model,
        plan.family(model),
        out,
        Path(f"artifacts/checkpoints/{model}.json"),
        "onnxruntime",
        "int8_minmax",
        Path(plan.dataset_dir(model)),
        "cpu",
        s,
    )
    r = gate(r, read_json(f"results/cpu/accuracy/{model}/torch_fp32.json"), s.gate, s.error_tolerance)
    print(
        model,
        "U8U8 on this CPU:",
        r["map50_95"],
        r["ratio_to_baseline"],
        r["gate"]["passed"],
        read_json(out.with_suffix(".json"))["int8"]["choice"],
    )
