"""SAMURAI in ONNX Runtime: its four parts export (the memory attention with a dynamic memory length and object-pointer
count), each is checked against torch by the export step, and the ONNX Runtime tracker follows the torch tracker
(samurai-demo weights, real exports, real ONNX Runtime sessions)."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import REPO
from workflow_scripts import export
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.models import samurai
from workflow_scripts.pipeline import make_runner
from workflow_scripts.tasks import tracking

CLIPS = {"seed": 0, "splits": {"val": 2}, "frames": 20, "frame_size": 128, "distractors": 2}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The demo tracker's parts exported by the export step, beside its checkpoint and a small videos dataset."""
    root = tmp_path_factory.mktemp("samurai_ort")
    ckpt = root / "samurai-demo.pt"
    shutil.copy(REPO / "weights/samurai-demo.pt", ckpt)
    tracking.make_videos(root / "clips", CLIPS, "val")
    out = root / "onnx/fp32.onnx"
    record = _export(ckpt, root / "clips", out, root / "onnx/fp32.json", "auto", 0.05)
    return {"root": root, "ckpt": ckpt, "out": out, "record": record}


def _export(ckpt, dataset, out, report, simplify, max_abs_error):
    """The export step as the rule calls it (imgsz and the dynamic-batch flag mean nothing to the parts)."""
    return export.export("samurai", ckpt, dataset, out, report, 0, 17, True, simplify, 4, max_abs_error)


def _runner(path):
    return make_runner("onnxruntime", path, "samurai", "fp32", threads=2)


def _track(tracker, frames, box):
    out = [(tracker.start(frames[0], box), np.nan)]
    out += [tracker.track(f) for f in frames[1:]]
    tracker.close()
    return np.array([b for b, _ in out]), np.array([s for _, s in out])


def test_the_export_writes_four_parts_and_checks_each_against_torch(exported):
    files = samurai.part_files(exported["out"])
    assert all(f.is_file() for f in files.values())
    check = exported["record"]["check"]
    assert set(check["parts"]) == set(samurai.ONNX_PARTS)
    assert 0 <= check["max_abs_error"] < 1e-3  # float32 noise; the memory's bfloat16 rounding is counted apart
    attention = check["parts"]["memory_attention"]
    # one graph met every memory length and pointer count of a sequence (16 pointers of 2 tokens at most)
    assert len(attention["memory_tokens"]) > 3 and len(attention["pointer_tokens"]) > 3
    config = samurai.load_torch(exported["ckpt"]).config
    assert max(attention["pointer_tokens"]) == 2 * config.max_object_pointers_in_encoder
    inputs = {i["name"]: i["shape"] for i in exported["record"]["files"]["memory_attention"]["inputs"]}
    assert isinstance(inputs["pointers"][0], str) and isinstance(inputs["memory"][0], str)  # dynamic axes


def test_memory_attention_takes_any_pointer_count_the_trace_never_saw(exported):
    model = samurai.load_torch(exported["ckpt"])
    module, args = samurai.onnx_parts(model)["memory_attention"]  # traced with 2 pointers of 2 tokens
    sess = ort.InferenceSession(str(samurai.part_files(exported["out"])["memory_attention"]))
    top, top_pos = args[:2]
    g = torch.Generator().manual_seed(1)
    for frames, pointers in ((1, 2), (7, 5), (4, 32)):
        mem = [torch.randn(64 * frames, 1, 64, generator=g) for _ in range(2)]
        ptr = [torch.randn(pointers, 1, 64, generator=g) for _ in range(2)]
        with torch.no_grad():
            ref = module(top, top_pos, *mem, *ptr).numpy()
        feed = dict(zip(samurai.PART_INPUTS["memory_attention"], (t.numpy() for t in (top, top_pos, *mem, *ptr))))
        np.testing.assert_allclose(sess.run(None, feed)[0], ref, atol=1e-4, rtol=1e-4)


def test_the_ort_tracker_follows_the_torch_tracker(exported):
    vids = tracking.load_videos(exported["root"] / "clips")
    runner = _runner(exported["out"])
    facts = runner.facts()
    assert facts is runner.facts() and facts.module is None and facts.onnx == exported["out"]
    model = samurai.load_torch(exported["ckpt"])
    for i in range(1):  # one sequence: 19 tracked frames, every memory length and pointer count
        t = samurai.tracker(facts)
        assert t.describe()["mode"] == "onnxruntime"
        ort_boxes, ort_scores = _track(t, vids.frames[i], vids.boxes[i, 0])
        torch_boxes, torch_scores = _track(samurai.tracker(model), vids.frames[i], vids.boxes[i, 0])
        np.testing.assert_allclose(ort_boxes, torch_boxes, atol=1.0)  # pixels
        np.testing.assert_allclose(ort_scores, torch_scores, atol=1e-3)
        assert tracking.box_iou(torch_boxes, vids.boxes[i]).mean() > 0.3  # a real track, not two empty ones
    # the parts really ran in ONNX Runtime: the runner's trackers share one glue model whose hooks are sessions
    glue = samurai.ort_model(facts)
    assert glue is samurai.ort_model(runner.facts()) and "get_image_features" in glue.__dict__
    assert samurai.input_size(facts) == 128
    # the image encoder takes the frames of several live sequences in one batch, as torch's does
    pixels = torch.stack([samurai.frame_pixels(f, 128) for f in vids.frames[0, :3]])
    got = glue.get_image_features(pixels, return_dict=True)
    with torch.no_grad():
        want = model.get_image_features(pixels, return_dict=True)
    for g, w in zip(
        [*got.fpn_hidden_states, *got.fpn_position_encoding], [*want.fpn_hidden_states, *want.fpn_position_encoding]
    ):
        assert g.shape == w.shape and g.shape[1] == 3
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-3)
    assert exported["record"]["check"]["parts"]["image_encoder"]["batch"]["frames"] == 4


def test_a_part_that_differs_from_torch_fails_the_export_in_one_line_and_writes_nothing(exported, tmp_path):
    out = tmp_path / "onnx/fp32.onnx"
    with pytest.raises(PlanforgeError, match=r"fp32\.\w+\.onnx|fp32\.onnx: ONNX part \w+ differs from PyTorch"):
        _export(exported["ckpt"], exported["root"] / "clips", out, tmp_path / "r.json", "none", 0.0)
    assert not list((tmp_path / "onnx").iterdir()) and not (tmp_path / "r.json").exists()


def _copy_export(exported, dest):
    dest.mkdir()
    for f in samurai.part_files(exported["out"]).values():
        shutil.copy(f, dest / f.name)
    return dest / "fp32.onnx"


def test_a_missing_or_corrupt_part_is_one_line_naming_it(exported, tmp_path):
    path = _copy_export(exported, tmp_path / "a")
    samurai.part_files(path)["mask_decoder"].unlink()
    with pytest.raises(PlanforgeError, match=r"fp32\.mask_decoder\.onnx: missing \(the mask_decoder of .*\); rerun"):
        samurai.tracker(_runner(path).facts())
    path = _copy_export(exported, tmp_path / "b")
    samurai.part_files(path)["memory_attention"].write_bytes(b"not an onnx graph")
    with pytest.raises(PlanforgeError, match=r"fp32\.memory_attention\.onnx: ONNX Runtime cannot load it .*rerun"):
        samurai.tracker(_runner(path).facts())


def test_parts_exported_from_another_checkpoint_are_refused(exported, tmp_path):
    import onnx

    ckpt = tmp_path / "samurai-demo.pt"
    shutil.copy(exported["ckpt"], ckpt)
    path = _copy_export(exported, tmp_path / "onnx")
    graph = onnx.load(str(path))  # the export as if made from this copy of the checkpoint
    meta = {p.key: p for p in graph.metadata_props}[samurai.PARTS_KEY]
    meta.value = meta.value.replace(str(exported["ckpt"]), str(ckpt))
    onnx.save(graph, str(path))
    samurai.tracker(_runner(path).facts())  # the pair agrees
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # a re-prepared checkpoint, the ONNX files stale
    with pytest.raises(PlanforgeError, match="exported from another .*samurai-demo.pt than the one there now; rerun"):
        samurai.tracker(_runner(path).facts())
    ckpt.unlink()
    with pytest.raises(PlanforgeError, match=r"its checkpoint .*samurai-demo.pt \(the tracker's torch glue\) is"):
        samurai.tracker(_runner(path).facts())


def test_the_plan_names_the_files_the_family_writes():
    from workflow_scripts.config import validate
    from workflow_scripts.plan.jobs import Plan, onnx_path

    cfg = {
        "datasets": {"clips": {"kind": "videos", "seed": 0, "splits": {"val": 1}}},
        "models": {"s": {"family": "samurai", "checkpoint": "samurai-tiny.yaml", "dataset": "clips"}},
        "targets": {"cpu": {"device": "cpu", "threads": 1, "backends": {"torch": ["fp32"]}, "batch_sizes": [1]}},
    }
    plan = Plan(validate(cfg, check_files=False))
    files = samurai.part_files(onnx_path("s", "fp32"))
    assert str(files.pop("image_encoder")) == onnx_path("s", "fp32")
    assert [str(f) for f in files.values()] == plan.export.onnx_parts("s")


def test_the_dag_exports_the_parts_in_one_job_and_its_onnx_runtime_jobs_read_them_and_the_checkpoint(tmp_path):
    from tests.conftest import make_workflow_copy, snakemake

    cfg = {
        "datasets": {"clips": {"kind": "videos", "seed": 0, "splits": {"val": 1}, "frames": 8, "frame_size": 96}},
        "models": {"t": {"family": "samurai", "checkpoint": "samurai-tiny.yaml", "dataset": "clips"}},
        "targets": {"cpu": {"device": "cpu", "threads": 1, "backends": {"onnxruntime": ["fp32"]}, "batch_sizes": [1]}},
    }
    work = make_workflow_copy(tmp_path / "wf", cfg)
    text = snakemake(work, "-n", "results/cpu/bench/t/onnxruntime_fp32_b1.json").stdout
    export_job = text.split("rule export_onnx_parts:")[1].split("\n\n")[0]
    outputs = export_job.split("output: ")[1].splitlines()[0].split(", ")
    assert set(outputs) == {
        *(str(f) for f in samurai.part_files("artifacts/onnx/t/fp32.onnx").values()),
        "artifacts/onnx/t/fp32.json",
    }
    bench_inputs = text.split("rule bench:")[1].split("input: ")[1].splitlines()[0].split(", ")
    assert {"artifacts/onnx/t/fp32.onnx", "artifacts/onnx/t/fp32.mask_decoder.onnx"} <= set(bench_inputs)
    assert "artifacts/checkpoints/t.pt" in bench_inputs  # a new checkpoint makes the ONNX Runtime jobs stale
