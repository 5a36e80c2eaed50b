"""Sibling projections fused into one GEMM: the query, key and value projections of an attention layer and the gate
and up projections of a gated MLP read the same input, so one matmul over their stacked weights replaces 3 (2).

In a CUDA graph of a small-batch transformer (Pi0's action expert: 51 tokens, ten steps of 18 layers) the time
goes to many short kernels, not to FLOPs or bytes; fusing removes 3 of each layer's 7 GEMM launches. transformers'
attention and MLP modules call their projections one after another on the same tensor (`q_proj(x)`,
`k_proj(x)`, `v_proj(x)`; `gate_proj(x)` … `up_proj(x)`), so the fusion keeps their `forward` code: each
projection becomes a view of one `FusedProjections` module, which runs the fused matmul for the first of its
views called on an input and hands the others their slices of it. Nothing changes in the modules' own code, so
it holds across transformers versions; `fuse_projections` checks each fused group against the unfused layers.
A module whose projections read different tensors (a cross-attention, as in SAM 2 or D-FINE's decoder) fails
on its first call with one line instead of projecting the wrong input: the option is for self-attention stacks.
"""

from __future__ import annotations

import torch
from torch import nn

# the sibling groups, in the order transformers' modules call them (Gemma, Llama, Mistral, Qwen, PaliGemma, Pi0)
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedProjections(nn.Module):
    """One `nn.Linear` over the stacked weights of several projections of the same input."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        first = linears[0]
        bias = first.bias is not None
        self.sizes = [lin.out_features for lin in linears]
        kw = {"bias": bias, "device": first.weight.device, "dtype": first.weight.dtype}
        self.fused = torch.nn.utils.skip_init(nn.Linear, first.in_features, sum(self.sizes), **kw)
        with torch.no_grad():
            self.fused.weight.copy_(torch.cat([lin.weight for lin in linears]))
            if bias:
                self.fused.bias.copy_(torch.cat([lin.bias for lin in linears]))
        self._outputs: list[torch.Tensor] = []  # the slices of the last input, until the last one is handed out
        self._input: torch.Tensor | None = None  # that input: a later projection must be called on the same tensor

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Projection `index` of `x`: the first runs the fused matmul, the later ones take their slices of it."""
        if index == 0:
            self._outputs = list(self.fused(x).split(self.sizes, dim=-1))
            self._input = x
        elif not self._outputs:
            raise RuntimeError("FusedProjections: a later projection was called before the first one")
        elif x is not self._input:  # a cross-attention: its key / value projections read other tensors
            raise RuntimeError(
                "FusedProjections: the projections were called on different inputs (a cross-attention); "
                "turn fuse_projections off for this model"
            )
        out = self._outputs[index]
        if index == len(self.sizes) - 1:
            self._outputs, self._input = [], None
        return out


class ProjectionView(nn.Module):
    """What replaces one projection: its slice of the fused matmul (`in_features` / `out_features` kept for code
    that reads them)."""

    def __init__(self, fused: FusedProjections, index: int, like: nn.Linear) -> None:
        super().__init__()
        self.index = index
        self.in_features, self.out_features = like.in_features, like.out_features
        if index == 0:
            self.group = fused  # registered once, on the first view: its weights are counted once
        else:
            object.__setattr__(self, "group", fused)  # the others only refer to it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.part(self.index, x)


def _linears(module: nn.Module, names: tuple[str, ...]) -> list[nn.Linear] | None:
    layers = [getattr(module, n, None) for n in names]
    if not all(type(lin) is nn.Linear for lin in layers):
        return None
    first = layers[0]
    same = all(
        lin.in_features == first.in_features
        and (lin.bias is None) == (first.bias is None)
        and lin.weight.dtype == first.weight.dtype
        and lin.weight.device == first.weight.device
        for lin in layers
    )
    return layers if same else None


def fuse_projections(model: nn.Module, check: bool = True) -> dict[str, int]:
    """Fuse every sibling group (`GROUPS`) of plain linears in `model`, in place; returns the count per group.

    `check`: each fused group's outputs are compared with its unfused layers on a random input (one line if a
    group differs, which would mean a module calls them in another order than `GROUPS` lists)."""
    counts = {"+".join(g): 0 for g in GROUPS}
    for module in list(model.modules()):
        for names in GROUPS:
            layers = _linears(module, names)
            if layers is None:
                continue
            fused = FusedProjections(layers)
            if check:
                with torch.no_grad():
                    x = torch.randn(2, layers[0].in_features, dtype=torch.float32, device=layers[0].weight.device)
                    x = x.to(layers[0].weight.dtype)
                    for i, lin in enumerate(layers):
                        if not torch.allclose(fused.part(i, x).float(), lin(x).float(), rtol=1e-3, atol=1e-3):
                            raise RuntimeError(f"fuse_projections: {'+'.join(names)} of {type(module).__name__} differ")
            for i, (name, lin) in enumerate(zip(names, layers)):
                setattr(module, name, ProjectionView(fused, i, lin))
            counts["+".join(names)] += 1
    return counts
