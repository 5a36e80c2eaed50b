"""torch-compile captures each family's whole forward as one graph: no graph breaks, no recompiles after warmup.

The runner is built as the pipeline builds it (`make_runner`) and compiled with dynamo's `eager` backend
(`backend_options: {torch-compile: {compile_backend: eager}}`): dynamo traces exactly what it traces for
inductor, but nothing is generated, so this runs in seconds on two CPU cores. Dynamo's own counters say how
many frames it converted (a nested frame or a recompile adds one), how many graphs it made and why it broke.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from workflow_scripts.pipeline import make_runner

# the smallest inputs each family runs at (the tiny D-FINE needs at least 100 anchors for its 100 queries)
CASES = {"yolo": ("yolov8n.yaml", 64), "dfine": ("dfine-demo.yaml", 96)}
OPTIONS = {"compile_backend": "eager"}


def _dynamo_counts() -> dict:
    return {key: dict(counters[key]) for key in ("frames", "stats", "graph_break") if counters[key]}


def _fresh_runner(family: str):
    checkpoint, imgsz = CASES[family]
    torch._dynamo.reset()  # every TorchRunner compiles the same code: start from an empty cache
    counters.clear()
    return make_runner("torch-compile", checkpoint, family, "fp32", "cpu", 1, OPTIONS), imgsz


def _batch(n: int, imgsz: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, imgsz, imgsz), dtype=np.float32)


@pytest.mark.parametrize("family", sorted(CASES))
def test_compiled_forward_is_one_graph_with_no_break_and_no_recompile(family):
    runner, imgsz = _fresh_runner(family)
    batch = _batch(2, imgsz)
    prepared = runner.prepare(batch)
    runner.setup(prepared)  # as the bench does: compile and warm up at the fixed batch
    setup = _dynamo_counts()
    assert "graph_break" not in setup, setup
    assert setup["stats"]["unique_graphs"] == 1, setup
    # one frame converted, once: a graph break inside the model would convert each submodule's forward too
    assert setup["frames"] == {"total": 1, "ok": 1}, setup

    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(3):  # new pixels each time, as the bench's and accuracy's loops prepare them
            out = runner.infer(runner.prepare(_batch(2, imgsz, seed)))
    assert _dynamo_counts() == {}, "traced again after warmup"

    with torch.inference_mode():
        eager = runner._eager(runner.prepare(_batch(2, imgsz, 2)))
    for got, want in zip(runner.to_numpy(out), runner.to_numpy(eager), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_accuracy_loop_compiles_each_batch_size_once_without_setup():
    """The accuracy loop calls the runner directly (no setup), and its last batch may be smaller."""
    runner, imgsz = _fresh_runner("yolo")
    with torch._dynamo.config.patch(recompile_limit=2):  # one entry per batch size, no more
        for n in (2, 1, 2, 1):
            runner(_batch(n, imgsz))
    counts = _dynamo_counts()
    assert "graph_break" not in counts, counts
    assert counts["stats"]["unique_graphs"] == 2, counts  # one graph per batch size
    assert counts["frames"] == {"total": 2, "ok": 2}, counts  # and nothing traced when the sizes come back
