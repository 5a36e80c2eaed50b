"""trtexec --exportTimes / --exportProfile parsing (format: TensorRT's sampleReporting.cpp; see fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.tensorrt.trtexec_report import main, parse_profile, parse_times

FIXTURES = Path(__file__).parent / "fixtures" / "trtexec"


def test_export_times_give_latency_compute_and_throughput_in_bench_units():
    r = parse_times(json.loads((FIXTURES / "times.json").read_text()))
    assert r["inferences"] == 4
    assert r["latency_ms"]["mean"] == pytest.approx(1.7)
    assert r["latency_ms"]["max"] == pytest.approx(1.85)
    assert r["gpu_compute_ms"]["p50"] == pytest.approx(1.25)
    assert r["enqueue_ms"]["mean"] == pytest.approx((0.19 + 0.2 + 0.2 + 0.2) / 4, abs=1e-4)
    assert r["h2d_ms_mean"] == pytest.approx(0.25) and r["d2h_ms_mean"] == pytest.approx(0.2)
    assert r["throughput_qps"] == pytest.approx(4 / ((1006.8 - 1000.45) / 1e3), rel=1e-3)


def test_export_profile_lists_the_slowest_layers_first():
    r = parse_profile(json.loads((FIXTURES / "profile.json").read_text()), top=2)
    assert r["iterations"] == 4 and r["layers"] == 3
    assert r["sum_of_layer_averages_ms"] == pytest.approx(1.25)
    assert [s["average_ms"] for s in r["slowest_layers"]] == [0.95, 0.2]


def test_other_json_is_refused_with_one_line():
    with pytest.raises(PlanforgeError, match="not trtexec --exportTimes output"):
        parse_times([{"latency": 1.0}], "x.json")
    with pytest.raises(PlanforgeError, match="exportProfile"):
        parse_profile([{"name": "conv"}], "p.json")


def test_cli_writes_both_beside_each_other(tmp_path):
    out = tmp_path / "e.trtexec.json"
    main(["--times", str(FIXTURES / "times.json"), "--profile", str(FIXTURES / "profile.json"), "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["source"] == "trtexec" and r["times"]["inferences"] == 4 and r["profile"]["layers"] == 3
