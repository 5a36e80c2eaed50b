"""The summary's Triton section of one target (results/summary.md): the sweep table of every served model, the lines
its task gives on its sweep and served accuracy (`tasks.TaskSpec.served.summary`), and the co-serving line."""

from __future__ import annotations

from workflow_scripts.serving import hooks
from workflow_scripts.tasks import task_of


def serving_lines(records: list[dict], target: str) -> list[str]:
    """The Triton section of one target: the sweep table, each served model's lines from its task (overhead vs
    in-process, what batching gains, accuracy through the server) and the co-serving line."""
    sweeps = [r for r in records if r.get("target") == target and "sweep" in r]
    accs = {r["model"]: r for r in records if r.get("target") == target and r.get("backend") == "triton"}
    if not sweeps:
        return []
    lines = [
        "Serving through a real tritonserver (detection: ensemble preprocess → ONNX Runtime → postprocess; vla: "
        "one python-backend model, preprocess + action chunk; tracking: one stateful model behind the sequence "
        "batcher, one frame per request, concurrency = live sequences; batch 1 per request; perf_analyzer end to end):",
        "",
        "| model | protocol | concurrency | batching | p50 ms | p99 ms | throughput infer/s | queue ms | compute ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rec in sorted(sweeps, key=lambda r: r["model"]):
        for r in sorted(rec["sweep"], key=lambda r: (r["protocol"], r["concurrency"], r["batching"] == "off")):
            b = r["breakdown_ms"]
            compute = b["server_compute_input"] + b["server_compute_infer"] + b["server_compute_output"]
            lines.append(
                f"| {rec['model']} | {r['protocol']} | {r['concurrency']} | {r['batching']} | "
                f"{r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {r['throughput_infer_per_s']:.1f} | "
                f"{b['server_queue']:.2f} | {compute:.2f} |"
            )
    lines.append("")
    for rec in sorted(sweeps, key=lambda r: r["model"]):  # each task says what its sweep and served accuracy show
        lines += hooks.summary_lines(task_of(rec))(rec, accs.get(rec["model"]))
    for co in (r for r in records if r.get("target") == target and "memory_after_load" in r):
        mem = co["memory_after_traffic"]["models"]
        parts = []
        for m, lat in co["latency"].items():
            gpu = f", GPU {mem[m]['gpu_mib']:.0f} MiB" if mem[m].get("gpu_mib") is not None else ""
            parts.append(
                f"{m} ({mem[m]['stubs']} stub{'s' * (mem[m]['stubs'] != 1)}, PSS {mem[m]['pss_mib']:.0f} MiB{gpu}): "
                f"p50 {lat['alone']['p50']:.1f} → {lat['mixed']['p50']:.1f} ms, p99 {lat['alone']['p99']:.1f} → "
                f"{lat['mixed']['p99']:.1f} ms"
            )
        lines.append(f"- Co-serving in one tritonserver, each alone → both at once: {'; '.join(parts)}.")
    lines.append("")
    return lines
