"""Full-size Pi0 on a GPU: one action chunk per timed call, through the pipeline's own bench and accuracy steps.

For each camera count: make the episodes (`make_episodes`, 224 px), prepare the `pi0.yaml` checkpoint (the
default `PI0Config()`, about 3.5 B parameters, seeded random weights), then for each (backend, precision,
options) row run the bench step (`workflow_scripts.bench.bench`: warm-up, timed loop, stability verdict,
CUDA events) and the accuracy step (`workflow_scripts.accuracy.evaluate`: the action error against the
torch FP32 eager actions of the same episodes and noise). Rows: torch FP32 / BF16 eager, the whole chunk
(prefix + 10 denoising steps) in one CUDA graph (`torch-cudagraph` BF16), torchao INT4 / INT8 weight-only
(eager and in a CUDA graph). Weight memory is the bytes the weights take as stored (`memory.weight_bytes`).

The model is built once per camera count and copied for each row (the pipeline's jobs build it from the
seed in each job; here that would cost ~30 s of CPU per row). The JSON is rewritten after every row, so a run
stopped at its time limit keeps what it measured.

    python benchmarks/gpu_pi0.py --cameras 1 --out results/pi0_h200_1cam.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script, from any folder: the repo's packages

from benchmarks.rows import checked, header, row_arguments, run_row  # noqa: E402
from workflow_scripts.accuracy import default_settings, evaluate  # noqa: E402
from workflow_scripts.bench import Row, bench  # noqa: E402
from workflow_scripts.config import DEFAULTS  # noqa: E402
from workflow_scripts.core.io import run_cli, write_json  # noqa: E402
from workflow_scripts.models import pi0  # noqa: E402
from workflow_scripts.plan.settings import BenchSettings, Stability  # noqa: E402
from workflow_scripts.prepare_checkpoint import prepare_checkpoint  # noqa: E402
from workflow_scripts.runners import BACKENDS  # noqa: E402
from workflow_scripts.tasks.vla import make_episodes  # noqa: E402

# (backend, precision, option overrides); the first is the accuracy reference
ROWS = {
    "fp32": ("torch", "fp32", {}),
    "bf16": ("torch", "bf16", {}),
    "bf16-graph": ("torch-cudagraph", "bf16", {}),
    "fp16-graph": ("torch-cudagraph", "fp16", {}),
    "bf16-compile-graph": ("torch-compile-graph", "bf16", {"cache_dir": None}),
    # q/k/v and gate/up as one GEMM each (core.fusion): 3 of each layer's 7 GEMM launches fewer
    "bf16-graph-fused": ("torch-cudagraph", "bf16", {"fuse_projections": True}),
    "bf16-compile-graph-fused": ("torch-compile-graph", "bf16", {"cache_dir": None, "fuse_projections": True}),
    "int4": ("torchao", "int4_weight", {}),
    "int4-graph": ("torchao", "int4_weight", {"cuda_graph": True}),
    # torchao's int4 alone: linears tinygemm can take, nothing else (SigLIP's 4304-wide MLP and the embeddings stay BF16)
    "int4-linear-graph": (
        "torchao",
        "int4_weight",
        {"cuda_graph": True, "int4_fallback": "none", "embeddings": "none"},
    ),
    "int8": ("torchao", "int8_weight", {}),
    "int8-graph": ("torchao", "int8_weight", {"cuda_graph": True}),
}


class Run:
    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        self.a, self.work = a, work
        self.rows: list[dict] = []
        self.dataset = work / "episodes"
        make_episodes(
            self.dataset, {"seed": 0, "splits": {"val": a.episodes}, "cameras": a.cameras, "camera_size": 224}, "val"
        )
        self.artifact = work / "pi0.pt"
        prepare_checkpoint("pi0", Path(a.checkpoint), self.artifact, work / "pi0.json")
        t0 = time.perf_counter()
        master = pi0.load_torch(self.artifact)
        self.build_seconds = round(time.perf_counter() - t0, 1)
        self.parameters = sum(p.numel() for p in master.parameters())
        load = pi0.load_torch
        pi0.load_torch = lambda checkpoint, device="cpu": copy.deepcopy(master).to(device)  # built once, copied
        self._restore = lambda: setattr(pi0, "load_torch", load)
        self.reference = work / "reference.actions.npz"

    def save(self) -> None:
        write_json(
            self.a.out,
            {
                **header("gpu_pi0.py", self.a.device),
                "checkpoint": f"{self.a.checkpoint} (seeded random weights)",
                "parameters": self.parameters,
                "build_seconds_cpu": self.build_seconds,
                "cameras": self.a.cameras,
                "warmup": self.a.warmup,
                "iterations": self.a.iterations,
                "rows": self.rows,
            },
        )

    def row(self, **what) -> dict:
        return run_row(self.rows, self.save, **what)

    def options(self, backend: str, extra: dict) -> dict:
        return {**BACKENDS[backend].options, "channels_last": False, **extra}

    def bench(self, name: str, batch: int) -> dict:
        backend, precision, extra = ROWS[name]
        if backend.startswith("torch-compile"):
            torch._dynamo.reset()  # a fresh dynamo cache per runner: no recompile limit across rows
        r = bench(
            Row(f"pi0-{self.a.cameras}cam", "pi0", self.artifact, backend, precision, batch, self.dataset, "h200"),
            BenchSettings(
                device=self.a.device, threads=self.a.threads, backend_options=self.options(backend, extra),
                power="nvml" if self.a.device == "cuda" else "none", gpu=None, imgsz=224, warmup=self.a.warmup,
                iterations=self.a.iterations, min_seconds=self.a.min_seconds, conf=0.25,
                stability=Stability(**DEFAULTS["bench"]["stability"]),
            ),
        )  # fmt: skip
        lat = r["latency_ms"]
        return {
            "p50_ms": lat["p50"],
            "p90_ms": lat["p90"],
            "p99_ms": lat["p99"],
            "p99_over_p50": round(lat["p99"] / lat["p50"], 3),
            "phase_latency_ms": r["phase_latency_ms"],
            "stable": r["stable"],
            "weight_bytes": r["memory"].get("weight_bytes"),
            "peak_gpu_bytes": r["memory"]["peak_gpu_bytes"],
            "setup_seconds": r["setup_seconds"],
            "record": r,
        }

    def phases(self, name: str, iterations: int = 50) -> dict:
        """The chunk's two phases replayed from CUDA graphs: the prefix alone, and the whole chunk (denoise = the
        difference). The runner's own graph holds the whole chunk; the prefix graph is captured beside it."""
        from workflow_scripts.pipeline import make_runner
        from workflow_scripts.runners.torch_runner import capturable
        from workflow_scripts.tasks import vla

        backend, precision, extra = ROWS[name]
        runner = make_runner(
            backend, self.artifact, "pi0", precision, self.a.device, self.a.threads, self.options(backend, extra)
        )
        x = runner._named(vla.bench_unit(pi0, runner, self.dataset, 1, 224, 3, 0.25)["inputs"])
        chunk = runner.model
        head = {k: x[k] for k in ("pixel_values", "pixel_attention_mask", "input_ids", "attention_mask")}

        def graphed(fn):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(stream):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(g), capturable():
                fn()
            return g

        def p50(g) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for i in range(5 + iterations):
                start.record()
                g.replay()
                end.record()
                end.synchronize()
                if i >= 5:
                    times.append(start.elapsed_time(end))
            times.sort()
            return round(times[len(times) // 2], 3)

        prefix = p50(graphed(lambda: chunk.prefix(**head)))
        whole = p50(graphed(lambda: chunk(**x)))
        return {"prefix_p50_ms": prefix, "chunk_p50_ms": whole, "denoise_p50_ms": round(whole - prefix, 3)}

    def accuracy(self, name: str) -> dict:
        backend, precision, extra = ROWS[name]
        if backend.startswith("torch-compile"):
            torch._dynamo.reset()
        s = default_settings(
            224, self.a.device, self.a.threads, batch=self.a.acc_batch, backend_options=self.options(backend, extra),
            power="none", gpu=None,
        )  # fmt: skip
        ref = None if name == "fp32" else self.reference
        save = self.reference if name == "fp32" else None
        r = evaluate(
            f"pi0-{self.a.cameras}cam", "pi0", self.artifact, self.work / "pi0.json", backend, precision,
            self.dataset, "h200", s, reference=ref, save_outputs=save,
        )  # fmt: skip
        keys = ("episodes", "action_mse", "action_max_abs", "action_rel_mse", "per_dim_mse")
        return {k: r[k] for k in keys}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench, accuracy = ["bf16-graph", "bf16", "int4-graph", "int4"], ["fp32", "bf16", "bf16-graph", "int4", "int8"]
    row_arguments(p, ROWS, bench, accuracy, 5, 50)
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--checkpoint", default="pi0.yaml", help="a pi0 architecture name (pi0-tiny.yaml: a CPU smoke run)")
    p.add_argument("--batches", type=int, nargs="+", default=[1])
    p.add_argument("--phases", nargs="*", default=[], choices=list(ROWS), help="graph rows split into prefix / denoise")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--acc-batch", type=int, default=4)
    a = checked(p.parse_args(argv), "gpu_pi0")
    with tempfile.TemporaryDirectory(prefix="planforge-pi0-") as tmp:
        run = Run(a, Path(tmp))
        for name in a.bench:
            for batch, _ in ((b, n) for b in a.batches for n in range(a.repeat)):
                run.row(kind="bench", row=name, backend=ROWS[name][0], precision=ROWS[name][1], batch=batch,
                        options=ROWS[name][2], run=lambda name=name, batch=batch: run.bench(name, batch))  # fmt: skip
        for name in a.phases:
            run.row(kind="graph_phases", row=name, backend=ROWS[name][0], precision=ROWS[name][1],
                    options=ROWS[name][2], run=lambda name=name: run.phases(name))  # fmt: skip
        for name in a.accuracy:
            run.row(kind="accuracy", row=name, backend=ROWS[name][0], precision=ROWS[name][1],
                    options=ROWS[name][2], run=lambda name=name: run.accuracy(name))  # fmt: skip
        run.save()
    print(f"{a.out}: {sum(r['status'] == 'ok' for r in run.rows)} of {len(run.rows)} rows ok")


if __name__ == "__main__":
    run_cli(main)
