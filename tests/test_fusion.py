"""core.fusion: sibling projections as one GEMM give the unfused outputs (a toy layer, and Pi0 through the torch
runners, eager and traced by dynamo), keep the parameter count, and fail loudly when called out of order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workflow_scripts.core.fusion import fuse_projections
from workflow_scripts.models import get_family
from workflow_scripts.pipeline import make_runner


class Layer(nn.Module):  # the call order of transformers' attention and gated MLP
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(8, 16, bias), nn.Linear(8, 4, bias), nn.Linear(8, 4, bias)
        self.gate_proj, self.up_proj = nn.Linear(8, 12, bias=False), nn.Linear(8, 12, bias=False)

    def forward(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return torch.cat([q, k * v.sum(-1, keepdim=True), self.gate_proj(x) * self.up_proj(x)], -1)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_layer_equals_the_unfused_one(bias):
    torch.manual_seed(0)
    layer, x = Layer(bias), torch.randn(3, 5, 8)
    want = layer(x)
    params = sum(p.numel() for p in layer.parameters())
    assert fuse_projections(layer) == {"q_proj+k_proj+v_proj": 1, "gate_proj+up_proj": 1}
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer(x + 1), Layer.forward(layer, x + 1))  # a second input: fresh slices
    assert sum(p.numel() for p in layer.parameters()) == params  # the fused weights counted once
    assert layer.k_proj.out_features == 4 and layer.q_proj.group._outputs == []  # nothing held between calls


def test_a_projection_called_before_the_first_one_fails_loudly():
    layer = Layer(True)
    fuse_projections(layer)
    with pytest.raises(RuntimeError, match="before the first one"):
        layer.k_proj(torch.randn(2, 8))


class CrossAttention(nn.Module):  # SAM 2's attention: queries, keys and values from different tensors
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, q, k, v):
        return self.q_proj(q) + self.k_proj(k) + self.v_proj(v)


def test_a_cross_attention_fails_loudly_instead_of_projecting_the_wrong_input():
    attn = CrossAttention()
    fuse_projections(attn)
    x = torch.randn(2, 8)
    attn(x, x, x)  # the same tensor three times: fine
    with pytest.raises(RuntimeError, match="different inputs"):
        attn(x, torch.randn(2, 8), x)


def test_groups_of_different_input_widths_are_left_alone():
    layer = Layer(True)
    layer.v_proj = nn.Linear(6, 4)
    assert fuse_projections(layer) == {"q_proj+k_proj+v_proj": 0, "gate_proj+up_proj": 1}
    assert type(layer.q_proj) is nn.Linear


def _actions(backend: str, options: dict):
    fam = get_family("pi0")
    runner = make_runner(backend, "pi0-tiny.yaml", "pi0", "fp32", "cpu", 2, options=options)
    geo = fam.geometry(runner.model)
    rng = np.random.default_rng(0)
    episodes = {
        "images": rng.integers(0, 255, (2, 1, 64, 64, 3), dtype=np.uint8),
        "state": rng.normal(size=(2, 8)),
        "token_ids": rng.integers(0, 8000, (2, 6)),
        "token_mask": np.ones((2, 6), bool),
        "noise": rng.normal(size=(2, 50, 32)),
    }
    out = runner.to_numpy(runner.infer(runner.prepare(fam.preprocess(episodes, geo))))
    return np.asarray(out[0] if isinstance(out, list) else out), runner.versions()


def test_pi0_through_the_torch_runners_gives_the_same_actions_fused():
    want, plain = _actions("torch", {})
    got, fused = _actions("torch", {"fuse_projections": True})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "fused_projections" not in plain
    assert fused["fused_projections"] == '{"gate_proj+up_proj": 4, "q_proj+k_proj+v_proj": 6}'  # SigLIP, Gemma, expert
    traced, _ = _actions("torch-compile", {"fuse_projections": True, "compile_backend": "aot_eager"})
    np.testing.assert_allclose(traced, want, rtol=1e-5, atol=1e-5)
