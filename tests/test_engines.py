"""TensorRT engines through real snakemake runs: without TensorRT (as on every machine here) and with a
FAKE trtexec on PATH (tests/fakes/trtexec.py checks its arguments like TensorRT 10's and writes a file,
not an engine). What is real: snakemake, the DAG, the rule's params and the staleness they cause,
build_engine.py and its trtexec command lines, the sidecars, the bench CLI's refusal of a foreign engine."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_CONFIG, copy_built, make_workflow_copy, planned_outputs, snakemake, write_config
from workflow_scripts.plan.settings import BenchSettings, Stability
from workflow_scripts.tensorrt import engines

pytestmark = pytest.mark.workflow
FAKES = Path(__file__).parent / "fakes"


def _trt_config(**gpu_b_trt) -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["targets"]["gpu-a"] = {"device": "cuda", "backends": {"tensorrt": ["fp32", "fp16"]}, "batch_sizes": [1, 2]}
    cfg["targets"]["gpu-b"] = {
        "device": "cuda",
        "backends": {"tensorrt": ["fp16"]},
        "batch_sizes": [1],
        "tensorrt": {"workspace_mib": 1024, **gpu_b_trt},
    }
    return cfg


def _engines(outputs) -> set[str]:
    return {o for o in outputs if o.startswith("artifacts/engines/")}


def _builds(calls: Path) -> list[list[str]]:
    if not calls.is_file():
        return []
    return [c for c in map(json.loads, calls.read_text().splitlines()) if any(a.startswith("--saveEngine") for a in c)]


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory) -> Path:
    """A folder holding the fake trtexec, one per module: its path reaches the jobs' settings, so a copy of a
    workflow built with it stays up to date only with the same one on PATH."""
    bin_dir = tmp_path_factory.mktemp("fakebin")
    exe = bin_dir / "trtexec"
    exe.write_text(f"#!{sys.executable}\n" + (FAKES / "trtexec.py").read_text())
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _use_fake_trtexec(bin_dir: Path, calls: Path, mp: pytest.MonkeyPatch) -> Path:
    """PATH with the fake trtexec; this machine called 'Fake GPU A'; every fake call logged to `calls`."""
    mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    mp.setenv("PLANFORGE_GPU_NAME", "Fake GPU A")
    mp.delenv("PLANFORGE_TRTEXEC", raising=False)
    mp.setenv("FAKE_TRTEXEC_CALLS", str(calls))
    # timing (--loadEngine) and DLA builds: the fake prints and writes real trtexec output from these fixtures
    mp.setenv("FAKE_TRTEXEC_FIXTURES", str(Path(__file__).parent / "fixtures" / "trtexec" / "real"))
    return calls


@pytest.fixture
def fake_trtexec_env(fake_bin: Path, tmp_path: Path, monkeypatch) -> Path:
    return _use_fake_trtexec(fake_bin, tmp_path / "trtexec_calls.jsonl", monkeypatch)


@pytest.fixture(scope="module")
def _fake_engines_once(built_workflow: Path, fake_bin: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The built tiny workflow plus two TensorRT targets, run to completion with the fake trtexec, once per
    module: building and timing the ten engines is the slow part, and no test changes this copy."""
    where = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as mp:
        calls = _use_fake_trtexec(fake_bin, where / "trtexec_calls.jsonl", mp)
        work = copy_built(built_workflow, where / "wf")
        write_config(work, _trt_config())
        snakemake(work)
    return work, calls


@pytest.fixture
def fake_engines_built(_fake_engines_once, fake_trtexec_env: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the fake-engine build (its trtexec call log included), to change freely."""
    built, built_calls = _fake_engines_once
    shutil.copy2(built_calls, fake_trtexec_env)
    return copy_built(built, tmp_path / "wf"), fake_trtexec_env


def test_without_tensorrt_engines_are_not_scheduled_and_the_summary_says_why(workflow_copy: Path, monkeypatch):
    if engines.builder() is not None:
        pytest.skip("this machine has TensorRT")
    monkeypatch.delenv("PLANFORGE_TRTEXEC", raising=False)
    write_config(workflow_copy, _trt_config())
    planned = planned_outputs(workflow_copy)
    assert not _engines(planned)
    assert "results/summary.md" in planned
    snakemake(workflow_copy)
    summary = (workflow_copy / "results/summary.md").read_text()
    assert "gpu-a: tensorrt: TensorRT not installed on this machine" in summary
    assert "gpu-b: tensorrt: TensorRT not installed on this machine" in summary
    assert not (workflow_copy / "artifacts/engines").exists()
    assert (workflow_copy / "results/cpu/bench/a/onnxruntime_fp32_b2.json").is_file()


def test_fake_trtexec_builds_every_engine_with_a_sidecar_and_a_second_run_does_nothing(fake_engines_built):
    w, calls = fake_engines_built
    builds = _builds(calls)
    assert len(builds) == 2 * (2 * 2) + 2 * 1  # gpu-a: 2 models × 2 precisions × 2 batches; gpu-b: 2 × 1 × 1
    side = json.loads((w / "artifacts/engines/gpu-a/b/fp16_b2.json").read_text())
    assert side["builder"] == "trtexec"
    assert side["settings"]["gpu"] == "Fake GPU A" and side["settings"]["tensorrt_version"] == "10.3.0"
    assert side["settings"]["shapes"]["opt"] == [2, 3, 160, 160]
    assert "--fp16" in side["command"] and "--optShapes=images:2x3x160x160" in side["command"]
    assert "--timingCacheFile=artifacts/engines/gpu-a/timing.cache" in side["command"]
    assert "&&&& PASSED" in side["build_log"] and side["build_seconds"] >= 0
    assert (
        "--memPoolSize=workspace:1024M"
        in json.loads((w / "artifacts/engines/gpu-b/a/fp16_b1.json").read_text())["command"]
    )
    summary = (w / "results/summary.md").read_text()
    assert "gpu-a: tensorrt: engines timed by trtexec (GPU compute time); accuracy not measured" in summary
    timed = json.loads((w / "results/gpu-a/bench/b/tensorrt_fp16_b2.json").read_text())
    assert timed["timed_by"] == "trtexec" and "--shapes=images:2x3x160x160" in timed["trtexec"]["command"]
    assert planned_outputs(w) == set()
    assert "Nothing to be done" in snakemake(w, "-n").stdout + snakemake(w, "-n").stderr


def test_fake_trtexec_changing_precision_or_a_flag_rebuilds_only_those_engines(fake_engines_built):
    w, calls = fake_engines_built
    cfg = _trt_config()
    cfg["targets"]["gpu-b"]["backends"]["tensorrt"] = ["fp16", "fp32"]  # a precision added to one target
    write_config(w, cfg)
    assert _engines(planned_outputs(w)) == {
        f"artifacts/engines/gpu-b/{m}/fp32_b1.{ext}" for m in ("a", "b") for ext in ("plan", "json")
    }
    cfg = _trt_config(workspace_mib=2048)  # one flag of one target
    write_config(w, cfg)
    expected = {f"artifacts/engines/gpu-b/{m}/fp16_b1.{ext}" for m in ("a", "b") for ext in ("plan", "json")}
    assert _engines(planned_outputs(w)) == expected
    before = len(_builds(calls))
    untouched = (w / "artifacts/engines/gpu-a/a/fp16_b1.plan").stat().st_mtime_ns
    snakemake(w)
    new = _builds(calls)[before:]
    assert sorted(a for c in new for a in c if a.startswith("--onnx")) == [
        "--onnx=artifacts/onnx/a/fp32.onnx",
        "--onnx=artifacts/onnx/b/fp32.onnx",
    ]
    assert all("--memPoolSize=workspace:2048M" in c for c in new)
    assert (w / "artifacts/engines/gpu-a/a/fp16_b1.plan").stat().st_mtime_ns == untouched
    assert planned_outputs(w) == set()


def test_fake_trtexec_a_new_gpu_or_tensorrt_version_makes_every_engine_stale(fake_engines_built, monkeypatch):
    w, _ = fake_engines_built
    all_engines = _engines(
        f"artifacts/engines/{t}/{m}/{p}_b{n}.{ext}"
        for t, ps, ns in (("gpu-a", ("fp32", "fp16"), (1, 2)), ("gpu-b", ("fp16",), (1,)))
        for m in ("a", "b")
        for p in ps
        for n in ns
        for ext in ("plan", "json")
    )
    monkeypatch.setenv("PLANFORGE_GPU_NAME", "Fake GPU B")
    assert _engines(planned_outputs(w)) == all_engines
    monkeypatch.setenv("PLANFORGE_GPU_NAME", "Fake GPU A")
    monkeypatch.setenv("FAKE_TRTEXEC_VERSION", "100700")
    assert _engines(planned_outputs(w)) == all_engines


def test_fake_trtexec_an_engine_from_another_gpu_is_refused_with_the_one_line_rebuild_command(
    fake_engines_built, monkeypatch
):
    w, _ = fake_engines_built
    engine = "artifacts/engines/gpu-a/a/fp16_b1.plan"
    monkeypatch.setenv("PLANFORGE_GPU_NAME", "Fake GPU B")  # the engines were copied to another machine
    target = {"device": "cuda", "threads": None, "backend_options": {}, "power": "none", "gpu": None}
    settings = BenchSettings(
        **target,
        imgsz=160,
        warmup=1,
        iterations=2,
        min_seconds=0,
        conf=0.25,
        stability=Stability(max_cv=0.25, max_p99_over_p50=2.0, attempts=1),
    ).to_json()
    proc = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.bench", "--model", "a", "--family", "yolo", "--artifact", engine]
        + ["--backend", "tensorrt", "--precision", "fp16", "--batch", "1"]
        + ["--dataset", "artifacts/data/tiny", "--target", "gpu-a", "--settings", settings]
        + ["--out", "results/x.json"],
        cwd=w,
        env={**os.environ, "PYTHONPATH": str(w)},
        capture_output=True,
        text=True,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, lines
    assert lines[0] == (
        f"planforge error: {engine}: built for GPU 'Fake GPU A' with TensorRT 10.3.0, but this machine has GPU "
        f"'Fake GPU B' with TensorRT 10.3.0; rebuild it here: snakemake --cores 1 --force {engine}"
    )
    # and through snakemake, when only mtimes decide (engines copied with the results): the bench job fails so
    monkeypatch.setenv("FAKE_TRTEXEC_VERSION", "100700")
    monkeypatch.setenv("PLANFORGE_GPU_NAME", "Fake GPU A")
    proc = snakemake(
        w, "results/gpu-a/bench/a/tensorrt_fp16_b1.json", "--rerun-triggers", "mtime", "--force", check=False
    )
    assert proc.returncode != 0
    log = (w / "logs/bench/gpu-a/a/tensorrt_fp16_b1.log").read_text()
    assert "with TensorRT 10.3.0, but this machine has GPU 'Fake GPU A' with TensorRT 10.7.0" in log
    assert yaml.safe_load((w / "config/config.yaml").read_text())["targets"]["gpu-a"]  # config untouched


def _jetson_copy(tmp_path: Path) -> Path:
    w = make_workflow_copy(tmp_path / "jetson")
    shutil.copytree(REPO / "weights", w / "weights")
    cfg = yaml.safe_load((w / "config/jetson.yaml").read_text())
    for t in cfg["targets"].values():  # INT8 inputs come from the quantize rules, not on this branch
        t["backends"]["tensorrt"] = [p for p in t["backends"]["tensorrt"] if p != "int8"]
        t["python"] = sys.executable  # stands in for the board's .venv-jetpack (no TensorRT bindings: trtexec times)
    (w / "config/jetson.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return w


def test_jetson_profile_off_a_jetson_plans_no_orin_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANFORGE_GPU_NAME", "Intel CPU box")
    w = _jetson_copy(tmp_path)
    planned = planned_outputs(w, "--profile", "profiles/jetson")
    kinds = ("latency_vs_batch", "accuracy_vs_latency", "latency_vs_power")
    targets = ("orin-agx", "orin-agx-dla", "orin-nx", "orin-nano")
    assert planned == {"results/summary.md", *(f"results/plots/{t}_{k}.png" for t in targets for k in kinds)}


def test_fake_trtexec_jetson_profile_on_an_agx_orin_plans_its_two_targets_only(tmp_path, fake_trtexec_env, monkeypatch):
    monkeypatch.setenv("PLANFORGE_GPU_NAME", "NVIDIA Jetson AGX Orin Developer Kit")
    monkeypatch.setenv("PLANFORGE_POWER_MODE", "MAXN")
    w = _jetson_copy(tmp_path)
    planned = _engines(planned_outputs(w, "--profile", "profiles/jetson"))
    assert {p.split("/")[2] for p in planned} == {"orin-agx", "orin-agx-dla"}
    assert "artifacts/engines/orin-agx-dla/yolo-demo/fp16_b4.plan" in planned


def test_fake_trtexec_dla_engine_records_power_mode_and_a_new_mode_rebuilds_only_jetson_engines(
    fake_engines_built, monkeypatch
):
    w, calls = fake_engines_built
    monkeypatch.setenv("PLANFORGE_POWER_MODE", "MAXN")
    monkeypatch.setenv("PLANFORGE_TEGRASTATS", f"{sys.executable} {FAKES / 'tegrastats.py'}")
    lines = (Path(__file__).parent / "fixtures/tegrastats/agx_orin.txt").read_text().splitlines()
    monkeypatch.setenv("FAKE_TEGRASTATS_LINE", next(ln for ln in lines if ln and not ln.startswith("#")))
    monkeypatch.setenv("FAKE_TRTEXEC_SECONDS", "1")  # the fake's "inference": long enough for tegrastats readings
    cfg = _trt_config()
    cfg["targets"]["jetson"] = {
        "device": "cuda",
        "backends": {"tensorrt": ["fp16"]},
        "batch_sizes": [2],
        "power": "tegrastats",
        "tensorrt": {"dla_core": 0, "batch_profile": "dynamic"},
    }
    write_config(w, cfg)
    snakemake(w)
    side = json.loads((w / "artifacts/engines/jetson/a/fp16_b2.json").read_text())
    assert side["settings"]["power_mode"] == "MAXN"
    assert {"--useDLACore=0", "--allowGPUFallback", "--minShapes=images:1x3x160x160"} <= set(side["command"])
    assert side["dla_layers"] == {"dla": 2, "gpu": 2, "source": "build log", "reason": None}
    timed = json.loads((w / "results/jetson/bench/a/tensorrt_fp16_b2.json").read_text())
    assert "--useDLACore=0" in timed["trtexec"]["command"] and timed["power"]["inferences_per_joule"] > 0
    monkeypatch.setenv("PLANFORGE_POWER_MODE", "30W")
    assert _engines(planned_outputs(w)) == {
        f"artifacts/engines/jetson/{m}/fp16_b2.{ext}" for m in ("a", "b") for ext in ("plan", "json")
    }
