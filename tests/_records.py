"""Bench and accuracy records as the bench and accuracy steps write them, for tests of what reads them (the summary,
the plots): one model "m" on target "cpu", every latency timer at `p50` but for the spread and tail asked for."""

from __future__ import annotations


def bench_record(
    backend: str, precision: str, p50: float, *, batch: int = 1, cv: float = 0.02, p99_over_p50: float = 1.1, **extra
) -> dict:
    """`extra`: keys added as they are (stable, dispersion, stability: a row's verdict)."""
    lat = {
        "mean": p50,
        "std": p50 * cv,
        "p50": p50,
        "p90": p50,
        "p95": p50,
        "p99": p50 * p99_over_p50,
        "min": p50,
        "max": p50,
    }
    return {
        "target": "cpu",
        "model": "m",
        "task": "detection",
        "backend": backend,
        "precision": precision,
        "batch": batch,
        "latency_ms": lat,
        "throughput_items_per_s": 1000 * batch / p50,
        "preprocess_ms": lat,
        "postprocess_ms": lat,
        "environment": {"cpu": "x86", "libraries": {}, "git_commit": "x", "timestamp": "t"},
        "runner": {},
        "iterations": 100,
        "warmup": 10,
        "threads": 2,
        **extra,
    }


def accuracy_record(backend: str, precision: str, map50_95: float, **extra) -> dict:
    """`extra`: keys added as they are (a gate's verdict: ratio_to_baseline, gate, baseline)."""
    return {
        "task": "detection",
        "target": "cpu",
        "model": "m",
        "backend": backend,
        "precision": precision,
        "map50_95": map50_95,
        "map50": map50_95 + 0.1,
        "images": 6,
        **extra,
    }
