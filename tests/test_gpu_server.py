"""The GPU server target: NVML energy, GPU pinning, CUDA-only backends, the server and Slurm profiles.

No GPU is on these machines: NVML is replaced by a fake module (tests say `fake`), and the
refusal paths run for real (torch really finds no CUDA device here).
"""

from __future__ import annotations

import os
import sys
import types

import pytest

from tests.conftest import REPO, planned_outputs
from workflow_scripts.core.envinfo import check_target_device
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.power.nvml import energy_result


def test_energy_comes_from_the_total_energy_counter_when_the_gpu_has_one():
    r = energy_result("nvml", [(0.0, 300.0), (1.0, 300.0)], 0.0, 2.0, 10_000.0, 610_000.0, inferences=1200)
    assert r["energy_j"] == 600.0 and r["energy_source"] == "total_energy_counter"
    assert r["energy_per_inference_j"] == 0.5 and r["inferences_per_joule"] == 2.0
    assert r["mean_power_w"] == 300.0


def test_energy_is_integrated_from_samples_without_a_counter():
    samples = [(0.0, 100.0), (1.0, 200.0), (2.0, 200.0)]  # trapezoids: 150 + 200 J
    r = energy_result("nvml", samples, 0.0, 2.0, None, None, inferences=700)
    assert r["energy_j"] == 350.0 and r["energy_source"] == "integrated_samples"
    assert r["inferences_per_joule"] == 2.0


def test_nvml_sampler_against_a_fake_pynvml_reads_power_and_the_counter(monkeypatch):
    energy = iter([5_000.0, 5_750.0])
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetPowerUsage=lambda h: 250_000,  # mW
        nvmlDeviceGetTotalEnergyConsumption=lambda h: next(energy),  # mJ
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    from workflow_scripts.power import get_sampler

    sampler = get_sampler("nvml", device="cuda:1")
    assert sampler.handle == "gpu1"
    sampler.start()
    sampler.stop()
    r = sampler.result(inferences=3)
    assert r["sampler"] == "nvml" and r["energy_j"] == 0.75 and r["energy_per_inference_j"] == 0.25
    assert r["mean_power_w"] == 250.0 and r["samples"] >= 1


def test_a_cuda_target_refuses_to_time_on_a_machine_without_a_gpu():
    with pytest.raises(PlanforgeError, match="target h100: device cuda but torch sees no CUDA GPU here"):
        check_target_device("h100", "cuda", "H100")
    check_target_device("cpu", "cpu", None)  # nothing to check


def test_a_pinned_target_refuses_another_gpu_fake_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    with pytest.raises(PlanforgeError) as err:
        check_target_device("h100", "cuda", "H100")
    assert str(err.value) == (
        "target h100: pinned to GPU 'H100' (targets.h100.gpu) but this machine's GPU is 'Tesla T4'; "
        "run it on a H100 or use the target that matches this GPU"
    )
    check_target_device("t4", "cuda", "T4")


def test_a_target_pinned_to_a_pattern_takes_either_card_and_refuses_others_fake_cuda(monkeypatch):
    import torch

    from workflow_scripts.config import gpu_pattern

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pin = gpu_pattern(["H100", "H200"], "targets.s.gpu")
    assert pin == "H100|H200" == gpu_pattern("H100|H200", "targets.s.gpu")
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "nvidia h100 pcie"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        check_target_device("s", "cuda", pin)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(PlanforgeError, match=r"pinned to GPU 'H100\|H200' \(targets.s.gpu\) but this machine's GPU"):
        check_target_device("s", "cuda", pin)
    assert gpu_pattern(["A100 (80GB)"], "k") == r"A100\ \(80GB\)"  # names in a list are plain text
    with pytest.raises(PlanforgeError, match=r"config key targets.s.gpu: 'H100\(' is not a valid pattern"):
        gpu_pattern("H100(", "targets.s.gpu")


def test_a_target_names_its_models_and_an_unknown_one_is_a_config_error():
    import yaml

    from workflow_scripts.config import validate

    raw = yaml.safe_load((REPO / "config/server.yaml").read_text())
    raw["targets"] = {"t": {"device": "cuda", "backends": {"torch": ["fp16"]}, "batch_sizes": [1], "models": ["nope"]}}
    with pytest.raises(PlanforgeError, match=r"config key targets.t.models: 'nope' is not one of \["):
        validate(raw, check_files=False)


SERVER_TARGETS = {
    "server-yolo": (["yolo-demo", "yolov8n-640"], [1, 256]),
    "server-dfine": (["dfine-demo", "dfine-x"], [1, 32]),
    "server-track": (["samurai-t", "samurai-l"], [1, 8]),
    "server-vla": (["pi0-1cam", "pi0-3cam"], [1, 4]),
}


def test_the_server_config_plans_every_kind_at_full_size_with_its_fast_paths_accuracy_and_energy():
    """config/server.yaml end to end through `snakemake -n` with the server profile (what a user runs)."""
    from workflow_scripts.config import load

    cfg = load(REPO / "config/server.yaml")
    assert {t: (s["models"], s["batch_sizes"]) for t, s in cfg["targets"].items()} == SERVER_TARGETS
    assert all(s["gpu"] == "H100|H200" and s["power"] == "nvml" for s in cfg["targets"].values())

    planned = planned_outputs(REPO, "--profile", "profiles/server", "results/summary.md")
    bench = {p for p in planned if "/bench/" in p}
    fast = {
        "server-yolo": [
            "torch_fp32",
            "torch_fp16",
            "torch-cudagraph_fp16",
            "torch-compile_fp16",
            "torch-compile-graph_fp16",
        ],
        "server-dfine": ["torch_fp32", "torch_fp16", "torch-cudagraph_fp16", "torch-compile-graph_fp16"],
        "server-track": ["torch_fp32", "torch_fp16", "torch-cudagraph_fp16", "torch-compile-graph_fp16"],
        "server-vla": ["torch_fp32", "torch_bf16", "torch-cudagraph_bf16", "torch-compile-graph_bf16"]
        + ["torchao_int8_weight", "torchao_int4_weight"],
    }
    expected = {
        f"results/{t}/bench/{m}/{row}_b{b}.json"
        for t, (models, batches) in SERVER_TARGETS.items()
        for m in models
        for row in fast[t]
        for b in batches
    }
    assert bench == expected  # each target times its own models only, at its own batches
    # accuracy against FP32 for every path of every model with trained (or compared) outputs; none for the
    # random-weight detectors, whose mAP means nothing
    accuracy = {p for p in planned if "/accuracy/" in p and p.endswith(".json")}  # Pi0 also keeps its actions (.npz)
    scored = {"server-yolo": ["yolo-demo"], "server-dfine": ["dfine-demo"]}
    want = {
        f"results/{t}/accuracy/{m}/{row}.json"
        for t, (models, _) in SERVER_TARGETS.items()
        for m in scored.get(t, models)
        for row in fast[t]
    }
    assert accuracy == want
    assert "results/summary.md" in planned
    assert {f"results/plots/{t}_latency_vs_power.png" for t in SERVER_TARGETS} <= planned


def test_the_server_config_with_serving_on_plans_triton_for_the_tracker_and_pi0_end_to_end(tmp_path):
    """`snakemake -n` over config/server.yaml plus a one-key overlay (serving.enabled: true), as a user turns it on."""
    overlay = tmp_path / "serving_on.yaml"
    overlay.write_text("serving:\n  enabled: true\n")
    planned = planned_outputs(
        REPO, "--profile", "profiles/server", "results/summary.md", "--configfile", "config/server.yaml", str(overlay)
    )
    serving = {p for p in planned if "/serving/" in p and p.endswith(".json")}
    assert serving == {
        f"results/{t}/serving/{m}{suffix}.json"
        for t, m in [("server-track", "samurai-t"), ("server-track", "samurai-l")]
        + [("server-vla", "pi0-1cam"), ("server-vla", "pi0-3cam")]
        for suffix in ("", "_accuracy")
    }
    assert {"results/plots/server-track_serving_throughput_vs_p99.png", "results/summary.md"} <= planned


def test_the_server_config_serves_the_tracker_and_pi0_on_the_gpu_when_serving_is_on():
    """The serving plan of config/server.yaml with `serving.enabled: true`: the sequence batcher for each SAMURAI,
    the python backend for each Pi0, each on its own kind's target (detectors serve where ONNX Runtime is listed)."""
    import yaml

    from workflow_scripts.config import validate
    from workflow_scripts.plan.jobs import Plan

    cfg = yaml.safe_load((REPO / "config/server.yaml").read_text())
    cfg["serving"]["enabled"] = True
    plan = Plan(validate(cfg, check_files=False), available=lambda b: (True, ""))
    assert plan.serving_targets() == ["server-track", "server-vla"]
    assert plan.served_here("server-track") == ["samurai-t", "samurai-l"]
    assert plan.served_here("server-vla") == ["pi0-1cam", "pi0-3cam"]
    assert "results/server-vla/serving/pi0-1cam.json" in plan.serving_outputs()
    assert plan.coserving("server-vla") is None  # Pi0 and YOLO on one server: a target that lists both kinds
    both = validate(
        {
            **cfg,
            "targets": {
                **cfg["targets"],
                "server-vla": {
                    **cfg["targets"]["server-vla"],
                    "models": ["pi0-1cam", "yolov8n-640"],
                    "backends": {"torch": ["bf16"], "onnxruntime": ["fp32"]},
                },
            },
        },
        check_files=False,
    )
    assert Plan(both, available=lambda b: (True, "")).coserving("server-vla") == ("pi0-1cam", "yolov8n-640")


def test_the_slurm_profile_plans_the_same_jobs_as_the_server_profile():
    local = planned_outputs(REPO, "--profile", "profiles/server", "results/summary.md")
    slurm = planned_outputs(REPO, "--profile", "profiles/slurm", "results/summary.md")
    assert slurm == local and slurm


def test_onnxruntime_gpu_provider_options_follow_the_precision():
    from workflow_scripts.runners.ort_runner import gpu_providers

    fp16 = dict(gpu_providers("fp16", "cuda:1", {}))
    assert list(fp16) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert fp16["TensorrtExecutionProvider"]["trt_fp16_enable"] is True
    assert fp16["TensorrtExecutionProvider"]["trt_int8_enable"] is False
    assert fp16["TensorrtExecutionProvider"]["device_id"] == 1 and fp16["CUDAExecutionProvider"]["device_id"] == 1
    assert fp16["TensorrtExecutionProvider"]["trt_engine_cache_enable"] is True
    int8 = dict(gpu_providers("int8_entropy", "cuda", {"execution_providers": ["tensorrt"], "workspace_mib": 512}))
    assert int8["TensorrtExecutionProvider"]["trt_int8_enable"] is True
    assert int8["TensorrtExecutionProvider"]["trt_max_workspace_size"] == 512 * 1024 * 1024
    table = dict(gpu_providers("int8_minmax", "cuda", {"int8_calibration_table": "calib.flatbuffers"}))
    assert table["TensorrtExecutionProvider"]["trt_int8_calibration_table_name"] == "calib.flatbuffers"
    assert list(dict(gpu_providers("fp32", "cuda", {"execution_providers": ["cuda"]}))) == ["CUDAExecutionProvider"]
    with pytest.raises(PlanforgeError, match="'rocm' is not one of"):
        gpu_providers("fp32", "cuda", {"execution_providers": ["rocm"]})


def test_onnxruntime_gpu_is_reported_unavailable_without_its_wheel():
    from workflow_scripts.runners import backend_available

    ok, reason = backend_available("onnxruntime-gpu")
    assert not ok and reason == "onnxruntime-gpu: not installed on this machine (missing package onnxruntime-gpu)"


def test_the_onnxruntime_gpu_runner_refuses_with_the_providers_this_machine_has(tmp_path):
    from workflow_scripts.runners.ort_runner import OrtGpuRunner

    with pytest.raises(PlanforgeError, match="execution provider TensorrtExecutionProvider is not available"):
        OrtGpuRunner(tmp_path / "fp32.onnx", "fp16", "cuda", options={})


def test_the_dfine_gpu_config_plans_graphs_and_compile_for_both_published_sizes_and_scores_the_demo():
    planned = planned_outputs(
        REPO, "--profile", "profiles/server", "results/summary.md", "--configfile", "config/dfine_gpu.yaml"
    )
    for model in ("dfine-n", "dfine-x"):
        for backend in ("torch_fp32", "torch_fp16", "torch-cudagraph_fp16"):
            for batch in (1, 4, 16, 32):
                assert f"results/h100/bench/{model}/{backend}_b{batch}.json" in planned
        assert f"results/h100-compile/bench/{model}/torch-compile_fp16_b1.json" in planned
    accuracy = sorted(p for p in planned if "/accuracy/" in p)
    assert all("/dfine-demo/" in p for p in accuracy)  # random weights: latency only; the trained demo is scored
    assert {p.rsplit("/", 1)[1] for p in accuracy} >= {"torch_fp32.json", "torch_fp16.json", "torch-compile_fp16.json"}
    assert "results/h100/accuracy/dfine-demo/torch-cudagraph_fp16.json" in accuracy


def test_capturable_turns_host_scalar_writes_into_fills_and_restores_the_switch(monkeypatch):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from workflow_scripts.runners.torch_runner import HostScalarsAsFills, capturable

    monkeypatch.delenv("TRANSFORMERS_DISABLE_TORCH_CHECK", raising=False)
    with capturable():
        assert os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] == "1"
    assert "TRANSFORMERS_DISABLE_TORCH_CHECK" not in os.environ

    # no CUDA here: record what reaches the mode for a CPU tensor, then check the CUDA branch's
    # decision on a fake CUDA destination (the check reads only is_cuda, device and dim)
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    t = torch.zeros(2, 2, dtype=torch.long)
    with Spy():
        t[0, 1] = 7  # what transformers' D-FINE does to its spatial_shapes tensor
    assert torch.ops.aten.copy_.default in seen and int(t[0, 1]) == 7

    filled = []
    dst = types.SimpleNamespace(is_cuda=True, fill_=lambda v: filled.append(v) or "filled")
    src = torch.tensor(7)
    mode = HostScalarsAsFills()
    assert mode.__torch_dispatch__(torch.ops.aten.copy_.default, (), (dst, src)) == "filled"
    assert filled == [7]


H100_DFINE = REPO / "docs/measured/h100/dfine"


def test_summary_and_plots_of_targets_without_mAP_jobs_print_cited_figures_beside_measured_ones(tmp_path):
    """The committed H100 D-FINE JSONs (random weights: no accuracy files at all) through the report code."""
    import json

    from workflow_scripts import plots, summary
    from workflow_scripts.config import load

    bench = sorted(str(p) for p in H100_DFINE.glob("h100/bench/dfine-[nx]/*.json"))
    assert len(bench) == 24
    pngs = [tmp_path / "plots" / f"h100_{k}.png" for k in ("latency_vs_batch", "accuracy_vs_latency")]
    plots.main(["--target", "h100", "--bench", *bench, "--latency-png", str(pngs[0]), "--accuracy-png", str(pngs[1])])
    assert all(p.stat().st_size > 10_000 for p in pngs)

    refs = load(REPO / "config/dfine_gpu.yaml")["references"]
    out = tmp_path / "summary.md"
    summary.main(["--bench", *bench, "--plots", *map(str, pngs), "--references", json.dumps(refs), "--out", str(out)])
    text = out.read_text()
    assert "dfine-x: accuracy not measured" in text
    mine = json.loads((H100_DFINE / "h100/bench/dfine-x/torch_fp32_b1.json").read_text())
    assert f"| dfine-x | torch | fp32 | 1 | 83.96 | {mine['latency_ms']['p50']:.2f} | 11.9 |" in text
    assert "| dfine-x | tensorrt | fp16 | 1 | 14.04 | — | 70.9 | — |" in text  # not measured here: a dash


def test_min_seconds_keeps_the_timed_loop_going_and_host_timers_stay_short(tmp_path):
    """Energy needs load over time: `bench.min_seconds` extends the loop; big batches cap the host timers."""
    from tests.conftest import DEMO_CHECKPOINT
    from workflow_scripts.bench import Row, bench
    from workflow_scripts.make_dataset import make_dataset
    from workflow_scripts.plan.settings import BenchSettings, Stability

    ds = tmp_path / "ds"
    make_dataset(
        ds, {"kind": "synthetic", "seed": 1, "splits": {"train": 0, "val": 2, "calib": 0}, "image_size": [96, 128]}
    )
    common = dict(
        device="cpu",
        threads=1,
        backend_options={},
        power="none",
        gpu=None,
        imgsz=64,
        warmup=1,
        iterations=2,
        conf=0.25,
        stability=Stability(max_cv=0.25, max_p99_over_p50=2.0, attempts=1),  # one timed loop, whatever its spread
    )

    def row(batch: int) -> Row:
        return Row("a", "yolo", DEMO_CHECKPOINT, "torch", "fp32", batch, ds, "cpu")

    r = bench(row(1), BenchSettings(min_seconds=0.5, **common))
    assert r["iterations"] > 2 and r["min_seconds"] == 0.5
    assert r["iterations"] * r["latency_ms"]["mean"] / 1e3 >= 0.45
    assert r["warmup_done"] >= 1 and r["host_timer_iterations"] == 3  # never fewer than 3

    common["iterations"] = 10
    big = bench(row(256), BenchSettings(min_seconds=0, **common))
    assert big["iterations"] == 10 and big["host_timer_iterations"] == 4  # ≈1000 images: 4 batches of 256
