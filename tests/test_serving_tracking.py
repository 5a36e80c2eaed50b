"""SAMURAI (task tracking) through Triton's sequence batcher: a real tritonserver and perf_analyzer on the tiny
tracker (samurai-tiny.yaml, seeded random weights) over 2 synthetic val sequences of 8 frames at 96 px.

One server (idle timeout 2 s) serves every test of the module; the serving environment is the one of
PLANFORGE_TRITON_ENV (default: .venv-triton/ in this checkout), as in test_serving.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, make_workflow_copy, planned_outputs
from workflow_scripts.config import validate
from workflow_scripts.models import get_family
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.plan.settings import ServingSettings
from workflow_scripts.serving import tracking as served
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.perf import run_sweep
from workflow_scripts.serving.repository import build_repository
from workflow_scripts.serving.served import in_process_runner
from workflow_scripts.serving.server import serve
from workflow_scripts.tasks import tracking

pytestmark = pytest.mark.workflow

VIDEOS = {"seed": 0, "splits": {"val": 2}, "frames": 8, "frame_size": 96}
IDLE_US = 2_000_000
SERVING = {
    "max_batch_size": 4,
    "max_queue_delay_us": 1000,
    "preferred_batch_sizes": [4],
    "instances": 1,
    "onnx_backend": "python",
    "sequence_idle_us": IDLE_US,
    "conf": 0.25,
    "iou": 0.7,
    "max_det": 300,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The videos, the tiny tracker's checkpoint, its repository and one running server."""
    path = os.environ.get("PLANFORGE_TRITON_ENV") or str(REPO / ".venv-triton")
    work = tmp_path_factory.mktemp("seqbatch")
    fam = get_family("samurai")
    fam.save_checkpoint(fam.build_architecture("samurai-tiny.yaml"), work / "t.pt")
    tracking.make_videos(work / "clips", VIDEOS, "val")
    models = {
        "t": {"family": "samurai", "checkpoint": str(work / "t.pt")},
        # served on another precision and with backend options (loaded by its own test)
        "tb": {"family": "samurai", "checkpoint": str(work / "t.pt"), "precision": "bf16",
               "backend_options": {"channels_last": False}},
    }  # fmt: skip
    index = build_repository(
        work / "repo", "cpu", "cpu", 1, models, SERVING, {"conf": 0.001, "iou": 0.7, "max_det": 300}
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANFORGE_TRITON_ENV", path)
        with serve(ensure(), work / "repo", work / "server.log", timeout=120, models=["t"]) as server:
            yield {"work": work, "index": index, "server": server, "vids": tracking.load_videos(work / "clips")}


def _in_process(work: Path, vids, i: int):
    """Sequence i tracked in this process by `tasks.tracking.run_sequence` on the same checkpoint."""
    from workflow_scripts.pipeline import make_runner

    runner = make_runner("torch", work / "t.pt", "samurai", "fp32", "cpu", 1)
    return tracking.run_sequence(
        served.in_process_tracker(get_family("samurai"), runner)(), vids.frames[i], vids.boxes[i, 0]
    )


def _client(setup):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    return httpclient.InferenceServerClient(setup["server"].http_url), InferenceServerException


def test_the_tracking_model_has_the_oldest_sequence_batcher_its_four_controls_and_the_idle_timeout(setup):
    repo = setup["work"] / "repo"
    config = (repo / "t/config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 4" in config and "dynamic_batching" not in config
    assert "max_sequence_idle_microseconds: 2000000" in config
    assert (
        "oldest { max_candidate_sequences: 4 preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 1000 }" in config
    )
    for name, kind in (("START", "SEQUENCE_START"), ("END", "SEQUENCE_END"), ("READY", "SEQUENCE_READY")):
        assert f'{{ name: "{name}" control [ {{ kind: CONTROL_{kind} int32_false_true: [ 0, 1 ] }} ] }}' in config
    assert '{ name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }' in config
    assert '{ name: "FRAME" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }' in config
    assert '{ name: "BOX" data_type: TYPE_FP32 dims: [ 4 ] optional: true }' in config
    assert "import TrackerSequenceModel as TritonPythonModel" in (repo / "t/1/model.py").read_text()
    entry = setup["index"]["models"]["t"]
    assert entry["task"] == "tracking" and entry["scheduler"] == "sequence_batching oldest"


def test_served_tracking_equals_in_process_frame_by_frame_and_in_auc(setup):
    work, vids = setup["work"], setup["vids"]
    rec = served.evaluate_served_tracking(
        work / "repo", setup["index"], "t", "cpu", work / "clips", work / "acc.log", None, 60, server=setup["server"]
    )
    assert rec["sequences"] == 2 and rec["frames"] == 16 and rec["reference"]["backend"] == "torch"
    assert abs(rec["auc"] - rec["reference"]["auc"]) <= 0.001 and rec["reference"]["matches"] is True
    assert [s["auc"] for s in rec["per_sequence"]] == rec["reference"]["per_sequence_auc"]
    # frame by frame, both sequences live at once on the server vs one after another here
    client = served.SequenceClient(setup["server"], "t", inflight=2)
    results = client.replay(vids, 2, first_id=100)
    for i, (boxes, scores) in enumerate(results):
        ref_boxes, ref_scores = _in_process(work, vids, i)
        np.testing.assert_allclose(boxes, ref_boxes, atol=1e-3)
        np.testing.assert_allclose(scores[1:], ref_scores[1:], rtol=1e-4, atol=1e-6)
        assert len(set(np.round(scores[1:], 7))) > 1  # the object scores move: a real comparison
    assert sorted(client.live_after_end)[0] == 0


def test_bad_inputs_get_one_line_naming_the_input_while_a_live_sequence_completes(setup):
    """Each bad request is sent between two frames of a good sequence (200), which ends with the in-process boxes."""
    import tritonclient.http as httpclient

    work, vids = setup["work"], setup["vids"]
    client, InferenceServerException = _client(setup)
    good_client, _ = _client(setup)
    send = served.SequenceClient(setup["server"], "t").frame
    frame, box = vids.frames[1, 0], vids.boxes[1, 0]
    bad = [
        ("unknown sequence", dict(corrid=201, frame=frame), "must specify the START flag"),
        ("START without BOX", dict(corrid=202, frame=frame, start=True), "BOX: missing on the START request"),
        ("its next frame", dict(corrid=202, frame=frame), "CORRID: sequence 202 has no live tracker"),
        ("empty frame", dict(corrid=203, frame=frame[:0], box=box, start=True), "FRAME: expected HxWx3 uint8"),
        ("zero-size box", dict(corrid=204, frame=frame, box=[1, 1, 0, 5], start=True), "BOX: expected x y w h"),
        ("float frame", dict(corrid=205, frame=frame, box=box, start=True), "data-type is 'FP32'"),
        ("4 channels", dict(corrid=206, frame=np.dstack([frame, frame[..., :1]]), box=box, start=True), "shape"),
    ]
    frames, n = vids.frames[0], len(vids.frames[0])
    boxes, scores = np.zeros((n, 4)), np.full(n, np.nan)
    boxes[0] = vids.boxes[0, 0]
    send(good_client, 200, frames[0], vids.boxes[0, 0], start=True)
    for f, (label, kwargs, message) in enumerate(bad, start=1):
        with pytest.raises(InferenceServerException) as err:
            if label == "float frame":  # FRAME is declared uint8: the server refuses it before the model
                inp = httpclient.InferInput("FRAME", [1, *frame.shape], "FP32")
                inp.set_data_from_numpy(frame[None].astype(np.float32))
                client.infer("t", [inp], sequence_id=205, sequence_start=True)
            else:
                send(client, **kwargs)
        text = err.value.message()
        assert message in text and "\n" not in text.strip() and err.value.status() == "400", (label, text)
        r = send(good_client, 200, frames[f], end=f == n - 1)
        boxes[f], scores[f] = r.as_numpy("BOX")[0], r.as_numpy("SCORE")[0, 0]
    assert f == n - 1  # the good sequence spanned every bad request and ended
    # a frame of another size mid-sequence: refused, and that sequence goes on
    send(client, 207, frame, box, start=True)
    with pytest.raises(InferenceServerException, match="FRAME: 48x96, but sequence 207 is 96x96"):
        send(client, 207, frame[:48])
    send(client, 207, vids.frames[1, 1], end=True)
    ref_boxes, ref_scores = _in_process(work, vids, 0)
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-3)
    np.testing.assert_allclose(scores[1:], ref_scores[1:], rtol=1e-4, atol=1e-6)
    assert setup["server"].alive()
    client.close()
    good_client.close()


def test_a_one_request_sequence_is_start_and_end_and_an_abandoned_sequence_is_reaped_after_the_idle_timeout(setup):
    vids = setup["vids"]
    client, InferenceServerException = _client(setup)
    send = served.SequenceClient(setup["server"], "t").frame
    frame, box = vids.frames[0, 0], vids.boxes[0, 0]
    live = lambda r: int(r.as_numpy("LIVE_SEQUENCES")[0, 0])  # noqa: E731
    time.sleep(IDLE_US / 1e6 + 0.5)  # what earlier tests left behind has gone
    r = send(client, 300, frame, box, start=True, end=True)  # START|END: started, answered, closed
    assert live(r) == 0 and np.isnan(r.as_numpy("SCORE")[0, 0]) and r.as_numpy("BOX").shape == (1, 4)
    assert live(send(client, 301, frame, box, start=True)) == 1  # left without END
    assert live(send(client, 301, vids.frames[0, 1])) == 1
    t_left = time.monotonic()
    log = setup["server"].log
    deadline = t_left + 3 * IDLE_US / 1e6
    while "reaped sequence 301 (idle" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    reaped = [ln for ln in log.read_text().splitlines() if "reaped sequence 301" in ln]
    assert len(reaped) == 1 and "live sequences 0" in reaped[0] and "max_sequence_idle 2 s" in reaped[0]
    assert time.monotonic() - t_left >= IDLE_US / 1e6  # not before the timeout
    assert any("reaped sequence 300 (END)" in ln for ln in log.read_text().splitlines())
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        send(client, 301, vids.frames[0, 2])  # Triton forgot it too
    assert live(send(client, 302, frame, box, start=True, end=True)) == 0
    client.close()


def test_perf_analyzer_runs_whole_sequences_at_each_live_sequence_count_and_the_summary_shows_them(setup, tmp_path):
    from workflow_scripts.serving.plot import plot_serving
    from workflow_scripts.summary import serving_lines

    work = setup["work"]
    sweep = served.TrackingSweep(
        work / "repo",
        setup["index"],
        "t",
        "cpu",
        work / "clips",
        ServingSettings(
            concurrency=[1, 2],
            protocols=["grpc"],
            requests=8,
            stability_percentage=25,
            max_trials=3,
            startup_timeout_s=60,
            http_port=None,
            grpc_port=None,
        ),  # fmt: skip
    )
    rec = run_sweep(sweep, work / "sweep.log", server=setup["server"])
    assert rec["task"] == "tracking" and rec["input_data"] == {
        "val_sequences": 2,
        "sequence_length": 8,
        "inputs": ["FRAME", "BOX"],
    }
    assert [(r["protocol"], r["concurrency"]) for r in rec["sweep"]] == [("grpc", 1), ("grpc", 2)]
    for r in rec["sweep"]:
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] and r["throughput_infer_per_s"] > 0
        assert r["breakdown_ms"]["server_compute_infer"] > 0 and r["live_sequences"] == r["concurrency"]
    assert rec["in_process_reference"]["frame_ms"]["p50"] > 0 and "frames/s" in rec["timer"]
    assert rec["comparison"]["throughput_gain_at_max_live_sequences"]["grpc"] > 0
    plot_serving("cpu", [rec], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    acc = {"target": "cpu", "model": "t", "backend": "triton", "auc": 0.5, "sequences": 2}
    acc["reference"] = {"precision": "fp32", "auc": 0.5, "delta_auc": 0.0, "matches": True, "tolerance": 0.001}
    text = "\n".join(serving_lines([rec, acc], "cpu"))
    assert "| t | grpc | 2 | on |" in text and "Tracker.track" in text and "live sequences give" in text
    assert "tracking through the sequence batcher (2 val sequences" in text


def test_tracking_models_are_served_where_torch_runs_with_their_checkpoint_and_idle_timeout():
    cfg = {
        "datasets": {"clips": {"kind": "videos", "seed": 0, "splits": {"val": 2}, "frames": 8, "frame_size": 96}},
        "models": {"t": {"family": "samurai", "checkpoint": "samurai-tiny.yaml", "dataset": "clips"}},
        "targets": {"cpu": {"device": "cpu", "threads": 1, "backends": {"torch": ["fp32"]}, "batch_sizes": [1]}},
        "serving": {"enabled": True, "sequence_idle_us": 3_000_000},
    }
    plan = Plan(validate(cfg, check_files=False))
    assert {"results/cpu/serving/t.json", "results/cpu/serving/t_accuracy.json"} <= set(plan.serving_outputs())
    assert plan.triton_checkpoints("cpu") == ["artifacts/checkpoints/t.pt"]
    assert plan.triton_models("cpu")["t"] == {"family": "samurai", "checkpoint": "artifacts/checkpoints/t.pt"}
    assert plan.triton_settings("cpu").serving["sequence_idle_us"] == 3_000_000
    assert plan.serving_reference("cpu", "t") == [] and plan.serving_bench_b1("cpu", "t") == []
    assert "workflow_scripts/models/samurai/session.py" in plan.triton_code()  # every module of the family
    no_torch = Plan(validate(cfg, check_files=False), available=lambda b: (b != "torch", "not installed"))
    assert no_torch.serving_outputs() == []


def test_with_two_instances_every_sequence_stays_on_the_instance_that_holds_its_tracker(setup, tmp_path):
    """The oldest strategy binds a sequence to one instance: 6 live sequences over 2 instances all track right."""
    from concurrent.futures import ThreadPoolExecutor

    vids = setup["vids"]
    models = {"t": {"family": "samurai", "checkpoint": str(setup["work"] / "t.pt")}}
    build_repository(tmp_path / "repo", "cpu", "cpu", 1, models, {**SERVING, "instances": 2}, {})
    with serve(ensure(), tmp_path / "repo", tmp_path / "server.log", timeout=120, models=["t"]) as server:
        client = served.SequenceClient(server, "t", inflight=6)
        with ThreadPoolExecutor(6) as pool:
            jobs = [pool.submit(client.sequence, 10 + k, vids.frames[k % 2], vids.boxes[k % 2, 0]) for k in range(6)]
            results = [j.result() for j in jobs]
    for k, (boxes, scores) in enumerate(results):
        np.testing.assert_allclose(scores[1:], results[k % 2][1][1:], rtol=1e-5)
        np.testing.assert_allclose(boxes, results[k % 2][0], atol=1e-3)
    log = (tmp_path / "server.log").read_text()
    by_instance = {ln.split(": reaped")[0].split()[-1] for ln in log.splitlines() if "(END)" in ln}
    assert by_instance == {"t_0_0", "t_0_1"}  # both instances held sequences
    assert log.count("(END); live sequences") == 6


def test_the_dag_serves_a_tracking_model_through_the_repository_the_sweep_and_the_served_accuracy(tmp_path):
    cfg = {
        "datasets": {"clips": {"kind": "videos", "seed": 0, "splits": {"val": 2}, "frames": 8, "frame_size": 96}},
        "models": {"t": {"family": "samurai", "checkpoint": "samurai-tiny.yaml", "dataset": "clips"}},
        "targets": {"cpu": {"device": "cpu", "threads": 1, "backends": {"torch": ["fp32"]}, "batch_sizes": [1]}},
        "serving": {"enabled": True, "concurrency": [1, 2], "protocols": ["grpc"]},
    }
    work = make_workflow_copy(tmp_path / "wf", cfg)
    planned = planned_outputs(work, "results/summary.md")
    assert {
        "artifacts/checkpoints/t.pt",
        "artifacts/triton/cpu",
        "results/cpu/serving/t.json",
        "results/cpu/serving/t_accuracy.json",
        "results/plots/cpu_serving_throughput_vs_p99.png",
    } <= planned
    assert not any("artifacts/onnx/t" in p for p in planned if "triton" in p)


def test_a_tracking_entry_with_a_precision_and_options_is_served_and_referenced_on_that_runner(setup):
    """The model entry's backend / precision / options reach the served tracker and the in-process reference."""
    work, vids, server = setup["work"], setup["vids"], setup["server"]
    config = (work / "repo/tb/config.pbtxt").read_text()
    assert 'key: "precision" value: { string_value: "bf16" }' in config
    assert 'key: "backend_options" value: { string_value: "{\\"channels_last\\": false}" }' in config
    entry = setup["index"]["models"]["tb"]
    assert (entry["backend"], entry["precision"]) == ("torch", "bf16")
    assert entry["backend_options"] == {"channels_last": False}
    client, _ = _client(setup)
    client.load_model("tb")
    try:
        [(boxes, scores)] = served.SequenceClient(server, "tb", inflight=1).replay(vids, 1, first_id=500)
    finally:
        client.unload_model("tb")
        client.close()
    runner = in_process_runner(entry, work / "repo", "cpu", 1)
    assert runner.precision.name == "bf16" and runner.options["channels_last"] is False
    ref_boxes, ref_scores = tracking.run_sequence(
        served.in_process_tracker(get_family("samurai"), runner)(), vids.frames[0], vids.boxes[0, 0]
    )
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-3)
    _, fp32_scores = _in_process(work, vids, 0)
    assert not np.allclose(ref_scores[1:], fp32_scores[1:], rtol=1e-6, atol=0)  # bf16 really ran
