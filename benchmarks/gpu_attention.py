"""Split-KV attention (`workflow_scripts.core.attention`) against PyTorch's SDPA on a GPU: error and kernel time.

The shapes are SAMURAI's memory attention at 1024 px: 4096 queries of one head of width 256 against the frame
itself (self-attention) and against 1–7 memories of 4096 tokens plus 4 tokens per object pointer
(cross-attention). Each case: the largest absolute difference to SDPA in the same precision and to an FP32
reference, and the median of `--repeats` CUDA-event timings of each (after warm-up).

    python benchmarks/gpu_attention.py --out results/attention_h200.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workflow_scripts.core.attention import chunks_for, split_kv_attention  # noqa: E402
from workflow_scripts.core.io import run_cli, write_json  # noqa: E402

# (name, keys): the memory attention's self-attention, then cross-attention over n memories and n·2 pointers
CASES = [("self", 4096)] + [(f"cross_{n}mem", n * 4096 + 4 * min(2 * n, 16)) for n in (1, 2, 4, 7)]


def timed_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    a = p.parse_args(argv)
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    rows = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for dtype_name in a.dtypes:
        dtype = getattr(torch, dtype_name)
        for name, keys in CASES:
            q = torch.randn(1, 1, 4096, 256, device=dev, generator=gen)
            k = torch.randn(1, 1, keys, 256, device=dev, generator=gen)
            v = torch.randn(1, 1, keys, 256, device=dev, generator=gen)
            ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # fp32
            q, k, v = (t.to(dtype) for t in (q, k, v))
            sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            split = split_kv_attention(q, k, v)
            rows.append(
                {
                    "case": name,
                    "dtype": dtype_name,
                    "queries": 4096,
                    "keys": keys,
                    "chunks": chunks_for(1, 4096, keys, sms),
                    "max_abs_split_vs_sdpa": (split.float() - sdpa.float()).abs().max().item(),
                    "max_abs_split_vs_fp32": (split.float() - ref).abs().max().item(),
                    "max_abs_sdpa_vs_fp32": (sdpa.float() - ref).abs().max().item(),
                    "sdpa_ms": timed_ms(
                        lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v), a.repeats
                    ),
                    "split_ms": timed_ms(lambda q=q, k=k, v=v: split_kv_attention(q, k, v), a.repeats),
                }
            )
            print(rows[-1], flush=True)
    write_json(
        a.out,
        {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "multiprocessors": sms, "rows": rows},
    )


if __name__ == "__main__":
    run_cli(main)
