"""By-hand run of the fallback search on dfine-demo with a stricter gate (the default passes on this VNNI CPU)."""

import json
import sys
import time
from pathlib import Path

import yaml

from workflow_scripts.config import validate
from workflow_scripts.core.io import read_json, write_json
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.sensitivity import fallback
from workflow_scripts.tasks import gate

g = float(sys.argv[1])
model = sys.argv[2] if len(sys.argv) > 2 else "dfine-demo"
cfg = yaml.safe_load(open("config/config.yaml"))
cfg["accuracy"]["gate"] = g
plan = Plan(validate(cfg))
qdq = "int8_minmax"
s = plan.fallback_settings(model, qdq)
inp = plan.fallback_inputs(model, qdq)
row = read_json(inp["accuracy"])
base = read_json(inp["baseline"][0])
row = gate(row, base, g, None)
out = Path(f"/tmp/fbexp/{model}_{g}")
out.mkdir(parents=True, exist_ok=True)
write_json(out / "row.json", row)
t = time.time()
r = fallback(
    plan.family(model),
    model,
    Path(f"artifacts/onnx/{model}/fp32.onnx"),
    Path(f"artifacts/onnx/{model}/{qdq}.onnx"),
    Path(f"artifacts/calib/{model}/minmax.ranges.json"),
    "minmax",
    Path(plan.dataset_dir(model)),
    Path(f"artifacts/checkpoints/{model}.json"),
    out / "row.json",
    Path(inp["baseline"][0]),
    s,
    out / "fb.onnx",
    out / "fb.json",
)
print(json.dumps({k: r[k] for k in ("reason", "keep_float", "after", "runs", "seconds")}, indent=1)[:3000])
print("ranking top:", r["ranking"][:6])
print("wall", round(time.time() - t, 1))
