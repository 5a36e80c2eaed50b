"""Result JSONs as tables: the one reader the summary and the plots share.

The accuracy rows read each task's metric and columns from the task registry the caller passes (`tasks.TASKS`):
core imports nothing above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from workflow_scripts.core.io import read_json

KEYS = ["target", "model", "backend", "precision"]


def _reported_reason(r: dict) -> str | None:
    """The reported timed loop's own verdict reason (older JSONs: from its attempt's summary)."""
    s = r.get("stability") or {}
    if "reported_reason" in s:
        return s["reported_reason"]
    for a in s.get("attempts") or ():
        if a.get("attempt") == s.get("reported_attempt"):
            return a.get("reason")
    return None


def load_tables(
    bench_files: list[Path], accuracy_files: list[Path], tasks: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bench rows (one per model/backend/precision/batch) and accuracy rows, as DataFrames. `tasks`: task name →
    its spec (`tasks.TASKS`: `metric`, `metric_label`, `columns`)."""
    bench = []
    for f in bench_files:
        r = read_json(f)
        bench.append(
            {
                "target": r["target"],
                "model": r["model"],
                "backend": r["backend"],
                "precision": r["precision"],
                "batch": r["batch"],
                "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"],
                "mean_ms": r["latency_ms"]["mean"],
                "throughput": r["throughput_items_per_s"],
                "pre_ms": (r.get("preprocess_ms") or {}).get("p50"),
                "post_ms": (r.get("postprocess_ms") or {}).get("p50"),  # none for vla (actions are the output)
                # the model's phases where it records them (Pi0: prefix encoding, denoising loop)
                "prefix_ms": ((r.get("phase_latency_ms") or {}).get("prefix") or {}).get("p50"),
                "denoise_ms": ((r.get("phase_latency_ms") or {}).get("denoise") or {}).get("p50"),
                "prompt_ms": (r.get("prompt_ms") or {}).get("p50"),  # tracking: the prompt frame, timed apart
                "bench_task": r.get("task"),
                "energy_j": (r.get("power") or {}).get("energy_per_inference_j"),
                "power_w": (r.get("power") or {}).get("mean_power_w"),
                "inf_per_j": (r.get("power") or {}).get("inferences_per_joule"),
                "file": str(f),
                "device": r["environment"].get("gpu") or r["environment"].get("cpu"),
                "libraries": r["environment"].get("libraries", {}),
                "cpu_int8": r["environment"].get("cpu_int8_instructions"),
                "cpu_flags": r["environment"].get("cpu_vector_instructions"),  # None in JSONs written before
                "run_device": r["environment"].get("device"),  # cpu, cuda, cuda:1
                "runner": r.get("runner", {}),
                "git_commit": r["environment"].get("git_commit"),
                "timestamp": r["environment"].get("timestamp"),
                "iterations": r["iterations"],
                "warmup": r["warmup"],
                "min_seconds": r.get("min_seconds", 0),
                "threads": r.get("threads"),
                # False: disturbed in every timed loop (the JSON's stability.reason); None: written before rows said
                "stable": r.get("stable"),
                "cv": (r.get("dispersion") or {}).get("cv"),
                "p99_over_p50": (r.get("dispersion") or {}).get("p99_over_p50"),
                "unstable_reason": (r.get("stability") or {}).get("reason"),
                # what disturbed the reported loop (spread, other processes), in figures; None when it was not
                "disturbance": _reported_reason(r),
                "other_cpus_busy": (r.get("load") or {}).get("other_cpus_busy"),
                # engines timed by trtexec (no TensorRT bindings): its GPU compute time, and no outputs to score
                "timed_by": r.get("timed_by", "runner"),
                "accuracy_not_measured": (r.get("accuracy") or {}).get("reason"),
            }
        )
    acc = []
    for f in accuracy_files:
        r = read_json(f)
        task = tasks[r.get("task", "detection")]  # JSONs written before tasks existed are detection
        acc.append(
            {
                "target": r["target"],
                "model": r["model"],
                "backend": r["backend"],
                "precision": r["precision"],
                "task": r.get("task", "detection"),
                "score": r[task.metric],  # the task's metric: what the gate compares
                "metric_label": task.metric_label,
                **{key: r.get(key) for key, _, _ in task.columns},
                "ratio": r.get("ratio_to_baseline"),
                "gate_passed": r.get("gate", {}).get("passed"),
                "tolerance": r.get("gate", {}).get("tolerance"),  # error metrics: the absolute gate
                "baseline": f"{r['baseline']['backend']} {r['baseline']['precision']}" if r.get("baseline") else None,
            }
        )
    bench_cols = ["target", "model", "backend", "precision", "batch"]
    # no accuracy files (every model `accuracy: false`): the columns still exist, empty, for the joins
    acc_cols = [*KEYS, "task", "score", "metric_label", "ratio", "gate_passed", "tolerance", "baseline"]
    b = pd.DataFrame(bench, columns=None if bench else bench_cols)
    a = pd.DataFrame(acc, columns=None if acc else acc_cols)
    return b, a


def merged(bench: pd.DataFrame, acc: pd.DataFrame, target: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One target's bench rows, accuracy rows, and bench rows joined with their accuracy."""
    tb = bench[bench["target"] == target] if not bench.empty else bench
    ta = acc[acc["target"] == target] if not acc.empty else acc
    joined = tb.merge(ta, on=KEYS, how="left") if not tb.empty else tb
    return tb, ta, joined
