"""What bounds a GPU row: torch.profiler over replays of the bare loop's forward (kernel time, launches, top kernels).

For yolov8n (`yolov8n.yaml`, seeded random weights) at 640 FP16 channels_last, per backend and batch:

    python benchmarks/gpu_profile_rows.py --backends torch-compile-graph --batches 256 512 --out X.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu_bare_loop import BACKENDS, profile  # noqa: E402
from workflow_scripts.core.io import run_cli, write_json  # noqa: E402
from workflow_scripts.prepare_checkpoint import prepare_checkpoint  # noqa: E402
from workflow_scripts.runners.torch_runner import inductor_options  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=["torch-compile-graph"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--compile-mode", default="default", help="torch-compile-graph's compile_mode")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_profile_rows: no CUDA GPU here")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "yolov8n.pt"
        prepare_checkpoint("yolo", Path("yolov8n.yaml"), ckpt, ckpt.with_suffix(".json"))
        for backend in a.backends:
            for batch in a.batches:
                runner = {"channels_last": "True", "compile_mode": a.compile_mode}
                if backend == "torch-compile-graph":
                    runner["inductor_options"] = json.dumps(inductor_options(a.compile_mode))
                record = {"model": "yolov8n-640", "family": "yolo", "precision": "fp16", "artifact": str(ckpt)}
                record["imgsz"] = a.imgsz
                record.update(backend=backend, batch=batch, runner=runner)
                torch._dynamo.reset()
                row = {"backend": backend, "batch": batch, "compile_mode": a.compile_mode, **profile(record)}
                rows.append(row)
                write_json(a.out, {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows})
                print(json.dumps(row)[:1500], flush=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    run_cli(main)
