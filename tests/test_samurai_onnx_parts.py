"""Which parts of the SAMURAI tracker export to ONNX and run in ONNX Runtime (samurai-tiny, real exports)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from workflow_scripts.models import samurai  # noqa: E402


def _run(path, names, args):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: a.numpy() for n, a in zip(names, args)})


@pytest.fixture(scope="module")
def tiny():
    return samurai.load_torch("samurai-tiny.yaml")


@pytest.mark.parametrize("part", ["image_encoder", "mask_decoder", "memory_encoder"])
def test_fixed_shape_parts_export_and_match_torch(tiny, part, tmp_path):
    module, args, names, dynamic = samurai.onnx_parts(tiny)[part]
    with torch.no_grad():
        ref = module(*args)
    samurai.export_part(module, args, names, dynamic, tmp_path / f"{part}.onnx")
    got = _run(tmp_path / f"{part}.onnx", names, args)
    tol = 4e-3 if part == "memory_encoder" else 1e-4  # the memory is rounded to bfloat16 (transformers does)
    for g, r in zip(got, ref if isinstance(ref, tuple) else (ref,)):
        np.testing.assert_allclose(g, r.numpy(), atol=tol, rtol=tol)
    assert not any(m.training for m in tiny.modules())


def test_memory_attention_takes_any_memory_length_but_a_fixed_pointer_count(tiny, tmp_path):
    module, args, names, dynamic = samurai.onnx_parts(tiny, pointer_tokens=8)["memory_attention"]
    path = tmp_path / "memory_attention.onnx"
    samurai.export_part(module, args, names, dynamic, path)
    top, top_pos, _, _ = args
    g = torch.Generator().manual_seed(1)
    for frames in (1, 7):  # the prompt frame alone, a full memory bank
        memory, memory_pos = (torch.randn(64 * frames + 8, 1, 64, generator=g) for _ in range(2))
        with torch.no_grad():
            ref = module(top, top_pos, memory, memory_pos)
        got = _run(path, names, (top, top_pos, memory, memory_pos))[0]
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)
    # another object-pointer count: the graph keeps 8 tokens out of the rotary encoding, so it either fails
    # (the rotated part is no multiple of the query length) or rotates pointers it should not
    other = samurai.onnx_parts(tiny, pointer_tokens=16)["memory_attention"]
    for frames in (3, 4):
        memory, memory_pos = (torch.randn(64 * frames + 16, 1, 64, generator=g) for _ in range(2))
        with torch.no_grad():
            ref = other[0](top, top_pos, memory, memory_pos)
        try:
            got = _run(path, names, (top, top_pos, memory, memory_pos))[0]
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own error type
            assert "broadcast" in str(exc)
        else:
            assert np.abs(got - ref.numpy()).max() > 1e-3
