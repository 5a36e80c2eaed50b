"""torch-compile-graph: inductor's kernels replayed from a plain CUDA graph.

What runs without a GPU is tested here: the registry entry and the config's device rule, the inductor
settings each compile mode runs with (max-autotune bounded), and the persistent cache folder. The compile
and the capture themselves run on a GPU only (benchmarks/gpu_compile_graph.py times them on an H200);
the compiled forward's one-graph property is tests/test_torch_compile.py's.
"""

from __future__ import annotations

import copy
import os

import pytest

from tests.conftest import TINY_CONFIG
from workflow_scripts.config import validate
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.pipeline import make_runner
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.runners import BACKENDS, get_runner_class
from workflow_scripts.runners.torch_runner import GRAPH_COMPILE_MODES, inductor_options, use_inductor_cache

BACKEND = "torch-compile-graph"


def _config(device: str) -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["targets"]["cpu"]["device"] = device
    cfg["targets"]["cpu"]["backends"] = {BACKEND: ["fp16"] if device == "cuda" else ["fp32"]}
    return cfg


def test_it_is_registered_cuda_only_with_its_options_and_defaults():
    spec = BACKENDS[BACKEND]
    assert spec.devices == ("cuda",) and spec.artifact == "checkpoint"
    assert spec.options == {
        "channels_last": None,
        "fuse_projections": False,
        "compile_mode": "default",
        "inductor_config": {},
        "cache_dir": "artifacts/inductor_cache",
    }
    assert get_runner_class(BACKEND).mode == "compile-graph"


def test_a_cuda_target_plans_its_jobs_with_the_registry_defaults_and_a_cpu_target_refuses_it():
    cfg = validate(_config("cuda"), check_files=False)
    plan = Plan(cfg, available=lambda b: (True, ""), gpu_name=lambda: "NVIDIA H200")
    assert "results/cpu/bench/a/torch-compile-graph_fp16_b1.json" in plan.bench_outputs()
    options = plan.bench_settings("cpu", "a", BACKEND).backend_options
    assert options["compile_mode"] == "default" and options["cache_dir"] == "artifacts/inductor_cache"

    with pytest.raises(PlanforgeError, match=f"targets.cpu.backends.{BACKEND}: needs a cuda device") as err:
        validate(_config("cpu"), check_files=False)
    assert "\n" not in str(err.value)


def test_an_unknown_option_is_refused_by_the_config_with_the_allowed_names():
    cfg = _config("cuda")
    cfg["targets"]["cpu"]["backend_options"] = {BACKEND: {"compile_mod": "max-autotune"}}
    with pytest.raises(PlanforgeError, match="'compile_mod' was unexpected"):
        validate(cfg, check_files=False)


def test_the_runner_refuses_a_cpu_device_before_loading_anything():
    with pytest.raises(PlanforgeError, match="needs a cuda device"):
        make_runner(BACKEND, "no-such-checkpoint.pt", "yolo", "fp32", "cpu")


def test_default_mode_sets_nothing_and_max_autotune_is_bounded_and_never_inductors_own_graphs():
    assert inductor_options("default") == {} and inductor_options(None) == {}
    bounded = inductor_options("max-autotune")
    assert bounded["max_autotune"] is True
    assert bounded["max_autotune_conv_backends"] == "ATEN"  # no Triton conv templates to tune (~8-10 s each)
    assert bounded["max_autotune_gemm_search_space"] == "DEFAULT"
    assert not bounded.get("triton.cudagraphs")
    # a user's inductor_config wins over the mode's
    assert (
        inductor_options("max-autotune", {"max_autotune_conv_backends": "ATEN,TRITON"})["max_autotune_conv_backends"]
        == "ATEN,TRITON"
    )
    assert set(GRAPH_COMPILE_MODES) == {"default", "max-autotune"}


@pytest.mark.parametrize(
    ("mode", "overrides", "message"),
    [
        ("reduce-overhead", None, "compile_mode 'reduce-overhead' is not one of \\['default', 'max-autotune'\\]"),
        ("default", {"triton.cudagraphs": True}, "triton.cudagraphs must stay off"),
        ("default", {"max_autotune_conv_backend": "ATEN"}, "'max_autotune_conv_backend' is not a torch._inductor"),
    ],
)
def test_wrong_compile_settings_are_one_line_errors(mode, overrides, message):
    with pytest.raises(PlanforgeError, match=message) as err:
        inductor_options(mode, overrides)
    assert "\n" not in str(err.value)


def test_the_inductor_cache_goes_to_the_configured_folder_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert use_inductor_cache(None) is None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    path = use_inductor_cache("artifacts/inductor_cache")
    assert path == str(tmp_path / "artifacts" / "inductor_cache") and os.path.isdir(path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == path
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == path  # where inductor writes its FX graphs, kernels and autotune results
