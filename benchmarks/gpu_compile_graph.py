"""torch-compile-graph on a GPU: the pipeline's rows against a bare loop, and D-FINE-X's num_queries.

For yolov8n (`yolov8n.yaml`, seeded random weights) and D-FINE-X (`dfine-x.yaml`) at 640, FP16: prepare the
checkpoint as the workflow does, then for each batch time the pipeline's bench step (`workflow_scripts.bench`,
in this process, the registry's default options) for `torch-cudagraph` (eager forward in a CUDA graph) and
`torch-compile-graph` (inductor's kernels in a CUDA graph), and re-time each with a bare loop
(benchmarks/gpu_bare_loop.py: CUDA events, no runner). For D-FINE-X, first its decoder queries (the seed's
300 → 150 → 100; `models.<m>.num_queries`) at batch 1 on `torch-cudagraph`. The JSON is rewritten after
every row, so a run stopped at its time limit keeps what it measured.

yolov8n needs ultralytics; where it is not importable its rows say so and D-FINE still runs.

    python benchmarks/gpu_compile_graph.py --out results/compile_graph_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script, from any folder: the repo's packages

from benchmarks.gpu_bare_loop import BACKENDS as BARE_BACKENDS  # noqa: E402
from benchmarks.gpu_bare_loop import bare_p50  # noqa: E402
from workflow_scripts.bench import Row, bench  # noqa: E402
from workflow_scripts.config import DEFAULTS  # noqa: E402
from workflow_scripts.core.io import exception_line, run_cli, write_json  # noqa: E402
from workflow_scripts.make_dataset import make_dataset  # noqa: E402
from workflow_scripts.plan.settings import BenchSettings, Stability  # noqa: E402
from workflow_scripts.prepare_checkpoint import prepare_checkpoint  # noqa: E402
from workflow_scripts.runners import BACKENDS  # noqa: E402

MODELS = {  # name: (family, checkpoint)
    "yolov8n": ("yolo", "yolov8n.yaml"),
    "dfine-x": ("dfine", "dfine-x.yaml"),
}
GRAPH_BACKENDS = ("torch-cudagraph", "torch-compile-graph")


def _summary(record: dict) -> dict:
    """The numbers of one bench record that the comparison needs."""
    return {
        "p50_ms": record["latency_ms"]["p50"],
        "p99_ms": record["latency_ms"]["p99"],
        "throughput_items_per_s": record["throughput_items_per_s"],
        "setup_seconds": record["setup_seconds"],
        "iterations": record["iterations"],
        "peak_gpu_bytes": record["memory"]["peak_gpu_bytes"],
        "runner": record["runner"],
    }


class Run:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.a, self.work = args, work
        self.rows: list[dict] = []
        self.dataset = work / "data"
        make_dataset(
            self.dataset, {"kind": "synthetic", "seed": 0, "splits": {"train": 0, "val": 8, "calib": 0}}, split="val"
        )

    def save(self) -> None:
        write_json(
            self.a.out,
            {
                "gpu": torch.cuda.get_device_name(0),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "command": "python benchmarks/gpu_compile_graph.py " + " ".join(sys.argv[1:]),
                "imgsz": self.a.imgsz,
                "precision": "fp16",
                "warmup": self.a.warmup,
                "iterations": self.a.iterations,
                "rows": self.rows,
            },
        )

    def prepare(self, model: str, settings: dict | None = None) -> Path:
        family, checkpoint = MODELS[model]
        tag = "".join(f"_{k}{v}" for k, v in (settings or {}).items())
        out = self.work / f"{model}{tag}.pt"
        if not out.exists():
            prepare_checkpoint(family, Path(checkpoint), out, out.with_suffix(".json"), settings)
        return out

    def pipeline(self, model: str, artifact: Path, backend: str, batch: int) -> dict:
        options = {**BACKENDS[backend].options}
        if backend == "torch-compile-graph":
            options["cache_dir"] = self.a.cache_dir
        if backend.startswith("torch-compile"):
            torch._dynamo.reset()  # a fresh dynamo cache per runner: no recompile limit across rows
        record = bench(
            Row(model, MODELS[model][0], artifact, backend, "fp16", batch, self.dataset, "h200"),
            BenchSettings(
                device="cuda", threads=None, backend_options=options, power="none", gpu=None, imgsz=self.a.imgsz,
                warmup=self.a.warmup, iterations=self.a.iterations, min_seconds=0, conf=0.25,
                stability=Stability(**DEFAULTS["bench"]["stability"]),
            ),
        )  # fmt: skip
        torch.cuda.empty_cache()
        return record

    def row(self, **what) -> dict:
        """Run one measurement (a callable under key `run`), recording a failure as one line, and save."""
        fn = what.pop("run")
        t0 = time.perf_counter()
        try:
            what.update(fn())
            what["status"] = "ok"
        except Exception as exc:  # one row's failure must not lose the others
            what.update(status="failed", error=exception_line(exc), where=traceback.format_exc(limit=-3)[-600:])
        what["wall_s"] = round(time.perf_counter() - t0, 1)
        self.rows.append(what)
        self.save()
        print(json.dumps({k: v for k, v in what.items() if k not in ("runner", "where")})[:400], flush=True)
        torch.cuda.empty_cache()
        return what

    def compare(self, model: str, artifact: Path, batch: int) -> None:
        for backend in self.a.backends:
            record: dict = {}

            def measure(backend=backend, record=record):
                record.update(self.pipeline(model, artifact, backend, batch))
                return {"pipeline": _summary(record)}

            r = self.row(model=model, backend=backend, batch=batch, kind="pipeline", run=measure)
            if r["status"] != "ok" or self.a.no_bare:
                continue

            def bare(record=record):
                if record["backend"].startswith("torch-compile"):
                    torch._dynamo.reset()
                p50 = bare_p50(record, self.a.warmup, self.a.iterations)
                pipe = record["latency_ms"]["p50"]
                return {"bare_p50_ms": p50, "pipeline_p50_ms": pipe, "pipeline_over_bare": round(pipe / p50, 4)}

            self.row(model=model, backend=backend, batch=batch, kind="bare", run=bare)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the JSON to write (rewritten after every row)")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["yolov8n", "dfine-x"])
    p.add_argument("--yolo-batches", type=int, nargs="+", default=[1, 256])
    p.add_argument("--dfine-batches", type=int, nargs="+", default=[1, 32])
    p.add_argument(
        "--num-queries", type=int, nargs="*", default=[300, 150, 100], help="D-FINE-X rows at b1 (none: skip)"
    )
    p.add_argument("--backends", nargs="+", choices=BARE_BACKENDS, default=list(GRAPH_BACKENDS))
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--cache-dir", default="artifacts/inductor_cache", help="inductor's caches (a rerun reuses them)")
    p.add_argument("--no-bare", action="store_true", help="pipeline rows only")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_compile_graph: no CUDA GPU here; run it on the GPU machine")
    with tempfile.TemporaryDirectory(prefix="planforge-compile-graph-") as tmp:
        run = Run(a, Path(tmp))
        for model in a.models:
            prepared = run.row(
                model=model, kind="prepare", run=lambda model=model: {"artifact": str(run.prepare(model))}
            )
            if prepared["status"] != "ok":  # e.g. ultralytics not installed on the GPU machine
                continue
            if model == "dfine-x":  # the quick rows first: a run stopped at its time limit still has them
                for n in a.num_queries:

                    def queries(n=n):
                        artifact = run.prepare("dfine-x", {"num_queries": n})
                        return {"pipeline": _summary(run.pipeline("dfine-x", artifact, "torch-cudagraph", 1))}

                    run.row(
                        model=model, backend="torch-cudagraph", batch=1, num_queries=n, kind="num_queries", run=queries
                    )
            for batch in a.yolo_batches if MODELS[model][0] == "yolo" else a.dfine_batches:
                run.compare(model, Path(prepared["artifact"]), batch)
        run.save()
    print(f"{a.out}: {sum(r['status'] == 'ok' for r in run.rows)} of {len(run.rows)} rows ok")


if __name__ == "__main__":
    run_cli(main)
