"""A stock Jetson (JetPack 6: Python 3.10 with the TensorRT bindings, Snakemake in its own 3.11+ venv), with fakes
for what cannot exist here: a FAKE trtexec (tests/fakes/trtexec.py, which prints and writes real trtexec output
from tests/fixtures/trtexec/real/), a FAKE tegrastats and a FAKE jtop package replaying real readings, and a
recording FAKE interpreter wrapper. What is real: snakemake, the plan, the bench CLI and its statistics, the
trtexec report parser, the power samplers' code, the config validation."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_CONFIG, snakemake, write_config
from workflow_scripts import config as pfconfig
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.metrics import latency_stats
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.plan.settings import BenchSettings, Stability
from workflow_scripts.power import get_sampler
from workflow_scripts.power.jtop_stats import parse_stats, summarize
from workflow_scripts.tensorrt import engines

FAKES = Path(__file__).parent / "fakes"
FIXTURES = Path(__file__).parent / "fixtures"
REAL_TRTEXEC = FIXTURES / "trtexec" / "real"


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _fake_trtexec(bin_dir: Path) -> Path:
    bin_dir.mkdir(exist_ok=True)
    return _executable(bin_dir / "trtexec", f"#!{sys.executable}\n" + (FAKES / "trtexec.py").read_text())


def _fake_python(path: Path, log: Path) -> Path:
    """A FAKE interpreter: records its argv (one JSON list a line), then runs this test's Python with it."""
    return _executable(
        path,
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"with open({str(log)!r}, 'a') as fh:\n    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n",
    )


def _tegrastats_line() -> str:
    lines = (FIXTURES / "tegrastats" / "agx_orin.txt").read_text().splitlines()
    return next(ln for ln in lines if ln and not ln.startswith("#"))


# -- the trtexec timing path -------------------------------------------------------------------------------------
def test_fake_trtexec_timing_path_writes_a_bench_json_from_real_trtexec_output(tmp_path, monkeypatch):
    exe = _fake_trtexec(tmp_path / "bin")
    engine = tmp_path / "fp16_b1.plan"
    engine.write_text("FAKE TensorRT engine written by tests/fakes/trtexec.py\n")
    sidecar = {"builder": "trtexec", "dla_layers": None}
    sidecar["settings"] = {"gpu": "Fake Orin", "tensorrt_version": "10.3.0", "input": "images", "dla_core": None}
    engine.with_suffix(".json").write_text(json.dumps(sidecar))
    settings = BenchSettings(
        device="cuda",
        threads=None,
        backend_options={"cuda_graph": True},
        power="tegrastats",
        gpu=None,
        imgsz=160,
        warmup=50,
        iterations=200,
        min_seconds=1,
        conf=0.25,
        # contention is tests/test_trtexec_contention.py's subject: here only the spread decides
        stability=Stability(max_cv=0.25, max_p99_over_p50=2.0, attempts=2, max_other_cpus=1000.0, quiet_wait_s=0),
    ).to_json()
    env = {
        **os.environ,
        "PLANFORGE_GPU_NAME": "Fake Orin",
        "PLANFORGE_POWER_MODE": "MAXN",
        "FAKE_TRTEXEC_FIXTURES": str(REAL_TRTEXEC),
        "FAKE_TRTEXEC_SECONDS": "0.3",  # its "inference": three tegrastats intervals
        "PLANFORGE_TEGRASTATS": f"{sys.executable} {FAKES / 'tegrastats.py'}",
        "FAKE_TEGRASTATS_LINE": _tegrastats_line(),
    }
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.bench", "--model", "a", "--family", "yolo", "--artifact", str(engine)]
        + ["--backend", "tensorrt", "--precision", "fp16", "--batch", "1", "--dataset", str(tmp_path)]
        + ["--target", "orin", "--settings", settings, "--trtexec", str(exe), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    records = json.loads((REAL_TRTEXEC / "mobilenet.qat.timing.json").read_text())
    compute_s = [x["computeMs"] / 1e3 for x in records]
    # the timer is trtexec's GPU compute time, with the statistics every bench row has
    assert r["timed_by"] == "trtexec" and "GPU compute time" in r["timer"]["model"]
    assert r["latency_ms"] == latency_stats(compute_s) and r["iterations"] == len(records) == 299
    assert r["throughput_items_per_s"] == round(len(records) / sum(compute_s), 3)
    assert r["warmup_done"] == 45  # "Warmup completed 45 queries over 200 ms" in the real stdout
    assert r["dispersion"] == {"timer": "gpu_compute_ms", "cv": 0.158, "p99_over_p50": 2.0022}
    # this real trace's p99/p50 is just over the limit: measured again, then reported as disturbed
    assert r["stable"] is False and len(r["stability"]["attempts"]) == 2
    assert "p99/p50 2.00 > 2" in r["stability"]["reason"]
    cmd = r["trtexec"]["command"]
    assert {"--shapes=images:1x3x160x160", "--iterations=200", "--duration=1", "--useCudaGraph"} <= set(cmd)
    assert "--warmUp=500" in cmd and f"--loadEngine={engine}" in cmd
    assert r["trtexec"]["layer_profile"]["iterations"] == 4216
    # power: the real tegrastats line's rails, over the inference window; energy over the timed span
    power = r["power"]
    assert power["sampler"] == "tegrastats" and power["power_mode"] == "MAXN" and power["samples"] >= 1
    span_s = (max(x["endComputeMs"] for x in records) - min(x["startComputeMs"] for x in records)) / 1e3
    assert power["energy_j"] == round(power["mean_power_w"] * span_s, 4)
    assert power["inferences_per_joule"] == pytest.approx(299 / (power["mean_power_w"] * span_s))
    # no accuracy is made up for it, and the job says which interpreter ran it
    assert r["accuracy"]["measured"] is False and "trtexec" in r["accuracy"]["reason"]
    assert r["environment"]["interpreter"]["executable"] == sys.executable


def test_trtexec_timing_refuses_another_backend_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.bench", "--model", "a", "--family", "yolo", "--artifact", "x.onnx"]
        + ["--backend", "onnxruntime", "--precision", "fp32", "--batch", "1", "--dataset", str(tmp_path)]
        + ["--target", "t", "--settings", _settings_json(), "--trtexec", "trtexec", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 1 and lines == [
        "planforge error: --trtexec times TensorRT engines only, not backend 'onnxruntime'"
    ]


def _settings_json() -> str:
    return BenchSettings(
        device="cpu", threads=1, backend_options={}, power="none", gpu=None, imgsz=160, warmup=1, iterations=2,
        min_seconds=0, conf=0.25, stability=Stability(max_cv=0.25, max_p99_over_p50=2.0, attempts=1),
    ).to_json()  # fmt: skip


# -- jtop ----------------------------------------------------------------------------------------------------------
def test_jtop_stats_of_a_real_orin_nano_reading_give_total_power_rails_and_board_state():
    stats = json.loads((FIXTURES / "jtop" / "orin_nano_stats.json").read_text())
    s = parse_stats(stats)
    assert s["total_mw"] == 5133 and s["rails"] == {"VDD_CPU_GPU_CV": 1064, "VDD_SOC": 1540}
    assert s["gpu_load_pct"] == 4.8 and s["nvp_model"] == "25W" and s["jetson_clocks"] == "OFF"
    assert "cv0" not in s["temperatures_c"] and s["temperatures_c"]["tj"] == 47.906  # -256: sensor off
    summary = summarize([s, s], seconds=2.0, inferences=100)
    assert summary["mean_power_w"] == 5.133 and summary["energy_j"] == 10.266
    assert summary["inferences_per_joule"] == pytest.approx(100 / 10.266)
    assert parse_stats({"GPU": 3.0}) is None  # no power reading on this board


def test_fake_jtop_sampler_beside_a_loop_records_energy_power_mode_and_clocks(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES / "fake_jtop"))
    monkeypatch.setenv("FAKE_JTOP_STATS", str(FIXTURES / "jtop" / "orin_nano_stats.json"))
    monkeypatch.setenv("PLANFORGE_POWER_MODE", "25W")
    sampler = get_sampler("jtop", interval_ms=20)
    sampler.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.15:  # the timed loop: several jtop intervals
        sum(i * i for i in range(1000))
    sampler.stop()
    r = sampler.result(inferences=50)
    assert r["sampler"] == "jtop" and r["samples"] >= 1 and r["mean_power_w"] == 5.133
    assert r["inferences_per_joule"] == pytest.approx(50 / r["energy_j"], rel=1e-3)
    assert r["power_mode"] == "25W" and r["jtop_board"] == {"jetson_clocks": "OFF", "nvp_model": "25W"}
    assert "state" in r["jetson_clocks"] or "gpu_locked" in r["jetson_clocks"]


def test_jtop_without_its_service_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES / "fake_jtop"))
    monkeypatch.delenv("FAKE_JTOP_STATS", raising=False)
    with pytest.raises(PlanforgeError, match=r"jtop\.service") as err:
        get_sampler("jtop", interval_ms=20).start()
    assert "\n" not in str(err.value).split(" (")[0]


# -- DLA -----------------------------------------------------------------------------------------------------------
def test_dla_layer_counts_come_from_a_real_dla_build_log():
    log = (REAL_TRTEXEC / "dla_build_log.txt").read_text()
    assert engines.dla_layers(log) == {"dla": 2, "gpu": 2, "source": "build log", "reason": None}
    assert engines.dla_layers("[I] [TRT] Engine built")["dla"] is None


def test_a_dla_int8_engine_must_build_from_the_calibration_cache():
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["quantize"] = {"calibration": {"images": 2}}  # the tiny calib split's size (more is refused at planning)
    cfg["targets"]["dla"] = {
        "device": "cuda",
        "backends": {"tensorrt": ["fp16", "int8"]},
        "batch_sizes": [1],
        "tensorrt": {"dla_core": 0, "int8": "explicit"},
    }
    with pytest.raises(PlanforgeError, match=r"targets\.dla\.tensorrt\.int8: .*calibration cache.*implicit"):
        pfconfig.validate(cfg, check_files=False)
    cfg["targets"]["dla"]["tensorrt"]["int8"] = "implicit"
    plan = Plan(pfconfig.validate(cfg, check_files=False), trt_builder=lambda: "trtexec")
    assert plan.engine_calibration("dla", "a", "int8") == ["artifacts/calib/a/entropy.cache"]


# -- the plan: a target's interpreter -------------------------------------------------------------------------------
def _jetson_cfg(python: str | None) -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    for name in ("orin", "orin-dla"):
        cfg["targets"][name] = {
            "device": "cuda",
            "python": python,
            "backends": {"tensorrt": ["fp16"]},
            "batch_sizes": [1],
            "power": "tegrastats",
        }
    return cfg


def test_fake_python_board_without_bindings_or_trtexec_gets_one_clear_line_per_target(tmp_path, monkeypatch):
    calls = tmp_path / "python_calls.jsonl"
    python = _fake_python(tmp_path / "fake-python3.10", calls)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no trtexec anywhere
    monkeypatch.delenv("PLANFORGE_TRTEXEC", raising=False)
    engines.find_trtexec.cache_clear()
    try:
        plan = Plan(pfconfig.validate(_jetson_cfg(str(python)), check_files=False), trt_builder=lambda: None)
        lines = [ln for ln in plan.unavailable_lines() if ln.startswith("orin")]
        assert plan.engine_outputs() == [] and not list(plan.runs("orin"))
    finally:
        engines.find_trtexec.cache_clear()
    assert len(lines) == 2 and lines[0].startswith("orin: tensorrt: TensorRT not installed on this machine")
    assert lines[0].endswith(
        f"engines are not built and not timed; missing Python module tensorrt for Python {sys.version.split()[0]} "
        f"under targets.orin.python {python}"
    )
    assert json.loads(calls.read_text().splitlines()[0])[0] == "-c"  # the interpreter itself was asked, once
    assert len(calls.read_text().splitlines()) == 1


def test_a_target_whose_python_does_not_exist_plans_no_job_and_says_so_in_one_line(tmp_path):
    cfg = _jetson_cfg(str(tmp_path / "no-such-venv/bin/python"))
    cfg["targets"]["orin"]["backends"]["onnxruntime"] = ["fp32"]
    plan = Plan(pfconfig.validate(cfg, check_files=False), trt_builder=lambda: "trtexec")
    assert not list(plan.runs("orin")) and plan.engine_outputs(["orin"]) == []
    lines = [ln for ln in plan.unavailable_lines() if ln.startswith("orin:")]
    assert lines == [
        f"orin: targets.orin.python {str(tmp_path / 'no-such-venv/bin/python')!r}: no such interpreter, so none of "
        "its jobs run; create it (README: On a Jetson) or fix the path"
    ]


@pytest.mark.workflow
def test_fake_python_runs_the_targets_engine_bench_and_accuracy_jobs(workflow_copy: Path, tmp_path, monkeypatch):
    """Snakemake in this venv; the target's jobs through its interpreter (a recording wrapper), engines built and
    timed by a FAKE trtexec (no bindings under that interpreter), the summary saying what was not measured."""
    calls = tmp_path / "python_calls.jsonl"
    python = _fake_python(tmp_path / "fake-python3.10", calls)
    bin_dir = tmp_path / "fakebin"
    _fake_trtexec(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PLANFORGE_GPU_NAME", "Fake Orin")
    monkeypatch.setenv("FAKE_TRTEXEC_FIXTURES", str(REAL_TRTEXEC))
    monkeypatch.delenv("PLANFORGE_TRTEXEC", raising=False)
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["models"].pop("b")
    cfg["targets"]["jet"] = {
        "device": "cuda",
        "python": str(python),
        "backends": {"tensorrt": ["fp16"]},
        "batch_sizes": [1],
        "tensorrt": {"timing_cache": False},
    }
    # the board's CPU backends under the same interpreter (no GPU here for the GPU ones): real ONNX Runtime jobs
    cfg["targets"]["jet-cpu"] = {**TINY_CONFIG["targets"]["edge"], "python": str(python)}
    cfg["bench"]["stability"] = {"max_cv": 0.25, "max_p99_over_p50": 2.0, "attempts": 1}
    cfg["pictures"] = {"images": 0}
    write_config(workflow_copy, cfg)
    snakemake(workflow_copy, "results/summary.md", "artifacts/engines/jet/a/fp16_b1.plan")
    steps = sorted({c[1] for c in map(json.loads, calls.read_text().splitlines()) if c[0] == "-m"})
    assert steps == ["workflow_scripts.accuracy", "workflow_scripts.bench", "workflow_scripts.tensorrt.build_engine"]
    results = workflow_copy / "results/jet"
    trt = json.loads((results / "bench/a/tensorrt_fp16_b1.json").read_text())
    results = workflow_copy / "results/jet-cpu"
    assert trt["timed_by"] == "trtexec" and trt["latency_ms"]["p50"] == 0.445
    side = json.loads((workflow_copy / "artifacts/engines/jet/a/fp16_b1.json").read_text())
    assert side["builder"] == "trtexec" and side["interpreter"]["executable"] == sys.executable
    ort = json.loads((results / "bench/a/onnxruntime_fp32_b1.json").read_text())
    assert ort["environment"]["interpreter"]["version"] == sys.version.split()[0]
    assert (results / "accuracy/a/onnxruntime_fp32.json").is_file()
    assert not (workflow_copy / "results/jet/accuracy/a/tensorrt_fp16.json").exists()  # no number made up
    summary = (workflow_copy / "results/summary.md").read_text()
    assert "jet: tensorrt: engines timed by trtexec (GPU compute time); accuracy not measured" in summary
    assert "- a tensorrt fp16 b1: accuracy not measured: timed by trtexec" in summary
