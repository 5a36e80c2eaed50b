"""SAMURAI on a GPU: one frame of each live sequence per timed call, through the pipeline's own bench and accuracy
steps (the same code the DAG's jobs run for `config/server.yaml`'s server-track target, without Snakemake: the lent GPU machine
has no Snakemake).

For each model: make its clips (`make_videos`), prepare its checkpoint (`samurai-t.yaml` / `samurai-l.yaml`: the
published SAM 2.1 Hiera sizes at 1024 px with seeded random weights; `samurai-demo`: the trained tiny tracker at
128 px, whose success AUC means something), then for each row (backend, precision, options) run the bench step
(`workflow_scripts.bench.bench`: warm-up, timed loop, stability verdict; per-frame latency by the host clock,
the prompt frame timed apart, memory per live sequence, how each per-frame part ran) and the accuracy step
(`workflow_scripts.accuracy.evaluate`: OTB success AUC on the clips; the ratio to the torch FP32 eager row).

Rows: torch eager FP32 / FP16 / BF16; the per-frame parts replayed from CUDA graphs (`torch-cudagraph`);
inductor's kernels of the fixed-shape parts in CUDA graphs (`torch-compile-graph`); compiled without graphs
(`torch-compile`, compile mode default). The JSON is rewritten after every row.

    python benchmarks/gpu_samurai.py --models samurai-t samurai-l --out results/samurai_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script, from any folder: the repo's packages

from benchmarks.rows import TRACKER_HELP, checked, header, row_arguments, run_row  # noqa: E402
from workflow_scripts.accuracy import default_settings, evaluate  # noqa: E402
from workflow_scripts.bench import Row, bench  # noqa: E402
from workflow_scripts.config import DEFAULTS  # noqa: E402
from workflow_scripts.core.io import run_cli, write_json  # noqa: E402
from workflow_scripts.plan.settings import BenchSettings, Stability  # noqa: E402
from workflow_scripts.prepare_checkpoint import prepare_checkpoint  # noqa: E402
from workflow_scripts.runners import BACKENDS  # noqa: E402
from workflow_scripts.tasks.tracking import make_videos  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# model → (checkpoint, clips: frame size, frames per clip)
MODELS = {
    "samurai-t": ("samurai-t.yaml", 1024, 48),
    "samurai-l": ("samurai-l.yaml", 1024, 48),
    "samurai-demo": (str(REPO / "weights/samurai-demo.pt"), 160, 24),
}
# (backend, precision, option overrides); fp32 is the accuracy reference
ROWS = {
    "fp32": ("torch", "fp32", {}),
    "fp16": ("torch", "fp16", {}),
    "bf16": ("torch", "bf16", {}),
    "fp16-graph": ("torch-cudagraph", "fp16", {}),
    "fp32-graph": ("torch-cudagraph", "fp32", {}),
    "fp16-compile": ("torch-compile", "fp16", {"compile_mode": "default"}),
    "fp16-compile-graph": ("torch-compile-graph", "fp16", {"cache_dir": None}),
}


class Run:
    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        self.a, self.work = a, work
        self.rows: list[dict] = []

    def save(self) -> None:
        write_json(
            self.a.out,
            {
                **header("gpu_samurai.py", self.a.device),
                "models": {m: MODELS[m] for m in self.a.models},
                "tracker_settings": self.a.tracker,
                "clips": self.a.clips,
                "warmup": self.a.warmup,
                "iterations": self.a.iterations,
                "rows": self.rows,
            },
        )

    def prepare(self, model: str) -> tuple[Path, Path, Path]:
        checkpoint, size, frames = MODELS[model]
        dataset = self.work / f"clips-{size}"
        if not dataset.exists():
            settings = {"seed": 0, "splits": {"val": self.a.clips}, "frames": frames, "frame_size": size}
            make_videos(dataset, {**settings, "distractors": 2}, "val")
        artifact, info = self.work / f"{model}.pt", self.work / f"{model}.json"
        if not artifact.exists():
            prepare_checkpoint("samurai", Path(checkpoint), artifact, info, {"tracker": self.a.tracker or None})
        return dataset, artifact, info

    def options(self, backend: str, extra: dict) -> dict:
        return {**BACKENDS[backend].options, "channels_last": False, **extra}

    def bench(self, model: str, name: str, batch: int) -> dict:
        backend, precision, extra = ROWS[name]
        if backend.startswith("torch-compile"):
            torch._dynamo.reset()  # a fresh dynamo cache per runner: no recompile limit across rows
        dataset, artifact, _ = self.prepare(model)
        r = bench(
            Row(model, "samurai", artifact, backend, precision, batch, dataset, "h200"),
            BenchSettings(
                device=self.a.device, threads=self.a.threads, backend_options=self.options(backend, extra),
                power="nvml" if self.a.device == "cuda" else "none", gpu=None, imgsz=0, warmup=self.a.warmup,
                iterations=self.a.iterations, min_seconds=self.a.min_seconds, conf=0.25,
                stability=Stability(**DEFAULTS["bench"]["stability"]),
            ),
        )  # fmt: skip
        lat = r["latency_ms"]
        return {
            "p50_ms": lat["p50"],
            "p90_ms": lat["p90"],
            "p99_ms": lat["p99"],
            "fps_per_stream": round(1000.0 * batch / lat["p50"], 1) if batch == 1 else None,
            "frames_per_s": round(1000.0 * batch / lat["p50"], 1),
            "prompt_p50_ms": r["prompt_ms"]["p50"],
            "state_bytes": r["state_bytes"],
            "gpu_bytes_per_sequence": r["gpu_bytes_per_sequence"],
            "tracker": r.get("tracker"),
            "stable": r["stable"],
            "peak_gpu_bytes": r["memory"].get("peak_gpu_bytes"),
            "record": r,
        }

    def accuracy(self, model: str, name: str) -> dict:
        backend, precision, extra = ROWS[name]
        if backend.startswith("torch-compile"):
            torch._dynamo.reset()
        dataset, artifact, info = self.prepare(model)
        s = default_settings(
            0, self.a.device, self.a.threads, batch=1, backend_options=self.options(backend, extra), power="none",
            gpu=None,
        )  # fmt: skip
        r = evaluate(model, "samurai", artifact, info, backend, precision, dataset, "h200", s)
        out = {k: r[k] for k in ("sequences", "frames", "auc", "precision_20", "norm_precision", "tracked_fps")}
        ref = next((x for x in self.rows if x.get("model") == model and x.get("row") == "fp32" and "auc" in x), None)
        out["auc_ratio_to_fp32"] = round(out["auc"] / ref["auc"], 4) if ref and ref["auc"] else None
        out["per_sequence_auc"] = [p["auc"] for p in r["per_sequence"]]
        return out

    def profile(self, model: str, name: str, frames: int = 100) -> dict:
        """Where a tracked frame's host time goes: cProfile over `frames` frames of one live sequence, after as
        many warm-up frames (graphs captured, kernels compiled); the top functions by own and cumulative time are
        written beside the JSON (`<out>.<model>.<row>.profile.txt`)."""
        import cProfile
        import io
        import pstats
        import time

        from workflow_scripts.models import samurai
        from workflow_scripts.pipeline import make_runner
        from workflow_scripts.tasks import tracking

        backend, precision, extra = ROWS[name]
        if backend.startswith("torch-compile"):
            torch._dynamo.reset()
        dataset, artifact, _ = self.prepare(model)
        runner = make_runner(backend, artifact, "samurai", precision, self.a.device, self.a.threads,
                             self.options(backend, extra))  # fmt: skip
        vids = tracking.load_videos(dataset, "val")
        t = samurai.tracker(runner.facts())
        t.start(vids.frames[0, 0], vids.boxes[0, 0])
        order = tracking.pingpong_order(vids.frames.shape[1])
        for _ in range(frames):
            t.track(vids.frames[0, next(order)])
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(frames):
            t.track(vids.frames[0, next(order)])
        prof.disable()
        ms = (time.perf_counter() - t0) * 1000 / frames
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(60)
        fns = getattr(t.model, "planforge_parts", {}).get("fns", {})
        device_ms = {k: f.replay_ms() for k, f in fns.items() if hasattr(f, "replay_ms")}
        path = self.a.out.with_suffix(f".{model}.{name}.profile.txt")
        path.write_text(f"{model} {name}: {frames} frames, {ms:.3f} ms per frame under cProfile\n" + text.getvalue())
        return {
            "ms_per_frame_profiled": round(ms, 3),
            "part_replay_device_ms": device_ms,  # each part's latest graph replayed alone
            "tracker": samurai.parts_record(t.model),
            "profile": path.name,
        }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    row_arguments(p, ROWS, ["fp16", "fp16-graph", "fp16-compile-graph"], ["fp32", "fp16", "fp16-graph"], 20, 100)
    p.add_argument("--models", nargs="+", default=["samurai-t", "samurai-l"], choices=list(MODELS))
    p.add_argument("--tracker", type=json.loads, default={}, help=TRACKER_HELP)
    p.add_argument("--profile", nargs="*", default=[], choices=list(ROWS), help="cProfile of these rows' frames")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="live sequences per timed call")
    p.add_argument("--clips", type=int, default=4)
    a = checked(p.parse_args(argv), "gpu_samurai")
    with tempfile.TemporaryDirectory(prefix="planforge-samurai-") as tmp:
        run = Run(a, Path(tmp))
        for model in a.models:
            for name in a.accuracy:
                run_row(run.rows, run.save, kind="accuracy", model=model, row=name, backend=ROWS[name][0],
                        precision=ROWS[name][1], run=lambda model=model, name=name: run.accuracy(model, name))  # fmt: skip
            for name in a.bench:
                for batch, _ in ((b, n) for b in a.batches for n in range(a.repeat)):
                    run_row(run.rows, run.save, kind="bench", model=model, row=name, backend=ROWS[name][0],
                            precision=ROWS[name][1], batch=batch,
                            run=lambda model=model, name=name, batch=batch: run.bench(model, name, batch))  # fmt: skip
            for name in a.profile:
                run_row(run.rows, run.save, kind="profile", model=model, row=name, backend=ROWS[name][0],
                        precision=ROWS[name][1], run=lambda model=model, name=name: run.profile(model, name))  # fmt: skip
        run.save()
    print(f"{a.out}: {sum(r['status'] == 'ok' for r in run.rows)} of {len(run.rows)} rows ok")


if __name__ == "__main__":
    run_cli(main)
