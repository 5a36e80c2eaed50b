"""Does the harness add overhead? Re-time the pipeline's PyTorch GPU bench jobs with a bare loop.

For every `results/<target>/bench/<model>/<backend>_<precision>_b<batch>.json` of the torch,
torch-cudagraph and torch-compile-graph backends, load the same artifact through the model family, put it on the GPU in the
same dtype and memory format, and time `iterations` forwards of a random batch with CUDA events and a
synchronise per iteration — no runner, no sampler, no preprocessing — then compare its p50 with the
pipeline's. Also profiles (torch.profiler) the smallest and largest batch of one configuration to show
what bounds it: GPU busy time per forward against the wall time per forward, and kernel launches.

    python benchmarks/gpu_bare_loop.py --results results/h100/bench --out docs/measured/h100/bare_loop.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from workflow_scripts.core.io import run_cli, write_json
from workflow_scripts.core.metrics import latency_stats
from workflow_scripts.core.precisions import parse as parse_precision
from workflow_scripts.models import get_family
from workflow_scripts.runners.torch_runner import capturable, transformers_checks_off

BACKENDS = ("torch", "torch-cudagraph", "torch-compile", "torch-compile-graph")


def _module(record: dict) -> tuple[torch.nn.Module, torch.Tensor, object]:
    fam = get_family(record["family"])
    dtype = getattr(torch, parse_precision(record["precision"]).torch_dtype)
    channels_last = record["runner"].get("channels_last") == "True"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = fam.load_torch(record["artifact"]).to("cuda", dtype).eval().to(memory_format=fmt)
    size = record["imgsz"]
    if hasattr(fam, "fix_input_size"):
        fam.fix_input_size(model, size, size, torch.device("cuda"), dtype)
    x = torch.rand(record["batch"], 3, size, size, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    return model, x, fam.forward_output


def _forward(record: dict):
    """A zero-argument callable running one forward the way the record's backend does."""
    model, x, output_fn = _module(record)

    def eager():
        with torch.inference_mode():
            return output_fn(model(x))

    if record["backend"] == "torch":
        return eager
    if record["backend"] == "torch-compile":
        # torch.compile in the record's mode (reduce-overhead: inductor's own CUDA graphs), after one eager
        # forward (the model's first forward must not be the compiled one: it would trace its setup code)
        torch._dynamo.reset()
        eager()
        mode = record["runner"].get("compile_mode") or "reduce-overhead"
        compiled = torch.compile(lambda t: output_fn(model(t)), mode=mode, dynamic=False)

        def run():
            with torch.inference_mode(), transformers_checks_off():
                return compiled(x)

        for _ in range(3):
            run()
        return run
    fn, around_capture = eager, capturable
    if record["backend"] == "torch-compile-graph":
        # torch.compile (inductor, the record's options), after one eager forward, captured in a plain graph;
        # dynamo's cache is per code object, so each record starts from an empty one (no recompile limit)
        torch._dynamo.reset()
        eager()
        options = json.loads(record["runner"].get("inductor_options", "{}"))
        compiled = torch.compile(lambda t: output_fn(model(t)), backend="inductor", options=options, dynamic=False)

        def fn():
            with torch.inference_mode(), transformers_checks_off():
                return compiled(x)

        fn()  # compile outside the graph
        around_capture = transformers_checks_off
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph), around_capture():
        fn()
    return graph.replay


def bare_p50(record: dict, warmup: int, iterations: int) -> float:
    fn = _forward(record)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return latency_stats(times)["p50"]  # the p50 the pipeline's bench JSONs use


def profile(record: dict, iterations: int = 20) -> dict:
    """GPU kernel time and launches per forward against the wall time per forward."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn = _forward(record)
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(iterations):
            fn()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / iterations
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_ms = sum(e.device_time for e in kernels) / 1e3 / iterations
    top = {}
    for e in kernels:
        top[e.name] = top.get(e.name, 0.0) + e.device_time / 1e3 / iterations
    return {
        "model": record["model"],
        "backend": record["backend"],
        "precision": record["precision"],
        "batch": record["batch"],
        "wall_ms_per_forward": round(wall_ms, 4),
        "gpu_kernel_ms_per_forward": round(busy_ms, 4),
        "gpu_busy_fraction": round(busy_ms / wall_ms, 3),
        "kernels_per_forward": round(len(kernels) / iterations, 1),
        "top_kernels_ms": {k[:120]: round(v, 4) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("results/h100/bench"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile-model", default="yolov8n-640", help="model whose eager fp16 runs get profiled")
    a = p.parse_args(argv)
    rows = []
    for path in sorted(a.results.glob("*/*.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") != "ok" or rec.get("backend") not in BACKENDS:
            continue
        bare = bare_p50(rec, rec["warmup"], rec["iterations"])
        pipe = rec["latency_ms"]["p50"]
        rows.append(
            {
                "job": str(path),
                "pipeline_p50_ms": pipe,
                "bare_p50_ms": bare,
                "pipeline_over_bare": round(pipe / bare, 4),
            }
        )
        print(f"{path}: pipeline {pipe:.3f} ms, bare {bare:.3f} ms, ratio {pipe / bare:.3f}", flush=True)
        torch.cuda.empty_cache()
    profiles = []
    for backend in BACKENDS:
        records = [json.loads(f.read_text()) for f in a.results.glob(f"{a.profile_model}/{backend}_fp16_b*.json")]
        chosen = [r for r in records if r.get("status") == "ok"]
        chosen.sort(key=lambda r: r["batch"])
        for rec in chosen[:1] + chosen[-1:]:
            profiles.append(profile(rec))
            print(json.dumps(profiles[-1])[:300], flush=True)
    ratios = [r["pipeline_over_bare"] for r in rows]
    write_json(
        a.out,
        {
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "command": "python benchmarks/gpu_bare_loop.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "jobs": rows,
            "max_abs_deviation": round(max(abs(r - 1) for r in ratios), 4) if ratios else None,
            "within_5_percent": all(abs(r - 1) <= 0.05 for r in ratios) if ratios else None,
            "profiles": profiles,
        },
    )


if __name__ == "__main__":
    run_cli(main)
