"""The GPU benchmark scripts' shared parts (gpu_pi0.py, gpu_samurai.py): their common arguments, and one row —
run it, keep its failure as a record, save."""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from workflow_scripts.core.io import exception_line

TRACKER_HELP = (
    "JSON: SAMURAI settings saved with the prepared checkpoint, as a config entry's `tracker` (e.g. "
    "'{\"memory_filter\": false}': every recent frame is a memory, so live sequences keep equal memory lengths)"
)


def run_row(rows: list[dict], save: Callable[[], None], **what) -> dict:
    """`what["run"]()` → its dict merged into the row; a failure becomes `status: failed` with the error line and the
    last frames (one row's failure must not lose the others); the JSON is rewritten after every row."""
    import torch

    fn = what.pop("run")
    t0 = time.perf_counter()
    try:
        what.update(fn())
        what["status"] = "ok"
    except Exception as exc:  # noqa: BLE001
        what.update(status="failed", error=exception_line(exc), where=traceback.format_exc(limit=-4)[-900:])
    what["wall_s"] = round(time.perf_counter() - t0, 1)
    rows.append(what)
    save()
    print(json.dumps({k: v for k, v in what.items() if k not in ("record", "where")})[:600], flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return what


def header(script: str, device: str) -> dict:
    """What every row script's JSON starts with: the GPU (None off CUDA), torch and its CUDA, the command line."""
    import sys

    import torch

    return {
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
    }


def row_arguments(
    p: argparse.ArgumentParser, rows: dict, bench: list[str], accuracy: list[str], warmup: int, iterations: int
) -> None:
    """The arguments every row script takes: the JSON, the device, which rows to bench / score (of `rows`), the
    batches, repeats and the bench step's loop (warm-up, iterations, min seconds, threads)."""
    p.add_argument("--out", type=Path, required=True, help="the JSON to write (rewritten after every row)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--bench", nargs="*", default=bench, choices=list(rows))
    p.add_argument("--accuracy", nargs="*", default=accuracy, choices=list(rows))
    p.add_argument("--repeat", type=int, default=1, help="bench each row this many times (separate runners)")
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--iterations", type=int, default=iterations)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=8)


def checked(a: argparse.Namespace, script: str) -> argparse.Namespace:
    """No CUDA for a cuda run is one line; the accuracy rows start with fp32, the reference the others compare to."""
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{script}: no CUDA GPU here; run it on the GPU machine")
    if a.accuracy and a.accuracy[0] != "fp32":
        a.accuracy = ["fp32", *[n for n in a.accuracy if n != "fp32"]]  # the reference first
    return a
