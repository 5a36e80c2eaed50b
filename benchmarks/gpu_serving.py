"""SAMURAI through Triton's sequence batcher on the GPU machine, without Snakemake (issue 14: "Triton with 8 live
sequences gives ≥ 4× the single-stream throughput").

The same functions the serving rules call: `prepare_checkpoint` and `make_videos` (the checkpoint and data rules),
`build_repository` (rule triton_repository: the tracking model's entry, here with the row's backend, precision and
options), and `perf.run_sweep` with the task's `TrackingSweep` (rule serving: the in-process per-frame reference of the same runner, then
perf_analyzer with `--sequence-length`, concurrency = live sequences). Per row (gpu_samurai.py's rows:
`fp16-compile-graph`, `fp16-graph`) one repository and one server; before the sweep, one unmeasured perf_analyzer
pass over the same concurrencies lets the stub capture / compile its graphs for every batch of live sequences.
The serving environment is a prepared one (`--env`: `benchmarks/triton_kit.py install`). The JSON (rewritten
after every row) has per row the frames/s per concurrency and the ratio of the top concurrency to 1.

    python benchmarks/gpu_serving.py --env /tmp/triton-env --out results/serving_h200.json
    python benchmarks/gpu_serving.py --env /tmp/triton-env --model samurai-tiny --device cpu --rows fp32 \\
        --concurrency 1 2 --frame-size 96 --frames 8 --out /tmp/serving_cpu.json        # a CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script, from any folder: the repo's packages

from benchmarks.rows import TRACKER_HELP, header, run_row  # noqa: E402
from benchmarks.triton_kit import interpreter_first_on_path  # noqa: E402
from workflow_scripts.config import DEFAULTS  # noqa: E402
from workflow_scripts.core.io import PlanforgeError, run_cli, write_json  # noqa: E402
from workflow_scripts.plan.settings import ServingSettings  # noqa: E402
from workflow_scripts.prepare_checkpoint import prepare_checkpoint  # noqa: E402
from workflow_scripts.runners import BACKENDS  # noqa: E402
from workflow_scripts.serving.coserving import run_coserving  # noqa: E402
from workflow_scripts.serving.env import ensure  # noqa: E402
from workflow_scripts.serving.perf import perf_analyzer, run_sweep  # noqa: E402
from workflow_scripts.serving.repository import build_repository  # noqa: E402
from workflow_scripts.serving.served import triton_models_of  # noqa: E402
from workflow_scripts.serving.server import fresh_log, serve  # noqa: E402
from workflow_scripts.serving.tracking import TrackingSweep, write_perf_input  # noqa: E402
from workflow_scripts.tasks.tracking import make_videos  # noqa: E402
from workflow_scripts.tasks.vla import EPISODE_DEFAULTS, make_episodes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = {"samurai-t": "samurai-t.yaml", "samurai-l": "samurai-l.yaml", "samurai-tiny": "samurai-tiny.yaml",
               "samurai-demo": str(REPO / "weights/samurai-demo.pt")}  # fmt: skip
# (backend, precision, option overrides), as gpu_samurai.py's rows
ROWS = {
    "fp32": ("torch", "fp32", {}),
    "fp16": ("torch", "fp16", {}),
    "fp32-compile": ("torch-compile", "fp32", {"compile_mode": "default"}),  # inductor in the stub, on any device
    "fp16-graph": ("torch-cudagraph", "fp16", {}),
    "fp16-compile-graph": ("torch-compile-graph", "fp16", {"cache_dir": None}),
}


class Run:
    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        self.a, self.work = a, work
        self.rows: list[dict] = []
        self.env = ensure(a.env)

    def save(self) -> None:
        write_json(
            self.a.out,
            {
                **header("gpu_serving.py", self.a.device),
                "model": self.a.model,
                "checkpoint": CHECKPOINTS[self.a.model],
                "tracker_settings": self.a.tracker,
                "clips": {"val": self.a.clips, "frames": self.a.frames, "frame_size": self.a.frame_size},
                "serving": self.serving(),
                "sweep": self.sweep_settings(),
                "serving_environment": {"root": str(self.env.root), "versions": self.env.versions()},
                "rows": self.rows,
            },
        )

    def serving(self) -> dict:
        """The repository's serving settings: the config defaults, `max_batch_size` = the most live sequences."""
        d, top = DEFAULTS["serving"], max(self.a.concurrency)
        return {
            "max_batch_size": top,
            "max_queue_delay_us": d["max_queue_delay_us"],
            "preferred_batch_sizes": [b for b in d["preferred_batch_sizes"] if b <= top],
            "instances": self.a.instances,  # model instances (stub processes), each with its own trackers
            # long enough for a first frame that compiles: Triton forgets a sequence idle for longer, and its next
            # frame (no START) is refused
            "sequence_idle_us": int(self.a.sequence_idle_s * 1e6),
            "onnx_backend": d["onnx_backend"],
            # the detection ensemble's thresholds, as Plan.triton_settings gives them
            "conf": DEFAULTS["bench"]["conf"],
            "iou": DEFAULTS["accuracy"]["iou"],
            "max_det": DEFAULTS["accuracy"]["max_det"],
        }

    def sweep_settings(self) -> dict:
        keys = ("concurrency", "instances", "protocol", "requests", "warmup_requests", "stability", "max_trials")
        keys += ("threads",)
        return {k: getattr(self.a, k) for k in keys}

    def prepare(self) -> tuple[Path, Path]:
        dataset = self.work / "clips"
        if not dataset.exists():
            settings = {"seed": 0, "splits": {"val": self.a.clips}, "frames": self.a.frames,
                        "frame_size": self.a.frame_size, "distractors": 2}  # fmt: skip
            make_videos(dataset, settings, "val")
        artifact = self.work / f"{self.a.model}.pt"
        if not artifact.exists():
            prepare_checkpoint(
                "samurai",
                Path(CHECKPOINTS[self.a.model]),
                artifact,
                self.work / f"{self.a.model}.json",
                {"tracker": self.a.tracker or None},
            )
        return dataset, artifact

    def row(self, name: str) -> dict:
        backend, precision, extra = ROWS[name]
        dataset, artifact = self.prepare()
        options = {**BACKENDS[backend].options, "channels_last": False, **extra}
        model = {"family": "samurai", "checkpoint": str(artifact), "backend": backend, "precision": precision,
                 "backend_options": options}  # fmt: skip
        repository = self.work / f"repo-{name}"
        index = build_repository(repository, "h200", self.a.device, self.a.threads, {self.a.model: model},
                                 self.serving(), DEFAULTS["accuracy"])  # fmt: skip
        entry = index["models"][self.a.model]
        log = self.a.out.with_suffix(f".{name}.tritonserver.log")
        fresh_log(log)
        t0 = time.perf_counter()
        try:
            with serve(self.env, repository, log, timeout=self.a.startup_timeout,
                       models=triton_models_of(entry)) as server:  # fmt: skip
                started = time.perf_counter() - t0
                warm = self.warm_up(server, entry["model"], dataset) if self.a.warmup_requests else None
                settings = ServingSettings(
                    concurrency=self.a.concurrency, protocols=[self.a.protocol], requests=self.a.requests,
                    stability_percentage=self.a.stability, max_trials=self.a.max_trials,
                    startup_timeout_s=self.a.startup_timeout, http_port=None, grpc_port=None,
                )  # fmt: skip
                sweep = TrackingSweep(repository, index, self.a.model, "h200", dataset, settings)
                record = run_sweep(sweep, log, env_dir=self.a.env, server=server)
        except PlanforgeError as exc:  # the row's line with the server log's first error (the stub's reason)
            first = next((ln for ln in log.read_text().splitlines() if "] ERROR" in ln or "Failed to" in ln), "")
            head = str(exc).splitlines()[0].rstrip(":;")
            raise PlanforgeError(f"{head}; {first.split('] ', 1)[-1]}" if first else str(exc)) from None
        sweep = {r["concurrency"]: r for r in record["sweep"]}
        lo, hi = min(sweep), max(sweep)
        return {
            "frames_per_s": {c: r["throughput_infer_per_s"] for c, r in sweep.items()},
            "p50_ms": {c: r["latency_ms"]["p50"] for c, r in sweep.items()},
            "p99_ms": {c: r["latency_ms"]["p99"] for c, r in sweep.items()},
            "stable": {c: r["stable"] for c, r in sweep.items()},
            f"ratio_{hi}_vs_{lo}": round(sweep[hi]["throughput_infer_per_s"] / sweep[lo]["throughput_infer_per_s"], 3),
            "in_process_frame_p50_ms": record["in_process_reference"]["frame_ms"]["p50"],
            "in_process_frames_per_s": round(1000.0 / record["in_process_reference"]["frame_ms"]["p50"], 1),
            "server_start_s": round(started, 1),
            "warm_up": warm,
            "backend_options": options,
            "record": record,
        }

    def coserving(self) -> dict:
        """Pi0 (`--pi0` on `--pi0-backend` / `--pi0-precision`, default BF16 in one CUDA graph with fused projections)
        and the YOLO ensemble on `--yolo-onnx` (ONNX Runtime in a python model) in one server:
        `serving.coserving.run_coserving` (rule serving_coserving)."""
        from workflow_scripts.core.data import SyntheticSpec, make_synthetic_dataset

        episodes, shapes = self.work / "episodes", self.work / "shapes"
        settings = {"seed": 0, "splits": {"val": 4}, "cameras": self.a.cameras, "camera_size": 224}
        make_episodes(episodes, settings, "val")
        make_synthetic_dataset(shapes, SyntheticSpec(seed=0, train=0, val=2, calib=0), False, ("val",))
        pi0 = self.work / "pi0.pt"
        t0 = time.perf_counter()
        prepare_checkpoint("pi0", Path(self.a.pi0), pi0, self.work / "pi0.json")
        built = time.perf_counter() - t0
        models = {
            "pi0": {"family": "pi0", "checkpoint": str(pi0),
                    "episodes": {k: settings.get(k, v) for k, v in EPISODE_DEFAULTS.items()},
                    "backend": self.a.pi0_backend, "precision": self.a.pi0_precision,
                    "backend_options": self.a.pi0_options},
            "yolo": {"family": "yolo", "imgsz": self.a.yolo_imgsz, "onnx": {"fp32": str(self.a.yolo_onnx)}},
        }  # fmt: skip
        repository = self.work / "repo-coserving"
        build_repository(repository, "h200", self.a.device, self.a.threads, models, self.serving(),
                         DEFAULTS["accuracy"])  # fmt: skip
        log = self.a.out.with_suffix(".coserving.tritonserver.log")
        record = run_coserving(repository, "h200", "pi0", episodes, "yolo", shapes, log, min(self.a.concurrency),
                               self.a.protocol, self.a.startup_timeout, env_dir=self.a.env)  # fmt: skip
        return {"pi0_checkpoint_build_s": round(built, 1), "yolo_onnx_bytes": Path(self.a.yolo_onnx).stat().st_size,
                "record": record}  # fmt: skip

    def warm_up(self, server, served: str, dataset: Path) -> dict:
        """One unmeasured perf_analyzer pass per concurrency: the stub compiles / captures each batch's graphs."""
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="planforge-warm-") as tmp:
            _, length = write_perf_input(dataset, Path(tmp) / "sequences.json")
            extra = ("--sequence-length", str(length), "--sequence-length-variation", "0", "--serial-sequences")
            for c in self.a.concurrency:
                perf_analyzer(self.env, server, served, self.a.protocol, c, self.a.warmup_requests,
                              str(Path(tmp) / "sequences.json"), None, Path(tmp), 10000, 1, extra)  # fmt: skip
        return {"requests_per_concurrency": self.a.warmup_requests, "seconds": round(time.perf_counter() - t0, 1)}


def make_yolo_onnx(out: Path, arch: str = "yolov8n.yaml", imgsz: int = 640) -> dict:
    """Here (ultralytics installed): the YOLO ONNX the co-serving row carries, through the export step's own code
    (`workflow_scripts.export.export`: dynamic batch, simplified, checked against torch on 2 synthetic images)."""
    from workflow_scripts.core.data import SyntheticSpec, make_synthetic_dataset
    from workflow_scripts.export import export

    e = DEFAULTS["export"]
    with tempfile.TemporaryDirectory(prefix="planforge-yolo-") as tmp:
        tmp = Path(tmp)
        make_synthetic_dataset(tmp / "shapes", SyntheticSpec(seed=0, train=0, val=2, calib=0), False, ("val",))
        prepare_checkpoint("yolo", Path(arch), tmp / "yolo.pt", tmp / "yolo.json")
        return export("yolo", tmp / "yolo.pt", tmp / "shapes", out, out.with_suffix(".json"), imgsz, e["opset"],
                      e["dynamic_batch"], e["simplify"], 2, e["max_abs_error"])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", type=Path, default=os.environ.get("PLANFORGE_TRITON_ENV"),
                   help="the serving environment (triton_kit.py install --env)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="the JSON (rewritten after every row)")
    p.add_argument("--model", default="samurai-t", choices=list(CHECKPOINTS))
    p.add_argument("--tracker", type=json.loads, default={}, help=TRACKER_HELP)
    p.add_argument("--rows", nargs="*", default=["fp16-compile-graph", "fp16-graph"], choices=list(ROWS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="live sequences")
    p.add_argument("--instances", type=int, default=1, help="model instances (stub processes: no shared GIL)")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    p.add_argument("--requests", type=int, default=200, help="requests per perf_analyzer window")
    p.add_argument("--warmup-requests", type=int, default=100, help="0: no warm-up pass")
    p.add_argument("--stability", type=float, default=15)
    p.add_argument("--max-trials", type=int, default=6)
    p.add_argument("--clips", type=int, default=2, help="val sequences (perf_analyzer replays the first)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--frame-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--startup-timeout", type=float, default=300)
    p.add_argument("--sequence-idle-s", type=float, default=600, help="max_sequence_idle: above any compile time")
    p.add_argument("--coserving", action="store_true", help="also Pi0 + the YOLO ensemble in one server")
    p.add_argument("--pi0", default="pi0.yaml", help="the Pi0 checkpoint (pi0.yaml: 3.5 B, seeded random weights)")
    p.add_argument("--pi0-backend", default="torch-cudagraph", help="the served Pi0's backend (torch: FP32 eager)")
    p.add_argument("--pi0-precision", default="bf16")
    p.add_argument("--pi0-options", type=json.loads, default={"channels_last": False, "fuse_projections": True},
                   help="the served Pi0's backend options, JSON")  # fmt: skip
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--yolo-onnx", type=Path, default=Path(".kit/yolov8n-640.onnx"), help="made by --make-yolo-onnx")
    p.add_argument("--yolo-imgsz", type=int, default=640)
    p.add_argument("--make-yolo-onnx", type=Path, default=None, help="here: only write this YOLO ONNX and exit")
    a = p.parse_args(argv)
    if a.make_yolo_onnx:
        r = make_yolo_onnx(a.make_yolo_onnx, imgsz=a.yolo_imgsz)
        print(
            f"{a.make_yolo_onnx}: {r['size_bytes'] / 2**20:.1f} MiB, max abs error vs torch {r['check']['max_abs_error']:.3g}"
        )
        return
    if a.out is None:
        raise PlanforgeError("--out: name the JSON to write")
    if a.coserving and not a.yolo_onnx.is_file():
        raise PlanforgeError(f"--yolo-onnx {a.yolo_onnx}: missing; make it with --make-yolo-onnx and carry it")
    if a.env is None:
        raise PlanforgeError("--env: name the serving environment (benchmarks/triton_kit.py install --env DIR)")
    if not ensure_ready(a.env):
        raise PlanforgeError(f"{a.env}: not a ready serving environment; run benchmarks/triton_kit.py install first")
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_serving: no CUDA GPU here; run it on the GPU machine (or --device cpu)")
    interpreter_first_on_path()  # the stubs' embedded Python: this interpreter's home
    with tempfile.TemporaryDirectory(prefix="planforge-serving-") as tmp:
        run = Run(a, Path(tmp))
        for name in a.rows:
            if ROWS[name][0].startswith("torch-compile"):
                torch._dynamo.reset()
            run_row(run.rows, run.save, kind="serving", model=a.model, row=name, backend=ROWS[name][0],
                    precision=ROWS[name][1], run=lambda name=name: run.row(name))  # fmt: skip
        if a.coserving:
            run_row(run.rows, run.save, kind="coserving", model="pi0+yolo", backend=a.pi0_backend, precision=a.pi0_precision,
                    run=run.coserving)  # fmt: skip
        run.save()
    print(f"{a.out}: {sum(r['status'] == 'ok' for r in run.rows)} of {len(run.rows)} rows ok")


def ensure_ready(root: Path) -> bool:
    """A kit-installed environment is ready as it stands (`ensure` would otherwise try PyPI)."""
    from workflow_scripts.serving.env import TritonEnv

    return TritonEnv(Path(root).resolve()).ready()


if __name__ == "__main__":
    run_cli(main)
