"""Run to run (workflow_scripts/core/repeatability.py): a row far from this machine's last clean measurement of
the same row is flagged "not reproducible here", and what counts as the same row."""

from __future__ import annotations

import dataclasses
import re

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from workflow_scripts.bench import Row, record
from workflow_scripts.core import repeatability
from workflow_scripts.plan.settings import BenchSettings, Stability


def _onnx(path, op: str = "Relu", date: str = "2026-12-08") -> None:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"date": date})  # what ultralytics' export writes anew each time
    onnx.save(model, str(path))


def test_the_fingerprint_is_what_the_artifact_computes_not_when_it_was_written(tmp_path):
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    _onnx(a, date="2026-12-08T02:13")
    _onnx(b, date="2026-12-08T02:23")
    _onnx(c, op="Sigmoid")
    assert a.read_bytes() != b.read_bytes()
    assert repeatability.fingerprint(a) == repeatability.fingerprint(b) != repeatability.fingerprint(c)
    w = torch.arange(6.0).reshape(2, 3)
    step = torch.tensor(3)  # a 0-dim tensor (an optimizer's step count), in bfloat16 too
    torch.save({"model": {"w": w, "s": step, "b": w.bfloat16()}, "meta": {"saved": "02:13"}}, tmp_path / "a.pt")
    torch.save({"model": {"w": w.clone(), "s": step, "b": w.bfloat16()}, "meta": {"saved": "02:23"}}, tmp_path / "b.pt")
    torch.save({"model": {"w": w + 1, "s": step, "b": w.bfloat16()}, "meta": {"saved": "02:13"}}, tmp_path / "c.pt")
    fa, fb, fc = (repeatability.fingerprint(tmp_path / f"{n}.pt") for n in "abc")
    assert fa == fb != fc
    spec = {"architecture": "pi0-tiny", "config": {"width": 64}, "seed": 0}  # no tensors: the spec is the model
    torch.save(spec, tmp_path / "s1.pt")
    torch.save(dict(reversed(spec.items())), tmp_path / "s2.pt")
    torch.save({**spec, "seed": 1}, tmp_path / "s3.pt")
    f1, f2, f3 = (repeatability.fingerprint(tmp_path / f"s{n}.pt") for n in "123")
    assert f1 == f2 != f3
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.bin").write_bytes(b"12")
    before = repeatability.fingerprint(tmp_path / "d")
    (tmp_path / "d" / "w.bin").write_bytes(b"13")
    assert repeatability.fingerprint(tmp_path / "d") != before


SETTINGS = BenchSettings(
    device="cpu", threads=1, backend_options={}, power="none", gpu=None, imgsz=64, warmup=1, iterations=2,
    min_seconds=0, conf=0.25,
    stability=Stability(max_cv=0.25, max_p99_over_p50=2.0, attempts=1, max_change_from_last_run=0.15),
)  # fmt: skip


def _record(artifact, p50: float, stable: bool = True, settings: BenchSettings = SETTINGS) -> dict:
    timing = {
        "latency_ms": {"p50": p50},
        "stable": stable,
        "stability": {"reason": None if stable else "cv 0.40 > 0.25", "reported_reason": None},
    }
    ran = {"runner": {"onnxruntime": "1.20"}}
    return record(Row("m", "yolo", artifact, "onnxruntime", "fp32", 1, artifact.parent, "cpu"), settings, timing, ran)


def test_a_row_far_from_its_last_clean_measurement_is_flagged_with_both_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANFORGE_ROWS_FILE", str(tmp_path / "rows.json"))
    art = tmp_path / "fp32.onnx"
    _onnx(art)
    first = _record(art, 17.40)
    assert first["stable"] and first["stability"]["previous_run"]["reproduced"] is None  # nothing to compare yet
    assert _record(art, 30.0, stable=False)["stability"]["previous_run"]["ratio"] == pytest.approx(30 / 17.4, 1e-3)
    again = _record(art, 16.10)  # the disturbed 30 ms was not remembered: compared with 17.40
    assert again["stable"] and again["stability"]["previous_run"]["reproduced"] is True
    off = _record(art, 7.38)  # 0.46× the last clean one (16.10)
    prev = off["stability"]["previous_run"]
    assert not off["stable"] and prev["reproduced"] is False and prev["previous_p50_ms"] == 16.10
    assert re.fullmatch(
        r"not reproducible here: 0\.46× the 16\.10 ms this machine measured for the same row at "
        r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \(limit ±15%\)",
        off["stability"]["reason"],
    )
    assert off["stability"]["reported_reason"] == off["stability"]["reason"]
    assert _record(art, 7.50)["stable"]  # the steady loop's 7.38 was remembered: the next run agrees with it


def test_another_artifact_or_settings_start_a_new_history_and_none_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANFORGE_ROWS_FILE", str(tmp_path / "rows.json"))
    art, other = tmp_path / "fp32.onnx", tmp_path / "other" / "fp32.onnx"
    other.parent.mkdir()
    _onnx(art)
    _onnx(other, op="Sigmoid")
    _record(art, 10.0)
    assert _record(other, 30.0)["stability"]["previous_run"]["reproduced"] is None  # another graph
    wider = dataclasses.replace(SETTINGS, iterations=50)
    assert _record(art, 30.0, settings=wider)["stability"]["previous_run"]["reproduced"] is None  # other settings
    off = dataclasses.replace(
        SETTINGS, stability=dataclasses.replace(SETTINGS.stability, max_change_from_last_run=None)
    )
    r = _record(art, 30.0, settings=off)
    assert r["stable"] and r["stability"]["previous_run"] is None
