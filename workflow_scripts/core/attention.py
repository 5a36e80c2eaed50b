"""Split-KV attention: one fused attention kernel over several key chunks at once, merged by log-sum-exp.

A flash-attention kernel spreads its work over (batch, head, query tile): one block of queries per streaming
multiprocessor. SAMURAI's memory attention has one head and one sequence, so at 1024 px its 4096 queries are 32
tiles: 32 of the H200's 132 multiprocessors work through all ~29 k keys of seven memories while 100 idle
(measured: 3.4 ms per frame, half of samurai-t's device time). Splitting the keys into `S` equal chunks and
giving each chunk its own batch row fills `S` times as many multiprocessors with the same kernel; each row
returns its partial output and the log-sum-exp of its scores, and the exact softmax over all keys is their
weighted sum (the flash-decoding merge: weights `exp(lse_i - logsumexp(lse))`, in fp32). Measured: the
kernel-level gain is real (0.68 → 0.49 ms for 7 memories); a samurai-t frame gains less than its run-to-run
spread (docs/measured/h200/samurai.md): FlashAttention-2 with one 256-wide head stays at ≈ 250 TFLOP/s.

`attention` is registered as a transformers attention function (`NAME`): a model whose config names it gets the
split where it was measured to pay (CUDA, fp16/bf16, too few query tiles to fill the GPU, a long query set
against at least 4 times as many keys that split evenly: SAMURAI's cross-attention to 4 or more memories) and
transformers' own SDPA everywhere else (the CPU, fp32, ONNX export), so outputs off the GPU are unchanged.
"""

from __future__ import annotations

import functools

import torch

NAME = "planforge_split_kv"
QUERY_TILE = 128  # rows of queries per flash-attention block (PyTorch's FA2 forward, head dim 256, sm80+)
MIN_CHUNK = 512  # keys per chunk at least: below it the merge costs more than the kernel saves
SPLIT_QUERIES = 8 * QUERY_TILE  # the transformers function splits only long query sets ...
SPLIT_KEYS_PER_QUERY = 4  # ... against at least 4 times as many keys (`worth_splitting`)


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def chunks_for(batch_heads: int, queries: int, keys: int, multiprocessors: int) -> int:
    """How many equal key chunks fill the GPU in one wave: 1 (no split) when the query tiles already do."""
    tiles = batch_heads * -(-queries // QUERY_TILE)
    # the key count only in comparisons: under torch.compile with a dynamic memory length they become guards
    # (`keys % 4 == 0`), not one compile per length
    for split in range(multiprocessors // max(tiles, 1), 1, -1):
        if keys % split == 0 and keys >= split * MIN_CHUNK:
            return split
    return 1


def attention_with_lse(q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention `(B, H, Lq, D)` and the log-sum-exp of each query's scaled scores `(B, H, Lq)`, fp32.

    On CUDA in half precision: PyTorch's flash-attention kernel, which returns both. Elsewhere (the tests, on
    the CPU) the same two quantities from the scores matrix."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
        return out, lse
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.exp(scores - lse[..., None]) @ v.float()).to(q.dtype), lse


def split_kv_attention(q, k, v, scale: float | None = None, split: int | None = None) -> torch.Tensor:
    """`softmax(q kᵀ·scale) v` for `(B, H, L, D)` tensors with the keys in `split` chunks run as one batch
    (default: `chunks_for` this GPU). Equal to `scaled_dot_product_attention` up to rounding."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b, h, lq, d = q.shape
    lk = k.shape[2]
    if split is None:
        split = chunks_for(b * h, lq, lk, _multiprocessors(q.device.index or 0)) if q.is_cuda else 1
    if split <= 1:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    if lk % split:
        raise ValueError(f"split_kv_attention: {lk} keys do not split into {split} equal chunks")

    def rows(x):  # (B, H, Lk, D) -> (split·B, H, Lk/split, D): chunk-major batch rows
        return x.reshape(b, h, split, lk // split, x.shape[-1]).permute(2, 0, 1, 3, 4).flatten(0, 1)

    queries = q.unsqueeze(0).expand(split, b, h, lq, d).flatten(0, 1)
    out, lse = attention_with_lse(queries, rows(k), rows(v), scale)
    out, lse = out.unflatten(0, (split, b)), lse.unflatten(0, (split, b))
    weights = torch.softmax(lse, dim=0)  # exp(lse_i - logsumexp over chunks)
    return (out.float() * weights[..., None]).sum(0).to(q.dtype)


def worth_splitting(batch_heads: int, queries: int, keys: int, head_dim: int, multiprocessors: int) -> bool:
    """Whether the transformers function splits this shape. Measured on the H200 (`benchmarks/gpu_attention.py`,
    one head of 256, 4096 queries): 4 chunks take a cross-attention over 7 memories from 0.68 to 0.49 ms and over
    4 from 0.40 to 0.31 ms, but make 2 memories (0.21 → 0.24 ms) and the 4096-key self-attention (0.11 → 0.16 ms)
    slower; short query sets gain nothing. So: long query sets against at least 4 times as many keys."""
    return (
        queries >= SPLIT_QUERIES
        and keys >= SPLIT_KEYS_PER_QUERY * queries
        and head_dim <= 256
        and head_dim % 8 == 0
        and chunks_for(batch_heads, queries, keys, multiprocessors) > 1
    )


def _splits_here(query, key, attention_mask, dropout: float) -> bool:
    return (
        query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and attention_mask is None
        and dropout == 0.0
        and key.shape[1] == query.shape[1]
        and worth_splitting(
            query.shape[0] * query.shape[1],
            query.shape[2],
            key.shape[2],
            query.shape[-1],
            _multiprocessors(query.device.index or 0),
        )
    )


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function signature (`ALL_ATTENTION_FUNCTIONS`): `(B, Lq, H, D)` output, no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if causal or not _splits_here(query, key, attention_mask, dropout):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    out = split_kv_attention(query, key, value, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def register() -> str:
    """Make `NAME` a transformers attention implementation (once per process); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, attention)
    return NAME
