"""core.attention: the split-KV merge equals one softmax over all keys; the transformers function falls back to
SDPA off the GPU; which shapes split (the rule measured on the H200, benchmarks/gpu_attention.py)."""

from __future__ import annotations

import pytest
import torch

from workflow_scripts.core import attention


def _qkv(b, h, lq, lk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk))


@pytest.mark.parametrize("split", [2, 4, 7])
@pytest.mark.parametrize("shape", [(1, 1, 96, 28 * 7, 16), (2, 3, 40, 14 * 12, 8)])
def test_split_kv_equals_one_softmax_over_all_keys(split, shape):
    b, h, lq, lk, d = shape
    q, k, v = _qkv(b, h, lq, lk, d)
    k = k * 3  # peaked scores: chunks' maxima differ, so the merge's weights matter
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    got = attention.split_kv_attention(q, k, v, scale=0.3, split=split)
    assert got.dtype == q.dtype and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # merged in fp32


def test_lse_is_the_log_sum_exp_of_scaled_scores():
    q, k, v = _qkv(1, 2, 5, 9, 4)
    out, lse = attention.attention_with_lse(q, k, v, 0.5)
    scores = q @ k.transpose(-1, -2) * 0.5
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1).float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v)


def test_uneven_split_is_refused():
    q, k, v = _qkv(1, 1, 4, 10, 4)
    with pytest.raises(ValueError, match="10 keys do not split into 4"):
        attention.split_kv_attention(q, k, v, split=4)


def test_chunks_fill_one_wave_with_equal_chunks():
    # SAMURAI at 1024 px on 132 multiprocessors: 32 query tiles, so 4 chunks (seven memories + pointer tokens)
    assert attention.chunks_for(1, 4096, 7 * 4096 + 4 * 14, 132) == 4
    assert attention.chunks_for(1, 4096, 4099, 132) == 1  # no divisor ≤ 4: no split
    assert attention.chunks_for(1, 4096, 4098, 132) == 3 and 4098 % 3 == 0
    assert attention.chunks_for(8, 4096, 28736, 132) == 1  # 256 tiles already fill the GPU
    assert attention.chunks_for(1, 4096, 1000, 132) == 1  # chunks would be under MIN_CHUNK keys


@pytest.mark.parametrize(
    "queries, keys, split",
    [
        (4096, 7 * 4096 + 56, True),  # cross-attention to 7 memories: 0.68 → 0.49 ms measured
        (4096, 4 * 4096 + 32, True),  # 4 memories: 0.40 → 0.31 ms
        (4096, 2 * 4096 + 16, False),  # 2 memories got slower (0.21 → 0.24 ms)
        (4096, 4096, False),  # the self-attention got slower (0.11 → 0.16 ms)
        (7, 4096, False),  # the mask decoder's few tokens
    ],
)
def test_which_shapes_split(queries, keys, split):
    assert attention.worth_splitting(1, queries, keys, 256, 132) is split


def test_transformers_function_is_sdpa_off_the_gpu():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal = False
    q, k, v = _qkv(1, 2, 4096, 4 * 4096, 8)
    got, weights = attention.attention(module, q, k, v, None, scaling=0.25)
    ref, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.25)
    assert weights is None and got.shape == (1, 4096, 2, 8)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_samurai_models_name_the_split_attention():
    from transformers import AttentionInterface

    from workflow_scripts.models import samurai

    model = samurai.build_architecture("samurai-tiny.yaml")
    assert attention.register() == attention.NAME == model.config._attn_implementation
    assert model.memory_attention.layers[0].self_attn.config._attn_implementation == attention.NAME
    assert AttentionInterface._global_mapping[attention.NAME] is attention.attention
