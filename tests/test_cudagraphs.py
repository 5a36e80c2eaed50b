"""core/cudagraphs.ShapeGraphs' bookkeeping on the CPU (no CUDA here: its `stand_in` re-runs the function where a
graph would replay): one graph per signature, outputs that outlive the next replay, a failed capture falling
back to the eager function with the reason recorded. The CUDA capture itself ran on the H200
(docs/measured/h200/samurai.md: every part captured, `eager_because` null)."""

from __future__ import annotations

import torch

from workflow_scripts.core.cudagraphs import ShapeGraphs


def test_one_graph_per_signature_and_outputs_are_copies_fake_cuda():
    calls = []

    def part(x, scale: float, extra=None):
        calls.append(tuple(x.shape))
        return {"y": x * scale, "pair": (x.sum(), extra)}

    g = ShapeGraphs(part, "part", stand_in=True)
    a = g(torch.ones(2, 3), 2.0)
    b = g(torch.full((2, 3), 3.0), 2.0)  # same signature: replayed
    c = g(torch.ones(4), 2.0)  # another shape: another graph
    d = g(torch.ones(2, 3), 5.0)  # another value of a plain argument: another graph
    assert len(g.graphs) == 3 and g.describe()["graphs"] == 3
    assert torch.equal(a["y"], torch.full((2, 3), 2.0))  # not overwritten by b's replay
    assert torch.equal(b["y"], torch.full((2, 3), 6.0)) and float(b["pair"][0]) == 18.0
    assert c["y"].shape == (4,) and torch.equal(d["y"], torch.full((2, 3), 5.0))
    assert b["pair"][1] is None
    b["y"].add_(100)  # the caller may keep and change what it got
    assert torch.equal(g(torch.ones(2, 3), 2.0)["y"], torch.full((2, 3), 2.0))


def test_a_part_that_cannot_be_captured_runs_its_fallback_and_says_why_fake_cuda():
    def compiled(x):
        raise RuntimeError("operation not permitted when stream is capturing")

    g = ShapeGraphs(compiled, "memory_attention", stand_in=True, fallback=lambda x: x + 1)
    assert torch.equal(g(torch.zeros(2)), torch.ones(2))
    assert torch.equal(g(torch.ones(3)), torch.full((3,), 2.0))  # no second capture attempt
    record = g.describe()
    assert record["eager_because"] == "operation not permitted when stream is capturing"
    assert record["eager_calls"] == 2 and record["graphs"] == 0 and "failed_where" in record
