"""tegrastats parsing on real captured lines (sources in the fixtures), and the sampler beside a loop."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from workflow_scripts.power import SAMPLERS, get_sampler
from workflow_scripts.power.tegrastats import jetson_clocks_state, parse_line, summarize, total_rails

FIXTURES = Path(__file__).parent / "fixtures" / "tegrastats"
FAKES = Path(__file__).parent / "fakes"


def _lines(name: str) -> list[str]:
    return [ln for ln in (FIXTURES / name).read_text().splitlines() if ln and not ln.startswith("#")]


def test_agx_orin_lines_give_the_three_rails_gpu_load_and_temperatures():
    first, second = (parse_line(ln) for ln in _lines("agx_orin.txt"))
    assert first["rails"] == {
        "VDD_GPU_SOC": {"instant_mw": 3205, "average_mw": 3205},
        "VDD_CPU_CV": {"instant_mw": 4405, "average_mw": 4405},
        "VIN_SYS_5V0": {"instant_mw": 4767, "average_mw": 4767},
    }
    assert first["gr3d_load_pct"] == 0 and first["gr3d_mhz"] == [305, 305]
    assert first["temperatures_c"] == {
        "cpu": 53.062,
        "soc2": 48.25,
        "soc0": 48.843,
        "gpu": 47.812,
        "tj": 53.062,
        "soc1": 48.968,
    }
    assert first["ram_used_mb"] == 29114
    assert second["gr3d_mhz"] is None and second["rails"]["VDD_GPU_SOC"]["instant_mw"] == 4940
    assert total_rails(second["rails"]) == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"]


def test_orin_nx_nano_total_is_vdd_in_alone_not_the_sum_of_its_parts():
    parsed = [parse_line(ln) for ln in _lines("orin_nx_nano.txt")]
    assert [p["rails"]["VDD_IN"]["instant_mw"] for p in parsed] == [5299, 12479, 4824]
    assert parsed[1]["rails"]["VDD_CPU_GPU_CV"] == {"instant_mw": 4667, "average_mw": 4667}
    assert parsed[1]["gr3d_load_pct"] == 63 and parsed[1]["gr3d_mhz"] == [621]
    assert parsed[0]["temperatures_c"]["CV0"] == 45.812
    assert parsed[0]["temperatures_c"]["tj"] == 48.875
    assert total_rails(parsed[0]["rails"]) == ["VDD_IN"]
    s = summarize(parsed, seconds=2.0, inferences=400)
    mean_w = (5299 + 12479 + 4824) / 3 / 1e3
    assert s["mean_power_w"] == pytest.approx(mean_w, abs=1e-4)
    assert s["energy_j"] == pytest.approx(mean_w * 2.0, abs=1e-3)
    assert s["energy_per_inference_j"] == pytest.approx(mean_w * 2.0 / 400, rel=1e-4)
    assert s["inferences_per_joule"] == pytest.approx(400 / (mean_w * 2.0), rel=1e-4)
    assert s["gr3d_load_pct_mean"] == pytest.approx(21.0)


def test_a_line_without_stats_is_not_a_sample():
    assert parse_line("tegrastats: permission denied") is None


def test_jetson_clocks_show_from_a_real_orin_says_clocks_are_not_pinned():
    state = jetson_clocks_state((FIXTURES / "jetson_clocks_show.txt").read_text())
    assert state["cpu_locked"] is False and state["gpu_locked"] is None


def test_fake_tegrastats_sampler_runs_beside_a_loop_and_reports_energy(tmp_path, monkeypatch):
    exe = tmp_path / "tegrastats"
    exe.write_text(f"#!{sys.executable}\n" + (FAKES / "tegrastats.py").read_text())
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    line = _lines("agx_orin.txt")[1]  # 4940 + 988 + 4442 mW
    monkeypatch.setenv("PLANFORGE_TEGRASTATS", str(exe))
    monkeypatch.setenv("FAKE_TEGRASTATS_LINE", line)
    assert "tegrastats" in SAMPLERS
    sampler = get_sampler("tegrastats", device="cuda", interval_ms=20)
    sampler.start()
    time.sleep(0.3)  # the timed loop
    sampler.stop()
    r = sampler.result(inferences=600)
    assert r["samples"] >= 3 and 0.25 < r["window_s"] < 1.0
    assert r["mean_power_w"] == pytest.approx(10.37)
    assert r["energy_j"] == pytest.approx(10.37 * r["window_s"], rel=1e-3)
    assert r["inferences_per_joule"] == pytest.approx(600 / r["energy_j"], rel=1e-3)
    assert r["total_rails"] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"]
    assert r["power_mode"] == os.environ.get("PLANFORGE_POWER_MODE")  # no nvpmodel here
    assert r["jetson_clocks"]["state"] == "unknown"
    assert sampler.proc.poll() is not None  # tegrastats does not outlive the loop


def _bench_record(batch: int, p50: float, power: dict) -> dict:
    lat = {k: p50 for k in ("mean", "std", "p50", "p90", "p95", "p99", "min", "max")}
    return {
        "target": "orin-nano",
        "model": "m",
        "backend": "tensorrt",
        "precision": "fp16",
        "batch": batch,
        "latency_ms": lat,
        "throughput_items_per_s": 1000 * batch / p50,
        "preprocess_ms": lat,
        "postprocess_ms": lat,
        "power": power,
        "environment": {"gpu": "Orin", "libraries": {}, "git_commit": "x", "timestamp": "t"},
        "runner": {},
        "iterations": 10,
        "warmup": 1,
        "threads": None,
    }


def test_power_from_real_lines_reaches_the_summary_table_and_the_latency_vs_power_plot(tmp_path):
    from workflow_scripts import plots, summary

    lines = [parse_line(ln) for ln in _lines("orin_nx_nano.txt")]
    files = []
    for i, (batch, p50) in enumerate([(1, 2.0), (4, 5.0)]):
        rec = _bench_record(batch, p50, {"sampler": "tegrastats", **summarize(lines[i : i + 2], 1.0, 100 * batch)})
        f = tmp_path / f"b{batch}.json"
        f.write_text(json.dumps(rec))
        files.append(f)
    png = tmp_path / "orin-nano_latency_vs_power.png"
    plots.main(["--target", "orin-nano", "--bench", *map(str, files), "--power-png", str(png)])
    assert png.stat().st_size > 1000
    acc = tmp_path / "acc.json"
    acc.write_text(
        json.dumps(
            {"target": "orin-nano", "model": "m", "backend": "tensorrt", "precision": "fp16", "map50_95": 0.5}
            | {"map50": 0.7, "images": 6, "ratio_to_baseline": 1.0, "gate": {"passed": True}, "baseline": None}
        )
    )
    text = summary.summarise(files, [acc], [], 0.95, "torch_fp32", tmp_path / "summary.md", [png])
    assert "| mean W | inferences/J |" in text
    assert f"| {(5299 + 12479) / 2 / 1e3:.2f} | {100 / ((5299 + 12479) / 2 / 1e3):.1f} |" in text
    assert "- [latency vs power](" in text
