"""The DAG's paths (its contract, see ARCHITECTURE.md): spelled only here and in the rules' outputs."""

from __future__ import annotations

PLOT_KINDS = ("latency_vs_batch", "accuracy_vs_latency")


def bench_path(target: str, model: str, backend: str, precision: str, batch: int | str) -> str:
    return f"results/{target}/bench/{model}/{backend}_{precision}_b{batch}.json"


def accuracy_path(target: str, model: str, backend: str, precision: str) -> str:
    return f"results/{target}/accuracy/{model}/{backend}_{precision}.json"


def picture_path(target: str, model: str, backend: str, precision: str) -> str:
    return f"results/{target}/pictures/{model}/{backend}_{precision}.png"


def outputs_path(target: str, model: str, backend: str, precision: str) -> str:
    """An accuracy job's saved outputs, beside its JSON (vla: the action chunks; the baseline's are the reference)."""
    return f"results/{target}/accuracy/{model}/{backend}_{precision}.actions.npz"


def engine_path(target: str, model: str, precision: str, batch: int | str) -> str:
    return f"artifacts/engines/{target}/{model}/{precision}_b{batch}.plan"


def checkpoint_path(model: str) -> str:
    return f"artifacts/checkpoints/{model}.pt"


def onnx_path(model: str, variant: str) -> str:
    return f"artifacts/onnx/{model}/{variant}.onnx"


def onnx_part_path(model: str, part: str) -> str:
    """A graph that travels beside a model's fp32.onnx (FamilySpec.onnx_parts: SAMURAI's parts)."""
    return f"artifacts/onnx/{model}/fp32.{part}.onnx"


def dataset_dir(dataset: str) -> str:
    return f"artifacts/data/{dataset}"
