"""The fastest CPU path for the YOLOv8n architecture at 640, batch 1, and whether it passes the gate.

Latency: a randomly initialised `yolov8n.yaml` (the architecture is what sets CPU time), exported
like the workflow exports (ultralytics, opset 17, dynamic batch, simplified), quantized like the
workflow quantizes (MinMax on calib-split images, QDQ, decode tail in float), timed by the
workflow's own bench loop (`workflow_scripts.bench.bench`) for each configuration: ONNX Runtime
threads × graph optimisation level, FP32 and INT8; OpenVINO FP32 and INT8.
Accuracy: a random model has no mAP, so each (backend, precision) is gated on the trained demo
model (`artifacts/onnx/yolo-demo/*.onnx`, 320 px, val split) by the workflow's accuracy loop.

    snakemake --cores 2 results/summary.md          # builds the demo artifacts and the dataset first
    python benchmarks/cpu_fastest.py                 # writes docs/measured/cpu/fastest_cpu_yolov8n.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workflow_scripts.accuracy import default_settings, evaluate  # noqa: E402
from workflow_scripts.bench import Row, bench  # noqa: E402
from workflow_scripts.calibrate import calibrate  # noqa: E402
from workflow_scripts.config import DEFAULTS  # noqa: E402
from workflow_scripts.core.envinfo import cpu_int8_instructions, cpu_name, git_commit, library_versions  # noqa: E402
from workflow_scripts.core.io import write_json  # noqa: E402
from workflow_scripts.export import simplify  # noqa: E402
from workflow_scripts.plan.settings import BenchSettings, Stability  # noqa: E402
from workflow_scripts.quantize import quantize  # noqa: E402
from workflow_scripts.runners import backend_available  # noqa: E402
from workflow_scripts.tasks import gate  # noqa: E402

QUANT = {"activation_type": "quint8", "per_channel": True, "reduce_range": False}


def export_random_yolov8n(out: Path, imgsz: int) -> None:
    from workflow_scripts.models.yolo import offline_env

    offline_env()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(prefix="planforge-v8n-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            exported = YOLO("yolov8n.yaml").export(
                format="onnx", imgsz=imgsz, opset=17, dynamic=True, simplify=False, batch=1, device="cpu"
            )
        finally:
            os.chdir(cwd)
        shutil.move(str(Path(tmp) / exported), out)
    simplify(out, "auto")


def configurations(threads: int) -> list[tuple[str, str, int, dict]]:
    """(backend, precision, threads, options) to time."""
    confs = []
    for t in sorted({1, threads}):
        for level in ("basic", "extended", "all"):
            confs.append(("onnxruntime", "fp32", t, {"graph_optimization": level}))
        confs.append(("onnxruntime", "int8_minmax", t, {"graph_optimization": "all"}))
        if backend_available("openvino")[0]:
            for precision in ("fp32", "int8_minmax"):
                confs.append(("openvino", precision, t, {"performance_hint": "LATENCY"}))
    return confs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--dataset", type=Path, default=REPO / "artifacts/data/shapes")
    p.add_argument("--demo", type=Path, default=REPO / "artifacts/onnx/yolo-demo", help="the trained demo's ONNX files")
    p.add_argument("--demo-info", type=Path, default=REPO / "artifacts/checkpoints/yolo-demo.json")
    p.add_argument("--gate", type=float, default=0.95)
    p.add_argument("--out", type=Path, default=REPO / "docs/measured/cpu/fastest_cpu_yolov8n.json")
    a = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="planforge-fastest-"))
    try:
        fp32 = work / "fp32.onnx"
        export_random_yolov8n(fp32, a.imgsz)
        calibrate(
            "yolo", fp32, a.dataset, a.imgsz, "minmax", 16, 2048, 99.99, work / "minmax.ranges.json", work / "minmax.json",
        )  # fmt: skip
        quantize("yolo", fp32, work / "minmax.ranges.json", "minmax", work / "int8_minmax.onnx",
                 work / "int8_minmax.json", [], **QUANT)  # fmt: skip

        # accuracy of each (backend, precision) on the trained demo model, gated against ORT FP32 there
        demo_acc: dict[tuple[str, str], dict] = {}
        for backend in ("onnxruntime", "openvino"):
            if not backend_available(backend)[0]:
                continue
            for precision in ("fp32", "int8_minmax"):
                onnx_file = a.demo / f"{precision}.onnx"
                if not onnx_file.is_file():
                    continue
                s = default_settings(320, threads=a.threads)
                r = evaluate("yolo-demo", "yolo", onnx_file, a.demo_info, backend, precision, a.dataset, "cpu", s)
                demo_acc[(backend, precision)] = r
        base = demo_acc.get(("onnxruntime", "fp32"))
        for r in demo_acc.values():
            gate(r, base, a.gate)

        rows = []
        for backend, precision, threads, options in configurations(a.threads):
            rec = bench(
                Row("yolov8n-random", "yolo", work / f"{precision}.onnx", backend, precision, 1, a.dataset, "cpu"),
                BenchSettings(
                    device="cpu", threads=threads, backend_options=options, power="none", gpu=None, imgsz=a.imgsz,
                    warmup=10, iterations=a.iterations, min_seconds=0, conf=0.25,
                    stability=Stability(**DEFAULTS["bench"]["stability"]),
                ),
            )  # fmt: skip
            acc = demo_acc.get((backend, precision))
            rows.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "threads": threads,
                    "options": options,
                    "p50_ms": rec["latency_ms"]["p50"],
                    "p99_ms": rec["latency_ms"]["p99"],
                    "mean_ms": rec["latency_ms"]["mean"],
                    "demo_map50_95": acc["map50_95"] if acc else None,
                    "demo_ratio_to_fp32": acc["ratio_to_baseline"] if acc else None,
                    "passes_gate": acc["gate"]["passed"] if acc else None,
                    "runner": rec["runner"],
                }
            )
            print(f"{backend} {precision} t{threads} {options}: p50 {rows[-1]['p50_ms']:.1f} ms", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    passing = [r for r in rows if r["passes_gate"]]
    best = min(passing, key=lambda r: r["p50_ms"]) if passing else None
    write_json(
        a.out,
        {
            "what": f"yolov8n architecture (random init) at {a.imgsz}, batch 1, model-only latency; "
            "gate from the trained demo model at 320 on the val split",
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "int8_instructions": cpu_int8_instructions()},
            # the machine is shared: a load average above the core count means other work ran beside the timer
            "load_average_1_5_15_at_end": list(os.getloadavg()),
            "iterations": a.iterations,
            "warmup": 10,
            "gate": a.gate,
            "rows": sorted(rows, key=lambda r: r["p50_ms"]),
            "fastest_passing": best,
            "libraries": library_versions(("onnxruntime", "openvino", "onnx", "ultralytics", "torch")),
            "git_commit": git_commit(),
        },
    )
    if best:
        print(f"fastest passing: {best['backend']} {best['precision']} t{best['threads']} {best['options']}: "
              f"p50 {best['p50_ms']:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
