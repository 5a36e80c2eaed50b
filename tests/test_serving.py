"""Triton serving with a real tritonserver and perf_analyzer on the demo checkpoint at a small image size.

The serving environment (nvidia-pytriton's tritonserver, the python backend, perf_analyzer; numpy<2)
is made by the workflow itself from PyPI on first use and shared between test runs through
PLANFORGE_TRITON_ENV (default: .venv-triton/ in this checkout, git-ignored).
"""

from __future__ import annotations

import copy
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests._early import Early
from tests.conftest import REPO, TINY_CONFIG, copy_built, make_workflow_copy, snakemake, write_config
from workflow_scripts.config import validate
from workflow_scripts.core.io import PlanforgeError, read_json
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.served import triton_models_of
from workflow_scripts.serving.server import serve

pytestmark = pytest.mark.workflow

SERVING_CONFIG = copy.deepcopy(TINY_CONFIG)
# "d": the trained dfine-demo (weights/dfine-demo, a save_pretrained directory) through its own ensemble
# "p": the tiny Pi0 (task vla) as one python-backend model, co-served with "a"
EPISODES = {"kind": "episodes", "seed": 0, "splits": {"val": 3}, "cameras": 1, "camera_size": 64}
SERVING_CONFIG["datasets"]["eps"] = EPISODES
SERVING_CONFIG["models"] = {
    "a": SERVING_CONFIG["models"]["a"],
    "d": {"family": "dfine", "checkpoint": "ckpt/d", "dataset": "tiny", "imgsz": 320},
    "p": {"family": "pi0", "checkpoint": "pi0-tiny.yaml", "dataset": "eps"},
}
SERVING_CONFIG["targets"] = {"cpu": {**SERVING_CONFIG["targets"]["cpu"], "batch_sizes": [1]}}
SERVING_CONFIG["pictures"] = {"images": 0}  # tests/test_pictures.py and test_staleness.py check the pictures
SERVING_CONFIG["serving"] = {
    "enabled": True,
    "concurrency": [1, 2],
    "protocols": ["http", "grpc"],
    "requests": 10,
    # perf_analyzer's count windows last at least a second each, and three must agree: 3 s per point at best.
    # A point that does not settle within max_trials is measured again with the check off (3 s more): on a
    # busy 2-core machine 2 to 6 of Pi0's 8 points at 25 %. The tests check the sweeps' shape and that every
    # number is measured, not how stable they are, so the check is loose enough to settle in three windows.
    "stability_percentage": 1000,
    "max_trials": 3,
}


@pytest.fixture(scope="module")
def triton_env_dir():
    path = os.environ.get("PLANFORGE_TRITON_ENV") or str(REPO / ".venv-triton")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANFORGE_TRITON_ENV", path)
        yield Path(path)


def _served_workflow(where: Path, env: dict[str, str]) -> Path:
    """The tiny workflow with serving on, run end to end by snakemake (server started by the jobs)."""
    work = make_workflow_copy(where / "wf", SERVING_CONFIG)
    shutil.copytree(REPO / "weights" / "dfine-demo", work / "ckpt" / "d")
    snakemake(work, "results/summary.md", env=env)
    return work


# The served workflow is the suite's longest run (perf_analyzer windows of at least a second, server starts): it starts
# in a thread once the run is collected (tests/_early.py), beside the files run before this one, with the
# environment as it was then (other tests' monkeypatched variables never reach its jobs).
EARLY = Early()


def start_early(config, items) -> None:
    """Called by tests/conftest.py once this module's selected `items` are known."""
    if not any("served_workflow" in item.fixturenames for item in items):
        return
    where = config._tmp_path_factory.mktemp("serving")
    env = dict(os.environ)
    env["PLANFORGE_TRITON_ENV"] = env.get("PLANFORGE_TRITON_ENV") or str(REPO / ".venv-triton")
    EARLY.start([("served_workflow", lambda: _served_workflow(where, env))])
    config.add_cleanup(lambda: EARLY.join(timeout=60))


@pytest.fixture(scope="module")
def served_workflow(triton_env_dir) -> Path:
    if not EARLY.started:
        pytest.fail("the served workflow never started: tests/conftest.py's pytest_collection_finish starts it")
    return EARLY.result("served_workflow")


def _tritonservers_of(root: Path, wait: float = 5.0) -> list[int]:
    """Pids of tritonserver processes, or their python backend stubs, serving a repository under `root`."""
    deadline = time.monotonic() + wait
    while (pids := _servers_now(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def _cmdlines() -> dict[int, str]:
    """Command line of every live process; one that exits while it is read is skipped (ESRCH, not ENOENT)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found[int(proc.name)] = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
    return found


def _servers_now(root: Path, stubs: bool = True) -> list[int]:
    pids = []
    for pid, cmd in _cmdlines().items():
        server = "tritonserver" in cmd and f"--model-repository={root}" in cmd
        if server or (stubs and "triton_python_backend_stub" in cmd and str(root) in cmd):
            pids.append(pid)
    return pids


def test_serving_jobs_write_the_sweep_the_served_map_the_plot_and_summary_rows(served_workflow: Path):
    wf = served_workflow
    rec = read_json(wf / "results/cpu/serving/a.json")
    assert rec["ensemble"] == "a" and rec["inference_model"] == "a_onnxruntime_fp32"
    combos = {(r["batching"], r["protocol"], r["concurrency"]) for r in rec["sweep"]}
    assert combos == {(b, p, c) for b in ("on", "off") for p in ("http", "grpc") for c in (1, 2)}
    for r in rec["sweep"]:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
        assert r["throughput_infer_per_s"] > 0
        assert set(r["breakdown_ms"]) >= {"client_send", "server_queue", "server_compute_infer", "client_recv"}
        assert r["breakdown_ms"]["server_compute_infer"] > 0
    assert {m["protocol"] for m in rec["model_only"]} == {"http", "grpc"}
    overhead = rec["comparison"]["overhead_vs_in_process"]["grpc"]
    assert overhead["in_process_ort_model_p50_ms"] > 0 and overhead["model_ratio"] > 0
    assert set(rec["comparison"]["batching_gain_at_max_concurrency"]) == {"http", "grpc"}
    rows = list(csv.DictReader((wf / "results/cpu/serving/a.csv").read_text().splitlines()))
    assert len(rows) == len(rec["sweep"]) and float(rows[0]["p99_ms"]) > 0
    log = (wf / "results/cpu/serving/a.tritonserver.log").read_text()
    assert "Started GRPCInferenceService" in log and "127.0.0.1" in log
    assert (wf / "results/plots/cpu_serving_throughput_vs_p99.png").stat().st_size > 5000
    summary = (wf / "results/summary.md").read_text()
    assert "Serving through a real tritonserver" in summary and "dynamic batching gives" in summary
    assert "serving throughput vs p99" in summary
    assert not _tritonservers_of(wf), "a tritonserver outlived its job"


@pytest.mark.parametrize("model", ["a", "d"])
def test_map_through_the_served_ensemble_matches_in_process_onnxruntime(served_workflow: Path, model: str):
    served = read_json(served_workflow / f"results/cpu/serving/{model}_accuracy.json")
    local = read_json(served_workflow / f"results/cpu/accuracy/{model}/onnxruntime_fp32.json")
    assert served["images"] == local["images"] == SERVING_CONFIG["datasets"]["tiny"]["splits"]["val"]
    assert served["detections"] > 0
    assert abs(served["map50_95"] - local["map50_95"]) <= 0.001
    assert served["reference"]["matches"] is True


def test_repository_configs_come_from_the_config(served_workflow: Path):
    repo = served_workflow / "artifacts/triton/cpu"
    infer = (repo / "a_onnxruntime_fp32/config.pbtxt").read_text()
    assert "max_batch_size: 8" in infer and "kind: KIND_CPU" in infer
    assert "dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 1000 }" in infer
    assert (repo / "a_onnxruntime_fp32/1/model.onnx").is_file()
    ensemble = (repo / "a/config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ensemble
    assert ensemble.index('"a_pre"') < ensemble.index('"a_onnxruntime_fp32"') < ensemble.index('"a_post"')
    for name in ("a_pre", "a_post", "a_post_eval", "a_onnxruntime_fp32"):
        assert "from workflow_scripts.serving.python_models import" in (repo / name / "1/model.py").read_text()
    post_eval = (repo / "a_post_eval/config.pbtxt").read_text()
    assert 'key: "conf" value: { string_value: "0.001" }' in post_eval


def test_nothing_reruns_after_a_serving_run_and_a_delay_change_rebuilds_the_repository(served_workflow, tmp_path):
    proc = snakemake(served_workflow, "-n", "results/summary.md")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    wf = copy_built(served_workflow, tmp_path / "wf")
    config = copy.deepcopy(SERVING_CONFIG)
    config["serving"]["max_queue_delay_us"] = 0
    write_config(wf, config)
    proc = snakemake(wf, "-n", "results/summary.md")
    text = proc.stdout + proc.stderr
    assert "triton_repository" in text and "serving_accuracy" in text
    assert "rule bench:" not in text and "rule export_onnx:" not in text


def test_the_serving_config_is_the_embedded_default_with_serving_on():
    default = yaml.safe_load((REPO / "config/config.yaml").read_text())
    serving = yaml.safe_load((REPO / "config/serving.yaml").read_text())
    assert serving.pop("serving") == {"enabled": True}
    assert default.pop("serving", {"enabled": False}) == {"enabled": False}
    assert serving == default


def test_a_model_that_fails_to_load_fails_with_the_reason_from_the_server_log(served_workflow, tmp_path):
    repo = tmp_path / "repo"
    # the detection models only: the server exits once every model has loaded or failed, and Pi0's stub
    # (torch, transformers) is the slowest to load
    shutil.copytree(served_workflow / "artifacts/triton/cpu", repo)
    shutil.rmtree(repo / "p")
    (repo / "a_onnxruntime_fp32/1/model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(PlanforgeError) as err:
        with serve(ensure(), repo, tmp_path / "server.log", timeout=60):
            pass
    msg = str(err.value)
    assert msg.splitlines()[0].startswith("tritonserver exited with code")
    assert "model a_onnxruntime_fp32 failed to load" in msg.splitlines()[0]
    assert "INVALID_PROTOBUF" in msg and str(tmp_path / "server.log") in msg
    assert not _tritonservers_of(repo)


def _serving_settings(**overrides) -> str:
    """The sweep's --settings as the plan builds them from SERVING_CONFIG, with `overrides`."""
    cfg = validate(SERVING_CONFIG, check_files=False)
    cfg["serving"].update(overrides)
    return Plan(cfg).serving_settings().to_json()


def test_a_port_already_in_use_gives_one_clear_line(served_workflow, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = _serving_settings(startup_timeout_s=60, http_port=port)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "workflow_scripts.serving.sweep",
                "--repository",
                str(served_workflow / "artifacts/triton/cpu"),
                "--model",
                "a",
                "--target",
                "cpu",
                "--dataset",
                str(served_workflow / "artifacts/data/tiny"),
                "--settings",
                settings,
                "--server-log",
                str(tmp_path / "server.log"),
                "--out",
                str(tmp_path / "a.json"),
            ],
            cwd=served_workflow,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(served_workflow)},
        )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port} is already in use" in lines[0], proc.stderr
    assert not (tmp_path / "a.json").exists()


def _start_sweep(wf: Path, out: Path, log: Path) -> subprocess.Popen:
    # eight levels of at least 3 s each (perf_analyzer's three one-second windows): it runs long after the kill;
    # `requests` also sets the in-process reference's iterations, timed before the server starts
    settings = _serving_settings(concurrency=[1, 2, 3, 4, 5, 6, 7, 8], requests=20, startup_timeout_s=60)
    cmd = [sys.executable, "-m", "workflow_scripts.serving.sweep", "--repository", str(wf / "artifacts/triton/cpu")]
    cmd += ["--model", "a", "--target", "cpu", "--dataset", str(wf / "artifacts/data/tiny")]
    cmd += ["--settings", settings, "--server-log", str(log), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(wf), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=wf, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_sweep(proc: subprocess.Popen, repo: Path, timeout: float = 120) -> int:
    """Pid of the server once perf_analyzer is running against it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        pids = _servers_now(repo, stubs=False)
        if pids and any("perf_analyzer" in cmd for cmd in _cmdlines().values()):
            return pids[0]
        time.sleep(0.3)
    raise AssertionError("the sweep never started")


def test_a_server_killed_mid_sweep_fails_the_job_cleanly(served_workflow, tmp_path):
    out, log = tmp_path / "a.json", tmp_path / "a.tritonserver.log"
    proc = _start_sweep(served_workflow, out, log)
    repo = (served_workflow / "artifacts/triton/cpu").resolve()
    os.kill(_wait_for_sweep(proc, repo), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "planforge error: tritonserver stopped (exit code -9) during the perf_analyzer sweep" in stderr
    assert not out.exists() and not out.with_suffix(".csv").exists()
    assert log.is_file()
    assert not _tritonservers_of(repo), "python backend stubs outlived their killed server"


def test_cancelling_a_sweep_stops_its_server(served_workflow, tmp_path):
    proc = _start_sweep(served_workflow, tmp_path / "a.json", tmp_path / "a.tritonserver.log")
    repo = (served_workflow / "artifacts/triton/cpu").resolve()
    _wait_for_sweep(proc, repo)
    proc.send_signal(signal.SIGTERM)  # what snakemake sends a job it cancels
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not _tritonservers_of(repo)
    assert not (tmp_path / "a.json").exists()


def test_a_full_triton_build_can_run_the_onnx_model_with_its_onnxruntime_backend(served_workflow, tmp_path):
    from workflow_scripts.serving.repository import build_repository

    settings = {"max_batch_size": 4, "max_queue_delay_us": 250, "instances": 2, "conf": 0.25, "iou": 0.7}
    index = build_repository(
        tmp_path / "repo",
        "gpu",
        "cuda:0",
        None,
        {"a": {"family": "yolo", "imgsz": 160, "onnx": {"fp32": served_workflow / "artifacts/onnx/a/fp32.onnx"}}},
        {**settings, "max_det": 300, "onnx_backend": "onnxruntime"},
        {"conf": 0.001, "iou": 0.7, "max_det": 300},
    )
    infer = (tmp_path / "repo/a_onnxruntime_fp32/config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in infer and "count: 2 kind: KIND_GPU" in infer
    assert "max_queue_delay_microseconds: 250" in infer and "max_batch_size: 4" in infer
    assert not (tmp_path / "repo/a_onnxruntime_fp32/1/model.py").exists()
    assert "kind: KIND_CPU" in (tmp_path / "repo/a_pre/config.pbtxt").read_text()  # pre/post stay on the CPU
    assert index["models"]["a"]["ensembles"]["eval"]["conf"] == 0.001


def test_dfine_is_served_through_its_own_ensemble_with_batching_on_and_off(served_workflow: Path):
    repo = served_workflow / "artifacts/triton/cpu"
    ensemble = (repo / "d/config.pbtxt").read_text()
    assert ensemble.index('"d_pre"') < ensemble.index('"d_onnxruntime_fp32"') < ensemble.index('"d_post"')
    for name in ("logits", "pred_boxes"):  # the two-output export, each mapped from the model to the post model
        assert f'key: "{name}" value: "raw_{name}"' in ensemble
    assert 'key: "pixel_values" value: "preprocessed"' in ensemble
    post = (repo / "d_post/config.pbtxt").read_text()
    assert (
        'name: "logits"' in post
        and 'name: "pred_boxes"' in post
        and 'name: "META" data_type: TYPE_FP32 dims: [ 2 ]' in post
    )
    rec = read_json(served_workflow / "results/cpu/serving/d.json")
    assert rec["ensemble"] == "d" and rec["inference_model"] == "d_onnxruntime_fp32"
    combos = {(r["batching"], r["protocol"], r["concurrency"]) for r in rec["sweep"]}
    assert combos == {(b, p, c) for b in ("on", "off") for p in ("http", "grpc") for c in (1, 2)}
    assert all(r["throughput_infer_per_s"] > 0 for r in rec["sweep"])


def _triton_http():
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    return httpclient, InferenceServerException


def _infer(client, httpclient, model: str, image, dtype: str = "UINT8"):
    inp = httpclient.InferInput("IMAGE", [1, *image.shape], dtype)
    inp.set_data_from_numpy(image[None])
    return client.infer(model, [inp])


BAD_IMAGES = {
    "0x0x3": ((0, 0, 3), "uint8"),
    "0x7x3": ((0, 7, 3), "uint8"),
    "HxWx1": ((8, 8, 1), "uint8"),
    "HxWx4": ((8, 8, 4), "uint8"),
    "float32": ((8, 8, 3), "float32"),
}


def test_bad_images_get_a_clear_client_error_and_the_server_keeps_serving(served_workflow, tmp_path):
    """Empty, wrong channel count, wrong dtype: one error naming IMAGE and the expected form; then a good image works."""
    import numpy as np

    httpclient, InferenceServerException = _triton_http()
    good = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    seen = {}
    repo = served_workflow / "artifacts/triton/cpu"
    index = read_json(repo / "planforge.json")
    detection = [m for name in ("a", "d") for m in triton_models_of(index["models"][name])]  # not Pi0's torch stub
    with serve(ensure(), repo, tmp_path / "server.log", timeout=60, models=detection) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        for model in ("a", "d"):
            for label, (shape, dtype) in BAD_IMAGES.items():
                with pytest.raises(InferenceServerException) as err:
                    _infer(client, httpclient, model, np.zeros(shape, dtype), "FP32" if dtype == "float32" else "UINT8")
                seen[model, label] = (err.value.status(), err.value.message())
                assert "IMAGE" in err.value.message(), (model, label, err.value.message())
                assert err.value.status() == "400", (model, label, err.value.status(), err.value.message())
                r = _infer(client, httpclient, model, good)  # the server is still up and serving
                assert r.as_numpy("DETECTIONS").shape[-1] == 6 and r.as_numpy("NUM_DETECTIONS").shape == (1, 1)
        # sent together, so the python models may get them in one batch: only the bad one fails
        many = httpclient.InferenceServerClient(server.http_url, concurrency=6)
        images = [good, np.zeros((0, 0, 3), np.uint8), good, good, np.zeros((0, 4, 3), np.uint8), good]
        pending = []
        for im in images:
            inp = httpclient.InferInput("IMAGE", [1, *im.shape], "UINT8")
            inp.set_data_from_numpy(im[None])
            pending.append(many.async_infer("d", [inp]))
        for im, req in zip(images, pending):
            if im.size:
                assert req.get_result().as_numpy("NUM_DETECTIONS").shape == (1, 1)
            else:
                with pytest.raises(InferenceServerException, match="IMAGE: expected HxWx3 uint8 RGB"):
                    req.get_result()
        assert server.alive()
    # the zero-sized images reach the python preprocessing model, which names the expected form
    for model in ("a", "d"):
        for label in ("0x0x3", "0x7x3"):
            msg = seen[model, label][1]
            assert f"IMAGE: expected HxWx3 uint8 RGB with H,W ≥ 1; got {label} uint8" in msg, msg


class _FakePb:
    """The slice of triton_python_backend_utils the python models use, for a test without a server."""

    class TritonError:
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs, self.error = {t.name: t.array for t in output_tensors}, error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return _FakePb.Tensor(name, request[name])


@pytest.mark.parametrize("family", ["yolo", "dfine"])
def test_one_bad_image_fails_only_its_own_request_in_a_batch(family):
    import numpy as np

    from workflow_scripts.models import get_family
    from workflow_scripts.serving.python_models import PreprocessModel

    model = PreprocessModel()
    model.pb, model.params, model.family, model.imgsz = _FakePb, {}, get_family(family), 64
    good = {"IMAGE": np.full((1, 30, 40, 3), 7, np.uint8)}
    bad = {"IMAGE": np.zeros((1, 0, 0, 3), np.uint8)}
    four = {"IMAGE": np.zeros((1, 5, 5, 4), np.uint8)}
    responses = model.execute([good, bad, good, four])
    assert [r.error is None for r in responses] == [True, False, True, False]
    assert responses[1].error.code == _FakePb.TritonError.INVALID_ARG
    assert responses[1].error.message == "IMAGE: expected HxWx3 uint8 RGB with H,W ≥ 1; got 0x0x3 uint8"
    assert "got 5x5x4 uint8" in responses[3].error.message
    assert responses[0].outputs["INPUT"].shape == (1, 3, 64, 64)
    assert responses[0].outputs["META"].shape == (1, len(get_family(family).META.__dataclass_fields__))


def _model_config_pb2():
    """Triton's ModelConfig message (model_config.proto), as generated code shipped in tritonclient's wheel.

    tritonclient/grpc/model_config_pb2.py is in the wheel whether or not the grpc extra is installed; it is
    loaded by path because importing `tritonclient.grpc` needs grpcio. The workflow's venv has it; the
    serving environment's tritonclient[grpc] is the fallback.
    """
    import importlib.util

    spec = importlib.util.find_spec("tritonclient")
    places = [Path(p) / "grpc" / "model_config_pb2.py" for p in (spec.submodule_search_locations if spec else [])]
    places += sorted(ensure().site_packages.glob("tritonclient/grpc/model_config_pb2.py"))
    path = next((p for p in places if p.is_file()), None)
    if path is None:
        pytest.skip("no tritonclient model_config_pb2.py found")
    mod_spec = importlib.util.spec_from_file_location("planforge_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def test_native_onnxruntime_and_tensorrt_plan_configs_parse_as_triton_model_configs(served_workflow, tmp_path):
    """What a full Triton build on a GPU server would load; this server has neither backend, so they are
    checked as text against Triton's own ModelConfig schema (unknown fields or enum values fail the parse)."""
    from google.protobuf import text_format

    from workflow_scripts.serving.repository import build_repository

    pb2 = _model_config_pb2()
    serving = {
        "max_batch_size": 8,
        "max_queue_delay_us": 250,
        "preferred_batch_sizes": [4, 8],
        "instances": 1,
        "onnx_backend": "onnxruntime",
        "conf": 0.25,
        "iou": 0.7,
        "max_det": 300,
    }
    engine = tmp_path / "fp16_b4.plan"
    engine.write_bytes(b"engine bytes")
    models = {
        m: {
            "family": fam,
            "imgsz": imgsz,
            "onnx": {"fp32": served_workflow / f"artifacts/onnx/{m}/fp32.onnx"},
            "engines": {"fp16": {"path": str(engine), "max_batch": 4}},
        }
        for m, fam, imgsz in (("a", "yolo", 160), ("d", "dfine", 320))
    }
    index = build_repository(
        tmp_path / "repo", "gpu", "cuda:0", None, models, serving, {"conf": 0.001, "iou": 0.7, "max_det": 300}
    )
    configs = {}
    for cfg in sorted((tmp_path / "repo").glob("*/config.pbtxt")):
        configs[cfg.parent.name] = text_format.Parse(cfg.read_text(), pb2.ModelConfig())
    assert set(configs) >= {
        "a",
        "a_eval",
        "a_pre",
        "a_post",
        "a_onnxruntime_fp32",
        "a_tensorrt_fp16",
        "d_tensorrt_fp16",
    }
    for m, outputs in (("a", ["output0"]), ("d", ["logits", "pred_boxes"])):
        ort, trt = configs[f"{m}_onnxruntime_fp32"], configs[f"{m}_tensorrt_fp16"]
        assert ort.backend == "onnxruntime" and ort.default_model_filename == "model.onnx"
        assert list(ort.dynamic_batching.preferred_batch_size) == [4, 8] and ort.max_batch_size == 8
        assert ort.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
        assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "fp16_b4.plan"
        assert trt.max_batch_size == 4 and list(trt.dynamic_batching.preferred_batch_size) == [4]
        assert trt.dynamic_batching.max_queue_delay_microseconds == 250
        assert [o.name for o in trt.output] == [o.name for o in ort.output] == outputs
        assert (tmp_path / f"repo/{m}_tensorrt_fp16/1/fp16_b4.plan").is_file()
        assert index["models"][m]["tensorrt_models"] == {"fp16": f"{m}_tensorrt_fp16"}
    assert configs["d_onnxruntime_fp32"].input[0].name == "pixel_values"
    assert not (tmp_path / "repo/a_onnxruntime_fp32/1/model.py").exists()
    # the check has teeth: a misspelt field or an unknown enum value does not parse
    good = (tmp_path / "repo/a_tensorrt_fp16/config.pbtxt").read_text()
    for broken in (good.replace("preferred_batch_size", "preferred_batch_sizes"), good.replace("KIND_GPU", "KIND_TPU")):
        with pytest.raises(text_format.ParseError):
            text_format.Parse(broken, pb2.ModelConfig())


def test_preferred_batch_sizes_above_the_max_batch_size_are_a_config_error():
    config = copy.deepcopy(SERVING_CONFIG)
    config["serving"] = {**config["serving"], "max_batch_size": 4, "preferred_batch_sizes": [2, 8]}
    with pytest.raises(PlanforgeError, match=r"serving.preferred_batch_sizes: 8 is above serving.max_batch_size \(4\)"):
        validate(config, check_files=False)
    config["serving"]["preferred_batch_sizes"] = [2, 4]
    assert Plan(validate(config, check_files=False)).triton_settings("cpu").serving["preferred_batch_sizes"] == [2, 4]


# -- Pi0 (task vla): one python-backend model ---------------------------------------------------------------
def test_pi0_is_served_with_dynamic_batching_swept_and_its_actions_equal_in_process(served_workflow: Path):
    repo = served_workflow / "artifacts/triton/cpu"
    config = (repo / "p/config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 8" in config and "kind: KIND_CPU" in config
    assert "dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 1000 }" in config
    assert '{ name: "NOISE" data_type: TYPE_FP32 dims: [ 50, 32 ] optional: true }' in config
    assert '{ name: "ACTIONS" data_type: TYPE_FP32 dims: [ 50, 32 ] }' in config
    assert "import Pi0Model as TritonPythonModel" in (repo / "p/1/model.py").read_text()
    rec = read_json(served_workflow / "results/cpu/serving/p.json")
    assert rec["task"] == "vla" and rec["served_model"] == "p" and rec["input_data"]["val_episodes"] == 3
    combos = {(r["batching"], r["protocol"], r["concurrency"]) for r in rec["sweep"]}
    assert combos == {(b, p, c) for b in ("on", "off") for p in ("http", "grpc") for c in (1, 2)}
    for r in rec["sweep"]:
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] and r["throughput_infer_per_s"] > 0
        assert r["breakdown_ms"]["server_compute_infer"] > 0
    assert rec["in_process_reference"]["chunk_ms"]["p50"] > 0
    assert set(rec["comparison"]["overhead_vs_in_process_torch"]) == {"http", "grpc"}
    acc = read_json(served_workflow / "results/cpu/serving/p_accuracy.json")
    assert acc["episodes"] == 3 and acc["chunk_shape"] == [50, 32] and acc["noise_seeds"] == [-1]
    # the same checkpoint, noise and code on both sides: equal up to float summation order (batch composition)
    assert acc["action_max_abs"] <= 1e-4 and acc["reference"]["tolerance_max_abs"] == 1e-4
    assert acc["reference"]["matches"] is True and acc["reference"]["backend"] == "torch"
    summary = (served_workflow / "results/summary.md").read_text()
    assert "| p | grpc | 2 | on |" in summary and "p actions through the server vs in-process torch fp32" in summary


def test_coserving_reports_each_models_memory_and_latency_alone_and_mixed(served_workflow: Path):
    rec = read_json(served_workflow / "results/cpu/serving/coserving.json")
    assert rec["models"] == {"vla": "p", "detection": "a"}
    for key in ("memory_after_load", "memory_after_traffic"):
        mem = rec[key]["models"]
        assert mem["p"]["triton_models"] == ["p"] and mem["p"]["stubs"] == 1
        assert set(mem["a"]["triton_models"]) == {"a_pre", "a_post", "a_post_eval", "a_onnxruntime_fp32"}
        assert "d_pre" not in rec[key]["triton_models"]  # the job loads only the two models it measures
        for m in ("p", "a"):
            assert 0 < mem[m]["pss_mib"] <= mem[m]["rss_mib"] and mem[m]["gpu_mib"] is None
        assert mem["p"]["rss_mib"] > 100  # torch and transformers live in the Pi0 stub only
    assert rec["memory_after_load"]["gpu_memory_source"] == "cpu target"
    for m, served in (("p", "p"), ("a", "a")):
        lat = rec["latency"][m]
        assert lat["served_model"] == served
        for phase in ("alone", "mixed"):
            assert 0 < lat[phase]["p50"] <= lat[phase]["p99"] and lat[phase]["throughput_infer_per_s"] > 0
        assert lat["p99_mixed_over_alone"] > 0
    assert rec["mixed_overlap_fraction"] > 0.5  # the two loads ran at the same time
    assert "Co-serving in one tritonserver" in (served_workflow / "results/summary.md").read_text()


def _pi0_request(httpclient, tensors: dict):
    types = {"IMAGES": "UINT8", "STATE": "FP32", "TOKENS": "INT64", "TOKEN_MASK": "BOOL", "NOISE": "FP32"}
    inputs = []
    for name, value in tensors.items():
        inp = httpclient.InferInput(name, [1, *value.shape], types[name] if value.dtype != "float64" else "FP64")
        inp.set_data_from_numpy(value[None])
        inputs.append(inp)
    return inputs


def test_bad_pi0_requests_get_a_clear_error_and_the_server_keeps_serving(served_workflow, tmp_path):
    """Wrong cameras, token ids out of range, a missing or mistyped input: one line naming the input, HTTP 400;
    a request without NOISE gets seeded noise, says which (NOISE_SEED), and sending that noise gives the same actions."""
    import numpy as np

    from workflow_scripts.serving.python_models import seeded_noise
    from workflow_scripts.serving.vla import episode_request
    from workflow_scripts.tasks.vla import load_episodes

    httpclient, InferenceServerException = _triton_http()
    repo = tmp_path / "repo"  # the Pi0 model alone: a quicker start
    repo.mkdir()
    shutil.copytree(served_workflow / "artifacts/triton/cpu/p", repo / "p")
    good = episode_request(load_episodes(served_workflow / "artifacts/data/eps").take(slice(0, 1)), 0)
    bad = {
        "2 cameras": ({**good, "IMAGES": np.repeat(good["IMAGES"], 2, axis=0)}, "IMAGES: 2 cameras; this model serves"),
        "token ≥ vocab": ({**good, "TOKENS": np.full_like(good["TOKENS"], 8192)}, "TOKENS: ids must be in [0, 8192)"),
        "token < 0": ({**good, "TOKENS": np.full_like(good["TOKENS"], -1)}, "TOKENS: ids must be in [0, 8192)"),
        "no STATE": ({k: v for k, v in good.items() if k != "STATE"}, "STATE: missing"),
        "STATE fp64": ({**good, "STATE": good["STATE"].astype(np.float64)}, "input 'STATE' data-type is 'FP64'"),
        "NOISE shape": ({**good, "NOISE": good["NOISE"][:, :16].copy()}, "unexpected shape for input 'NOISE'"),
        "mask length": ({**good, "TOKEN_MASK": good["TOKEN_MASK"][:3].copy()}, "TOKEN_MASK: 3 entries for 16 TOKENS"),
    }
    with serve(ensure(), repo, tmp_path / "server.log", timeout=60) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        expected = client.infer("p", _pi0_request(httpclient, good)).as_numpy("ACTIONS")
        for label, (tensors, message) in bad.items():
            with pytest.raises(InferenceServerException) as err:
                client.infer("p", _pi0_request(httpclient, tensors))
            assert message in err.value.message(), (label, err.value.message())
            assert err.value.status() == "400" and "\n" not in err.value.message().strip(), label
            again = client.infer("p", _pi0_request(httpclient, good)).as_numpy("ACTIONS")
            assert np.array_equal(again, expected), label  # still serving, and stateless
        no_noise = {k: v for k, v in good.items() if k != "NOISE"}
        r = client.infer("p", _pi0_request(httpclient, no_noise))
        seed = int(r.as_numpy("NOISE_SEED")[0, 0])
        assert seed >= 0 and client.infer("p", _pi0_request(httpclient, no_noise)).as_numpy("NOISE_SEED")[0, 0] == seed
        replay = {**no_noise, "NOISE": seeded_noise(seed, (50, 32))}
        r2 = client.infer("p", _pi0_request(httpclient, replay))
        assert int(r2.as_numpy("NOISE_SEED")[0, 0]) == -1
        assert np.abs(r2.as_numpy("ACTIONS") - r.as_numpy("ACTIONS")).max() <= 1e-5
        assert server.alive()


def test_vla_models_are_served_where_torch_runs_and_co_served_with_a_detection_model():
    cfg = validate(SERVING_CONFIG, check_files=False)
    plan = Plan(cfg)
    out = plan.serving_outputs()
    assert {"results/cpu/serving/p.json", "results/cpu/serving/p_accuracy.json"} <= set(out)
    assert "results/cpu/serving/coserving.json" in out and plan.coserving("cpu") == ("p", "a")
    assert plan.triton_checkpoints("cpu") == ["artifacts/checkpoints/p.pt"]
    assert plan.triton_models("cpu")["p"]["episodes"]["cameras"] == 1
    assert "artifacts/onnx/p/fp32.onnx" not in plan.triton_onnx("cpu")
    no_torch = Plan(cfg, available=lambda b: (b != "torch", "not installed"))
    assert "results/cpu/serving/p.json" not in no_torch.serving_outputs()
    assert "results/cpu/serving/coserving.json" not in no_torch.serving_outputs()


def test_a_pi0_entry_with_a_backend_precision_and_options_is_served_on_that_runner(tmp_path, triton_env_dir):
    """The Pi0 model entry's backend / precision / options (repository.backend_params) reach the served model, which
    then runs the bench and accuracy jobs' runner; its actions equal that runner's in this process."""
    import numpy as np

    from workflow_scripts.models import get_family
    from workflow_scripts.serving.repository import build_repository
    from workflow_scripts.serving.served import in_process_runner
    from workflow_scripts.serving.vla import episode_request
    from workflow_scripts.tasks.vla import EPISODE_DEFAULTS, load_episodes, make_episodes, predictor

    httpclient, _ = _triton_http()
    fam = get_family("pi0")
    fam.save_checkpoint(fam.build_architecture("pi0-tiny.yaml"), tmp_path / "p.pt")
    settings = {"seed": 0, "splits": {"val": 1}, "cameras": 1, "camera_size": 64}
    make_episodes(tmp_path / "eps", settings, "val")
    entry = {
        "family": "pi0",
        "checkpoint": str(tmp_path / "p.pt"),
        "episodes": {**EPISODE_DEFAULTS, **{k: v for k, v in settings.items() if k in EPISODE_DEFAULTS}},
        "precision": "bf16",
        "backend_options": {"fuse_projections": True},
    }
    serving = {"max_batch_size": 2, "max_queue_delay_us": 0, "preferred_batch_sizes": [], "instances": 1}
    index = build_repository(tmp_path / "repo", "cpu", "cpu", 1, {"pb": entry}, serving, {})
    served = index["models"]["pb"]
    assert (served["backend"], served["precision"], served["backend_options"]) == (
        "torch",
        "bf16",
        {"fuse_projections": True},
    )
    assert (
        'key: "backend_options" value: { string_value: "{\\"fuse_projections\\": true}" }'
        in (tmp_path / "repo/pb/config.pbtxt").read_text()
    )
    episodes = load_episodes(tmp_path / "eps").take(slice(0, 1))
    with serve(ensure(), tmp_path / "repo", tmp_path / "server.log", timeout=120) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        actions = client.infer("pb", _pi0_request(httpclient, episode_request(episodes, 0))).as_numpy("ACTIONS")
    runner = in_process_runner(served, tmp_path / "repo", "cpu", 1)
    assert runner.precision.name == "bf16" and "fused_projections" in runner.versions()
    np.testing.assert_allclose(actions, predictor(fam, runner, None)(episodes), atol=1e-5)
