"""Engine settings, trtexec command lines and the Python-API builder, off a GPU.

Nothing here has TensorRT. The trtexec command lines are run against the FAKE trtexec
(tests/fakes/trtexec.py), which checks arguments the way TensorRT 10's trtexec does. The Python-API
builder is run against a FAKE `tensorrt` module that checks only what TensorRT's documentation fixes:
the order of the calls (Builder → create_network → OnnxParser.parse_from_file → builder config →
optimisation profile → build_serialized_network) and their arguments.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import types
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from workflow_scripts.config import TENSORRT_DEFAULTS
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.tensorrt import engines
from workflow_scripts.tensorrt.build_engine import build_with_python_api

FAKES = Path(__file__).parent / "fakes"
IDENTITY = {"gpu": "Fake GPU A", "tensorrt_version": "10.3.0", "power_mode": None}


@pytest.fixture
def fake_trtexec(tmp_path: Path) -> Path:
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n" + (FAKES / "trtexec.py").read_text())
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 3, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output0"])], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


def _settings(precision="fp16", batch=4, cache=None, **trt):
    s = engines.engine_settings("m", precision, batch, 64, "images", {**TENSORRT_DEFAULTS, **trt}, IDENTITY)
    if cache is not None:
        s["calibration_cache"] = str(cache)
    return s


@pytest.mark.parametrize(
    ("banner", "version"),
    [
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --version", "10.3.0"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v101401] [b48] # trtexec --version", "10.14.1"),
        ("&&&& PASSED TensorRT.trtexec [TensorRT v8601] # trtexec --onnx=a.onnx", "8.6.1"),
        ("no banner", None),
    ],
)
def test_tensorrt_version_comes_from_trtexecs_banner(banner, version):
    assert engines.version_from_banner(banner) == version


def test_settings_hold_everything_that_changes_an_engine():
    s = _settings("int8", 2, batch_profile="dynamic", dla_core=1, int8="implicit", calibration="minmax")
    assert s["shapes"] == {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [2, 3, 64, 64]}
    assert s["calibration_cache"] == "artifacts/calib/m/minmax.cache"
    assert (s["dla_core"], s["gpu_fallback"], s["int8"]) == (1, True, "implicit")
    assert {k: s[k] for k in IDENTITY} == IDENTITY
    assert (
        engines.onnx_input("m", "int8", {**TENSORRT_DEFAULTS, "int8": "explicit"})
        == "artifacts/onnx/m/int8_entropy.onnx"
    )
    assert engines.onnx_input("m", "fp16", TENSORRT_DEFAULTS) == "artifacts/onnx/m/fp32.onnx"
    assert _settings("fp16")["calibration_cache"] is None and _settings("fp16")["int8"] is None


@pytest.mark.parametrize(
    ("precision", "trt", "expect"),
    [
        ("fp32", {}, []),
        ("fp16", {}, ["--fp16"]),
        ("best", {"int8": "implicit"}, ["--best", "--calib="]),
        ("int8", {"int8": "implicit", "dla_core": 0}, ["--int8", "--useDLACore=0", "--allowGPUFallback", "--calib="]),
        ("int8", {"int8": "explicit"}, ["--int8"]),
    ],
)
def test_fake_trtexec_accepts_every_command_line_we_build(fake_trtexec, tiny_onnx, tmp_path, precision, trt, expect):
    cache = tmp_path / "c.cache"
    cache.write_text("TRT-100300-EntropyCalibration2\n")
    s = _settings(precision, 4, cache if trt.get("int8") == "implicit" else None, **trt)
    cmd = engines.trtexec_command(str(fake_trtexec), s, tiny_onnx, tmp_path / "e.plan", tmp_path / "t.cache")
    for flag in expect:
        assert any(a.startswith(flag) for a in cmd), (flag, cmd)
    assert "--minShapes=images:4x3x64x64" in cmd and "--memPoolSize=workspace:4096M" in cmd
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert "&&&& PASSED TensorRT.trtexec [TensorRT v100300]" in proc.stdout
    assert (tmp_path / "e.plan").is_file()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda c: [a.replace("images:", "input:") for a in c], 'cannot find input tensor with name "input"'),
        (lambda c: [*c, "--workspace=4096"], "Unknown option: --workspace"),
        (lambda c: [a for a in c if not a.startswith("--maxShapes")], "must be given together"),
        (lambda c: [a.replace("4x3x64x64", "4x3x64") for a in c], "has 4 dimensions, got 3"),
        (lambda c: [*c, "--calib=missing.cache"], "--calib needs --int8"),
    ],
)
def test_fake_trtexec_rejects_what_real_trtexec_rejects(fake_trtexec, tiny_onnx, tmp_path, change, error):
    cmd = engines.trtexec_command(str(fake_trtexec), _settings(), tiny_onnx, tmp_path / "e.plan", None)
    proc = subprocess.run(change(cmd), capture_output=True, text=True)
    assert proc.returncode == 1 and error in proc.stdout and "&&&& FAILED" in proc.stdout
    assert not (tmp_path / "e.plan").exists()


def test_an_engine_from_another_gpu_or_tensorrt_is_refused_with_both_names_and_the_command(tmp_path):
    engine = tmp_path / "artifacts/engines/t/m/fp16_b1.plan"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"plan")
    engines.sidecar_path(engine).write_text(json.dumps({"settings": IDENTITY}))
    assert engines.check_engine(engine, IDENTITY)["settings"] == IDENTITY
    with pytest.raises(PlanforgeError) as err:
        engines.check_engine(engine, {"gpu": "NVIDIA H100 80GB HBM3", "tensorrt_version": "10.7.0"})
    msg = str(err.value)
    assert "\n" not in msg
    assert "'Fake GPU A' with TensorRT 10.3.0" in msg and "'NVIDIA H100 80GB HBM3' with TensorRT 10.7.0" in msg
    assert msg.endswith(f"snakemake --cores 1 --force {engine}")


def make_fake_tensorrt(calls: list, parse_ok: bool = True) -> types.SimpleNamespace:
    """A FAKE `tensorrt` module: records calls, checks the documented order and argument types."""
    state: dict = {}

    class ILogger:
        def __init__(self):
            pass

    class IInt8EntropyCalibrator2:
        def __init__(self):
            calls.append(("IInt8EntropyCalibrator2",))

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            assert all(len(s) == 4 for s in (mn, opt, mx))
            calls.append(("profile.set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

    class TimingCache:
        def serialize(self):
            calls.append(("timing_cache.serialize",))
            return b"timing-cache"

    class Config:
        def __setattr__(self, key, value):
            calls.append((f"config.{key}", value))
            object.__setattr__(self, key, value)

        def set_memory_pool_limit(self, pool, size):
            assert isinstance(size, int)
            calls.append(("config.set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("config.set_flag", flag))

        def add_optimization_profile(self, profile):
            assert isinstance(profile, Profile)
            calls.append(("config.add_optimization_profile",))

        def create_timing_cache(self, data):
            assert isinstance(data, bytes)
            calls.append(("config.create_timing_cache", data))
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            assert isinstance(cache, TimingCache)
            calls.append(("config.set_timing_cache", ignore_mismatch))

    class Network:
        pass

    class Builder:
        def __init__(self, logger):
            assert isinstance(logger, ILogger)
            state["logger"] = logger
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("builder.create_network", flags))
            return Network()

        def create_builder_config(self):
            calls.append(("builder.create_builder_config",))
            return Config()

        def create_optimization_profile(self):
            calls.append(("builder.create_optimization_profile",))
            return Profile()

        def build_serialized_network(self, network, config):
            assert isinstance(network, Network) and isinstance(config, Config)
            calls.append(("builder.build_serialized_network",))
            state["logger"].log("INFO", "Engine generation completed")
            return b"serialized-plan"

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            assert isinstance(network, Network) and isinstance(logger, ILogger)
            calls.append(("OnnxParser",))

        def parse_from_file(self, path):
            assert Path(path).is_file()
            calls.append(("parser.parse_from_file", Path(path).name))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported attribute"

    return types.SimpleNamespace(
        __version__="10.3.0",
        ILogger=ILogger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        IInt8EntropyCalibrator2=IInt8EntropyCalibrator2,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK"),
        DeviceType=types.SimpleNamespace(DLA="DLA", GPU="GPU"),
    )


def test_python_api_builder_follows_the_documented_call_order_fake_tensorrt_module(tiny_onnx, tmp_path):
    calls: list = []
    engine, cache = tmp_path / "e.plan", tmp_path / "timing.cache"
    command, log = build_with_python_api(make_fake_tensorrt(calls), _settings("fp16", 4), tiny_onnx, engine, cache)
    names = [c[0] for c in calls]
    assert names == [
        "Builder",
        "builder.create_network",
        "OnnxParser",
        "parser.parse_from_file",
        "builder.create_builder_config",
        "config.set_memory_pool_limit",
        "config.builder_optimization_level",
        "config.set_flag",
        "builder.create_optimization_profile",
        "profile.set_shape",
        "config.add_optimization_profile",
        "config.create_timing_cache",
        "config.set_timing_cache",
        "builder.build_serialized_network",
        "timing_cache.serialize",
    ]
    assert calls[1] == ("builder.create_network", 0)
    assert ("config.set_memory_pool_limit", "WORKSPACE", 4096 << 20) in calls
    assert ("config.set_flag", "FP16") in calls
    assert ("profile.set_shape", "images", (4, 3, 64, 64), (4, 3, 64, 64), (4, 3, 64, 64)) in calls
    assert ("config.create_timing_cache", b"") in calls  # no cache yet: an empty one
    assert engine.read_bytes() == b"serialized-plan" and cache.read_bytes() == b"timing-cache"
    assert "Engine generation completed" in log and command[0] == "tensorrt-python-api"


def test_python_api_builder_sets_dla_and_implicit_int8_from_the_cache_fake_tensorrt_module(tiny_onnx, tmp_path):
    calls: list = []
    calib = tmp_path / "entropy.cache"
    calib.write_bytes(b"TRT-100300-EntropyCalibration2\nimages: 3c010a14\n")
    s = _settings("int8", 1, calib, int8="implicit", dla_core=0)
    build_with_python_api(make_fake_tensorrt(calls), s, tiny_onnx, tmp_path / "e.plan", None)
    assert ("config.set_flag", "INT8") in calls and ("config.set_flag", "FP16") not in calls
    assert ("config.default_device_type", "DLA") in calls and ("config.DLA_core", 0) in calls
    assert ("config.set_flag", "GPU_FALLBACK") in calls
    calibrator = next(v for k, v in [c[:2] for c in calls if len(c) > 1] if k == "config.int8_calibrator")
    assert calibrator.read_calibration_cache() == calib.read_bytes() and calibrator.get_batch(["images"]) is None
    assert not any(c[0].startswith("config.create_timing_cache") for c in calls)


def test_python_api_builder_reports_the_parsers_error_in_one_line_fake_tensorrt_module(tiny_onnx, tmp_path):
    with pytest.raises(PlanforgeError, match=r"cannot parse it \(In node 3 \(Conv\): unsupported attribute\)"):
        build_with_python_api(make_fake_tensorrt([], parse_ok=False), _settings(), tiny_onnx, tmp_path / "e.plan", None)
    assert not (tmp_path / "e.plan").exists()


def test_python_api_builder_refuses_trtexec_only_flags_instead_of_dropping_them_fake_tensorrt_module(
    tiny_onnx, tmp_path
):
    calls: list = []
    s = _settings(extra_flags=["--sparsity=enable"])
    with pytest.raises(PlanforgeError, match=r"extra_flags \['--sparsity=enable'\] are trtexec flags"):
        build_with_python_api(make_fake_tensorrt(calls), s, tiny_onnx, tmp_path / "e.plan", None)
    assert calls == []


def _base_config() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).parent.parent / "config" / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ({"device": "cpu", "backends": {"tensorrt": ["fp16"]}}, "tensorrt: needs a cuda device"),
        ({"device": "cuda", "backends": {"torch": ["int8"]}}, "'int8' is not one of ['fp32', 'fp16', 'bf16']"),
        (
            {"device": "cuda", "backends": {"tensorrt": ["fp16"]}, "tensorrt": {"int8": "qdq"}},
            "config key targets.t.tensorrt.int8: 'qdq' is not one of ['explicit', 'implicit']",
        ),
        (
            {"device": "cuda", "backends": {"tensorrt": ["fp16"]}, "tensorrt": {"extra_flags": ["sparsity"]}},
            "config key targets.t.tensorrt.extra_flags.0",
        ),
    ],
)
def test_tensorrt_config_errors_name_the_key(target, error):
    from workflow_scripts.config import validate

    cfg = _base_config()
    cfg["targets"]["t"] = {"batch_sizes": [1], **target}
    with pytest.raises(PlanforgeError) as err:
        validate(cfg)
    assert error in str(err.value)


def test_tensorrt_section_is_filled_from_the_defaults():
    from workflow_scripts.config import validate

    cfg = _base_config()
    cfg["targets"]["t"] = {"device": "cuda", "backends": {"tensorrt": ["int8"]}, "batch_sizes": [1]}
    cfg["targets"]["t"]["tensorrt"] = {"dla_core": 1}
    trt = validate(cfg)["targets"]["t"]["tensorrt"]
    assert trt == {**TENSORRT_DEFAULTS, "dla_core": 1, "int8": "implicit"}  # DLA INT8: from the calibration cache
