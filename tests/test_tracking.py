"""The tracking task: OTB metrics equal got10k's, the videos dataset is deterministic and refuses a broken index
in one line, and a tracking family (a test-only NCC template tracker, tests/plugins/track_template.py) runs
dataset → accuracy → bench → summary through the workflow with nothing else edited.

Oracle: got10k 0.1.3 (PyPI `got10k`, the GOT-10k toolkit of Huang et al.): `got10k.utils.metrics.rect_iou`,
`center_error` and `got10k.experiments.otb.ExperimentOTB._calc_curves` plus its `report` averaging. got10k has
no normalised precision; it is checked against a per-frame loop written from pytracking's definition
(TrackingNet / LaSOT: centre offset divided by the true width and height, curve over 0..0.5, value at 0.2).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import types

import numpy as np
import pytest

from tests.conftest import CONTENTION_NOT_JUDGED, REPO, make_workflow_copy, planned_outputs, snakemake
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.tasks import gate, get_task

PLUGIN = "tests.plugins.track_template"
VIDEOS = {"kind": "videos", "seed": 0, "splits": {"val": 3}, "frames": 12, "frame_size": 96}
track = get_task("tracking")


def _otb(pred_seqs: list[np.ndarray], gt_seqs: list[np.ndarray]) -> dict:
    """got10k's ExperimentOTB.report scores for these sequences (its own code, without its dataset)."""
    from got10k.experiments.otb import ExperimentOTB
    from got10k.utils.metrics import center_error, rect_iou

    otb = types.SimpleNamespace(nbins_iou=21, nbins_ce=51)
    succ, prec = [], []
    for pred, gt in zip(pred_seqs, gt_seqs, strict=True):
        s, p = ExperimentOTB._calc_curves(otb, rect_iou(pred.copy(), gt.copy()), center_error(pred, gt))
        succ.append(s)
        prec.append(p)
    succ_curve, prec_curve = np.mean(succ, axis=0), np.mean(prec, axis=0)
    return {"auc": np.mean(succ_curve), "precision_20": prec_curve[20], "success_50": succ_curve[10]}


def _norm_precision_reference(pred: np.ndarray, gt: np.ndarray) -> float:
    hits = 0
    for (px, py, pw, ph), (gx, gy, gw, gh) in zip(pred, gt, strict=True):
        dx = ((px + (pw - 1) / 2) - (gx + (gw - 1) / 2)) / gw
        dy = ((py + (ph - 1) / 2) - (gy + (gh - 1) / 2)) / gh
        hits += math.hypot(dx, dy) <= 0.2
    return hits / len(gt)


def _random_boxes(rng, n, size=200.0):
    xy = rng.uniform(-20, size, (n, 2))
    wh = rng.uniform(1, 80, (n, 2))
    return np.concatenate([xy, wh], axis=1)


def test_the_metrics_equal_got10k_on_random_and_edge_case_boxes():
    import shapely  # noqa: F401 - got10k.utils.metrics imports it (got10k declares it)

    rng = np.random.default_rng(0)
    gts = [_random_boxes(rng, n) for n in (30, 7, 50)]
    preds = [g + rng.normal(0, s, g.shape) * [1, 1, 0.3, 0.3] for g, s in zip(gts, (2.0, 15.0, 40.0), strict=True)]
    # edge cases: zero-size and negative-size predictions, boxes partly or wholly out of frame, an exact hit
    preds[0][:6] = [[10, 10, 0, 0], [10, 10, 0, 25], [-500, -500, 30, 30], [190, 190, 400, 400], gts[0][4], gts[0][5]]
    preds[0][4, 2:] = 0  # a point at the true box's corner
    from got10k.utils.metrics import center_error, rect_iou

    for p, g in zip(preds, gts, strict=True):
        np.testing.assert_allclose(track.box_iou(p, g), rect_iou(p.copy(), g.copy()), atol=1e-9)
        np.testing.assert_allclose(track.centre_error(p, g), center_error(p, g), atol=1e-9)
    curves = [track.sequence_curves(p, g) for p, g in zip(preds, gts, strict=True)]
    ours, oracle = track.scores(track.overall(curves)), _otb(preds, gts)
    for key in ("auc", "precision_20", "success_50"):
        assert ours[key] == pytest.approx(oracle[key], abs=1e-12), key
    for p, g, c in zip(preds, gts, curves, strict=True):
        assert track.scores(c)["norm_precision"] == pytest.approx(_norm_precision_reference(p, g), abs=1e-12)
    assert 0.1 < ours["auc"] < 0.9  # the three noise levels make a curve that is neither all hits nor all misses


def test_degenerate_predictions_score_zero_and_a_perfect_track_scores_the_maximum():
    gt = np.array([[10.0, 20.0, 30.0, 40.0]] * 5)
    nan = np.full_like(gt, np.nan)
    assert track.box_iou(nan, gt).tolist() == [0.0] * 5  # a tracker that returns NaN has lost the target
    assert np.isinf(track.centre_error(nan, gt)).all()
    lost = track.scores(track.sequence_curves(np.zeros_like(gt), gt))
    assert lost == {"auc": 0.0, "success_50": 0.0, "precision_20": 0.0, "norm_precision": 0.0}
    perfect = track.scores(track.sequence_curves(gt, gt))
    # IoU 1 passes every threshold below 1 (OTB counts IoU > t): 20 of the 21
    assert perfect == {"auc": pytest.approx(20 / 21), "success_50": 1.0, "precision_20": 1.0, "norm_precision": 1.0}


def test_the_videos_dataset_is_deterministic_and_has_occluding_distractors(tmp_path):
    a = track.make_videos(tmp_path / "a", VIDEOS, "val")
    b = track.make_videos(tmp_path / "b", VIDEOS, "val")
    assert a["arrays_sha256"] == b["arrays_sha256"]
    other = track.make_videos(tmp_path / "c", {**VIDEOS, "seed": 1}, "val")
    assert other["arrays_sha256"] != a["arrays_sha256"]
    v = track.load_videos(tmp_path / "a")
    assert v.frames.shape == (3, 12, 96, 96, 3) and v.frames.dtype == np.uint8 and v.boxes.shape == (3, 12, 4)
    assert v.frames.std() > 20  # textured, not blank
    w, h = v.boxes[..., 2], v.boxes[..., 3]
    assert (w > 5).all() and (h > 5).all() and ((w.max(1) / w.min(1)) > 1.1).all()  # every target changes scale
    centre = v.boxes[..., :2] + v.boxes[..., 2:] / 2
    assert ((centre >= 0) & (centre <= 96)).all() and (np.abs(np.diff(centre, axis=1)).sum() > 10)
    assert v.visible.min() < 0.9  # something hides the target some of the time


def test_a_missing_or_corrupt_videos_index_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(PlanforgeError, match="videos_val.json: no such videos index"):
        track.load_videos(tmp_path)
    track.make_videos(tmp_path, VIDEOS, "val")
    (tmp_path / "videos_val.npz").write_bytes(b"not an npz")
    with pytest.raises(PlanforgeError, match=r"videos_val.json: not a readable videos index.*make_videos") as e:
        track.load_videos(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "videos_val.json").write_text("{")
    with pytest.raises(PlanforgeError, match="videos_val.json: not valid JSON"):
        track.load_videos(tmp_path)


@pytest.fixture
def template_family(monkeypatch):
    monkeypatch.setenv("PLANFORGE_PLUGINS", PLUGIN)
    from workflow_scripts.core.registry import load_plugins

    load_plugins()
    from workflow_scripts.core import registry
    from workflow_scripts.models import FAMILIES, get_family

    yield get_family("track-template")
    # registered for this test only: other tests list the families
    FAMILIES._entries.pop("track-template", None)
    registry._loaded.discard(PLUGIN)
    sys.modules.pop(PLUGIN, None)


def test_the_template_tracker_follows_its_target_and_the_auc_gate_is_a_ratio(tmp_path, template_family):
    from workflow_scripts.pipeline import make_runner

    track.make_videos(tmp_path, {**VIDEOS, "splits": {"val": 4}, "frames": 16, "frame_size": 128}, "val")
    runner = make_runner("torch", "track-template.yaml", "track-template", "fp32", "cpu", 1)
    rec = track.evaluate(track.predictor(template_family, runner, None), tmp_path, None, 1, None, "fp32")
    assert rec["sequences"] == 4 and len(rec["per_sequence"]) == 4 and len(rec["curves"]["success"]) == 21
    assert 0.2 < rec["auc"] < 0.95, rec["auc"]  # a real tracker: better than nothing, not an oracle
    again = track.evaluate(track.predictor(template_family, runner, None), tmp_path, None, 1, 2, "fp32")
    assert again["sequences"] == 2
    assert [r["auc"] for r in again["per_sequence"]] == [r["auc"] for r in rec["per_sequence"][:2]]
    base = gate({**rec, "backend": "torch", "precision": "fp32"}, None, 0.95)
    worse = gate({**rec, "auc": rec["auc"] * 0.9, "backend": "x", "precision": "fp16"}, base, 0.95)
    assert base["gate"]["passed"] and worse["ratio_to_baseline"] == pytest.approx(0.9) and not worse["gate"]["passed"]


TRACK_CONFIG = {
    "datasets": {"clips": {"kind": "videos", "seed": 0, "splits": {"val": 3}, "frames": 12, "frame_size": 96}},
    "models": {"tt": {"family": "track-template", "checkpoint": "track-template.yaml", "dataset": "clips"}},
    "targets": {
        "cpu": {
            "device": "cpu",
            "threads": 1,
            "backends": {"torch": ["fp32"], "onnxruntime": ["fp32"]},
            "batch_sizes": [1, 2],
        }
    },
    "bench": {"warmup": 2, "iterations": 20, "stability": CONTENTION_NOT_JUDGED},
}


def test_the_plan_runs_a_tracking_model_on_torch_only_and_refuses_a_detection_dataset(template_family):
    from workflow_scripts.config import validate
    from workflow_scripts.plan.jobs import Plan

    plan = Plan(
        validate(TRACK_CONFIG, check_files=False),
        available=lambda b: (True, ""),
        gpu_name=lambda: "",
        trt_builder=lambda: None,
    )
    assert plan.bench_outputs() == [
        "results/cpu/bench/tt/torch_fp32_b1.json",
        "results/cpu/bench/tt/torch_fp32_b2.json",
    ]
    assert plan.accuracy_outputs() == ["results/cpu/accuracy/tt/torch_fp32.json"]
    assert plan.val_annotations("tt") == "artifacts/data/clips/videos_val.json"
    assert any("onnxruntime: tt not run: family track-template runs only" in line for line in plan.unavailable_lines())
    assert plan.videos_settings("clips", "val") == {**TRACK_CONFIG["datasets"]["clips"], "distractors": 2}
    cfg = copy.deepcopy(TRACK_CONFIG)
    cfg["datasets"]["clips"] = {"kind": "synthetic", "seed": 0}
    with pytest.raises(PlanforgeError, match="models.tt.dataset: 'clips' is a synthetic dataset; a tracking model"):
        validate(cfg, check_files=False)


@pytest.mark.workflow
def test_a_tracking_model_runs_dataset_accuracy_bench_and_summary_and_a_rerun_plans_nothing(tmp_path, monkeypatch):
    work = make_workflow_copy(tmp_path / "wf", TRACK_CONFIG)
    shutil.copytree(REPO / "tests" / "plugins", work / "tests" / "plugins")
    (work / "tests" / "__init__.py").write_text("")
    monkeypatch.setenv("PLANFORGE_PLUGINS", PLUGIN)
    snakemake(work, "results/summary.md")

    acc = json.loads((work / "results/cpu/accuracy/tt/torch_fp32.json").read_text())
    assert acc["task"] == "tracking" and acc["metric"] == "auc" and acc["sequences"] == 3
    assert 0.2 < acc["auc"] < 0.95 and acc["gate"]["passed"] and acc["baseline"]["is_self"]
    for b in (1, 2):
        bench = json.loads((work / f"results/cpu/bench/tt/torch_fp32_b{b}.json").read_text())
        assert bench["task"] == "tracking" and bench["live_sequences"] == b and bench["iterations"] >= 20
        assert bench["latency_ms"]["p50"] > 0 and bench["latency_ms"]["p99"] >= bench["latency_ms"]["p50"]
        assert bench["prompt_ms"]["p50"] > 0 and "Tracker.track" in bench["timer"]["model"]
        assert bench["state_bytes"]["after_loop_mean"] == bench["state_bytes"]["after_start_mean"] > 0
        assert bench["frames_per_sequence"] > bench["iterations"] and bench["dispersion"]["cv"] is not None
    summary = (work / "results/summary.md").read_text()
    assert "success AUC" in summary and "tt" in summary
    assert "onnxruntime: tt not run" in summary
    assert planned_outputs(work, "results/summary.md") == set()  # nothing left to do
    # the family module is a code input of its jobs; the task module also of the dataset it generates
    family = work / "tests/plugins/track_template.py"
    family.write_text(family.read_text() + "\n# edited\n")
    stale = planned_outputs(work, "results/summary.md")
    assert {"results/cpu/accuracy/tt/torch_fp32.json", "results/cpu/bench/tt/torch_fp32_b1.json"} <= stale
    assert "artifacts/data/clips/videos_val.json" not in stale
    task = work / "workflow_scripts/tasks/tracking.py"
    task.write_text(task.read_text() + "\n# edited\n")
    assert "artifacts/data/clips/videos_val.json" in planned_outputs(work, "results/summary.md")


def test_the_bench_times_one_frame_of_each_live_sequence_and_the_prompt_frame_apart(tmp_path, template_family):
    from workflow_scripts.bench import Row, bench
    from workflow_scripts.plan.settings import BenchSettings, Stability

    track.make_videos(tmp_path, VIDEOS, "val")
    r = bench(
        Row("tt", "track-template", "track-template.yaml", "torch", "fp32", 2, tmp_path, "cpu"),
        BenchSettings(
            device="cpu", threads=1, backend_options={}, power="none", gpu=None, imgsz=0, warmup=3, iterations=30,
            min_seconds=0, conf=0.0, stability=Stability(max_cv=10.0, max_p99_over_p50=100.0, attempts=1),
        ),
    )  # fmt: skip
    assert r["task"] == "tracking" and r["live_sequences"] == 2 and r["iterations"] >= 30
    assert r["device_latency_ms"] is None and r["latency_ms"]["p50"] > 0 and r["prompt_ms"]["p50"] > 0
    # 2 frames per call: frames/s over the live sequences
    assert r["throughput_items_per_s"] == pytest.approx(2 * 1e3 / r["latency_ms"]["mean"], rel=0.05)
    # 11 later frames, then back: the sequence outlives its length and its state stays one template
    assert r["frames_per_sequence"] >= 34 and r["state_bytes"]["after_loop_max"] == 3 * 24 * 24 * 4 + 32
    assert len(r["object_scores_last"]) == 2 and r["input_size"] == 48 and r["frame_size"] == [96, 96]
