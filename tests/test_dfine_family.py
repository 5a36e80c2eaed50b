"""The D-FINE family: preprocessing and postprocessing agree with transformers' own processor, a
save_pretrained directory and the prepared checkpoint file load the same model offline, the
trimmed ONNX export matches PyTorch on real images, and a directory checkpoint is watched by
Snakemake file by file (replacing it makes only that model stale)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, TINY_CONFIG, make_workflow_copy, planned_outputs, snakemake
from workflow_scripts.core.data import load_split, read_image
from workflow_scripts.make_dataset import make_dataset
from workflow_scripts.models import checkpoint_inputs, dfine, get_family, raw_outputs


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Real images: the synthetic dataset's val split (varied sizes, non-square)."""
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    settings = {"kind": "synthetic", "seed": 5, "splits": {"train": 0, "val": 6, "calib": 0}, "image_size": [96, 300]}
    make_dataset(out, settings, "val")
    return out


@pytest.fixture(scope="module")
def images(shapes) -> list[np.ndarray]:
    split = load_split(shapes, "val")
    return [read_image(split.image_path(r)) for r in split.images]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The demo architecture written by save_pretrained (the layout a Hugging Face snapshot has)."""
    out = tmp_path_factory.mktemp("dfine") / "dfine-demo"
    dfine.build_architecture("dfine-demo.yaml").save_pretrained(out)
    return out


def dfine_image_processor():
    """The image processor the published D-FINE checkpoints ship (their preprocessor_config.json)."""
    from transformers import RTDetrImageProcessor

    return RTDetrImageProcessor(
        do_resize=True,
        size={"height": 640, "width": 640},
        resample=2,  # PIL bilinear
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=False,
        do_pad=False,
    )


@pytest.mark.parametrize("size", [640, 320])
def test_preprocess_matches_rtdetr_image_processor_on_real_images(images, size):
    processor = dfine_image_processor()
    theirs = processor(images=images, size={"height": size, "width": size}, return_tensors="np")["pixel_values"]
    ours, metas = dfine.preprocess(images, size)
    assert ours.shape == theirs.shape == (len(images), 3, size, size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # the processor's PIL backend rounds a few pixels one level apart, never more
    from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

    pil = RTDetrImageProcessorPil(size={"height": size, "width": size}, do_normalize=False, do_pad=False)
    np.testing.assert_allclose(ours, pil(images=images, return_tensors="np")["pixel_values"], atol=1 / 255 + 1e-6)
    assert [(m.orig_h, m.orig_w) for m in metas] == [im.shape[:2] for im in images]
    assert len({im.shape for im in images}) > 1  # the images really differ in size


def test_postprocess_matches_transformers_post_process_object_detection(images, demo_dir):
    model = dfine.load_torch(demo_dir)
    batch, metas = dfine.preprocess(images, 320)
    with torch.inference_mode():
        out = model(pixel_values=torch.from_numpy(batch))
    sizes = [im.shape[:2] for im in images]
    theirs = dfine_image_processor().post_process_object_detection(out, threshold=0.3, target_sizes=sizes)
    ours = dfine.postprocess(
        [out.logits.numpy(), out.pred_boxes.numpy()], metas, conf=0.3, max_det=model.config.num_queries
    )
    assert sum(len(t["scores"]) for t in theirs) > 0  # something to compare
    for o, t in zip(ours, theirs):
        order = np.argsort(-t["scores"].numpy(), kind="stable")
        np.testing.assert_allclose(o["scores"], t["scores"].numpy()[order], atol=1e-6)
        np.testing.assert_array_equal(o["classes"], t["labels"].numpy()[order])
        np.testing.assert_allclose(o["boxes"], t["boxes"].numpy()[order], atol=1e-3)


def test_postprocess_scales_boxes_to_original_pixels_and_takes_topk_over_classes():
    logits = np.full((1, 3, 2), -10.0, np.float32)
    logits[0, 1, 0], logits[0, 1, 1], logits[0, 2, 1] = 3.0, 2.0, 1.0  # query 1 gives two classes
    boxes = np.array([[[0.5, 0.5, 0.1, 0.1], [0.25, 0.5, 0.5, 0.2], [0.9, 0.9, 0.2, 0.2]]], np.float32)
    det = dfine.postprocess([logits, boxes], [dfine.ResizeMeta(orig_h=100, orig_w=200)], conf=0.5, max_det=2)[0]
    assert det["classes"].tolist() == [0, 1]
    np.testing.assert_allclose(det["boxes"], [[0.0, 40.0, 100.0, 60.0]] * 2, atol=1e-4)
    np.testing.assert_allclose(det["scores"], 1 / (1 + np.exp([-3.0, -2.0])), rtol=1e-6)


def test_directory_file_and_architecture_load_the_same_weights(demo_dir, tmp_path, images):
    from workflow_scripts.prepare_checkpoint import prepare_checkpoint

    info = prepare_checkpoint("dfine", demo_dir, tmp_path / "d.pt", tmp_path / "d.json")
    assert info["class_names"] == list(dfine.DEMO_CLASSES) and info["random_weights"] is False
    batch, _ = dfine.preprocess(images[:2], 320)
    outs = []
    for src in (demo_dir, tmp_path / "d.pt", "dfine-demo.yaml"):
        with torch.inference_mode():
            outs.append(dfine.forward_output(dfine.load_torch(src)(torch.from_numpy(batch))))
    for logits, boxes in outs[1:]:
        torch.testing.assert_close(logits, outs[0][0])
        torch.testing.assert_close(boxes, outs[0][1])


def test_checkpoint_inputs_watch_a_directory_file_by_file(demo_dir, tmp_path):
    files = checkpoint_inputs("dfine", str(demo_dir))
    assert {Path(f).name for f in files} == {"config.json", "model.safetensors"}
    assert checkpoint_inputs("dfine", "ustc-community/dfine-xlarge-coco") == []  # a hub id: the id is a param
    assert checkpoint_inputs("dfine", "dfine-demo.yaml") == []
    assert checkpoint_inputs("yolo", "weights/yolo-demo.pt") == ["weights/yolo-demo.pt"]
    assert dfine.hub_id("ustc-community/dfine_x_coco") == dfine.hub_id("dfine-x") == "ustc-community/dfine-xlarge-coco"


def test_hub_id_without_network_is_one_line_naming_what_to_download(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "workflow_scripts.prepare_checkpoint", "--family", "dfine"]
    cmd += ["--src", "ustc-community/dfine_x_coco", "--out", str(tmp_path / "x.pt"), "--info", str(tmp_path / "x.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "x.pt").exists()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("planforge error: ustc-community/dfine-xlarge-coco"), proc.stderr
    assert "download" in lines[0]


def test_export_is_trimmed_dynamic_and_matches_pytorch_on_real_images(demo_dir, shapes, tmp_path):
    import onnx

    from workflow_scripts.export import export

    ckpt = tmp_path / "d.pt"
    dfine.save_checkpoint(dfine.load_torch(demo_dir), ckpt)
    report = export(
        "dfine", ckpt, shapes, tmp_path / "fp32.onnx", tmp_path / "fp32.json", 320, 17, True, "auto", 3, 1e-3
    )
    assert [o["name"] for o in report["outputs"]] == ["logits", "pred_boxes"]
    assert report["inputs"][0]["shape"][0] == "batch" and report["opset"] == 17
    assert report["check"]["images"] == 3 and report["check"]["max_abs_error"] < 1e-3
    assert report["simplifier"] in ("onnxsim", "onnxslim")
    model = onnx.load(str(tmp_path / "fp32.onnx"))
    assert [o.name for o in model.graph.output] == ["logits", "pred_boxes"]
    fam = get_family("dfine")
    assert raw_outputs(fam, ["l", "b", "extra"]) == ["l", "b"] and raw_outputs(get_family("yolo"), ["o"]) == "o"
    assert json.loads((tmp_path / "fp32.json").read_text())["output_names"] == ["logits", "pred_boxes"]


def test_replacing_a_directory_checkpoint_makes_only_that_model_stale(tmp_path, demo_dir):
    config = json.loads(json.dumps(TINY_CONFIG))
    config["models"] = {
        "a": TINY_CONFIG["models"]["a"],
        "d": {"family": "dfine", "checkpoint": "ckpt/dfine-demo", "dataset": "tiny", "imgsz": 160, "accuracy": False},
    }
    work = make_workflow_copy(tmp_path / "wf", config)
    shutil.copytree(demo_dir, work / "ckpt" / "dfine-demo")
    ckpts = ["artifacts/checkpoints/a.pt", "artifacts/checkpoints/d.pt"]
    snakemake(work, *ckpts)
    assert planned_outputs(work, *ckpts) == set()
    info = json.loads((work / "artifacts/checkpoints/d.json").read_text())
    assert info["family"] == "dfine" and info["source"] == "ckpt/dfine-demo"
    # replace the weights file inside the directory (as a new snapshot would)
    new = tmp_path / "new"
    model = dfine.build_architecture("dfine-demo.yaml", seed=1)
    model.save_pretrained(new)
    shutil.copy(new / "model.safetensors", work / "ckpt" / "dfine-demo" / "model.safetensors")
    assert planned_outputs(work, *ckpts) == {"artifacts/checkpoints/d.pt", "artifacts/checkpoints/d.json"}


@pytest.mark.parametrize(("size", "published_millions"), [("n", 4), ("x", 62)])
def test_published_architectures_have_the_published_sizes(size, published_millions):
    """D-FINE-N and -X rebuilt from their released configurations (the paper: 4 M and 62 M parameters)."""
    model = dfine.build_architecture(f"dfine-{size}.yaml")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - published_millions) / published_millions < 0.07, params
    assert dfine.class_names(model)[:3] == ["person", "bicycle", "car"] and len(dfine.class_names(model)) == 80
    with torch.inference_mode():
        logits, boxes = dfine.forward_output(model(torch.rand(1, 3, 320, 320)))
    assert logits.shape == (1, 300, 80) and boxes.shape == (1, 300, 4)
    with pytest.raises(Exception, match="not a D-FINE architecture"):
        dfine.build_architecture("dfine-q.yaml")


def test_training_script_runs_and_writes_a_checkpoint_the_pipeline_loads(tmp_path):
    """Two steps on CPU: the loss is finite, the directory loads as a checkpoint, the JSON has the mAP."""
    from workflow_scripts.training import dfine_demo as train_dfine_demo

    out = tmp_path / "dfine-demo"
    argv = ["--out", str(out), "--train-images", "4", "--val-images", "2", "--imgsz", "160", "--epochs", "1"]
    train_dfine_demo.main([*argv, "--batch", "2", "--device", "cpu", "--denoising", "10"])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["steps"] == 2 and np.isfinite(record["final_loss"]) and 0.0 <= record["val"]["map50_95"] <= 1.0
    model = dfine.load_torch(out)
    assert dfine.class_names(model) == list(dfine.DEMO_CLASSES)
    assert checkpoint_inputs("dfine", str(out))  # a directory checkpoint, watched file by file

    # A second leg continues from the first: weights, optimizer state, and the first leg in its record.
    leg2 = tmp_path / "leg2"
    resume = ["--resume", str(out), "--schedule", "cosine", "--time-hours", "0.0001"]
    train_dfine_demo.main(["--out", str(leg2), *argv[2:], "--batch", "4", "--device", "cpu", *resume])
    second = json.loads(leg2.with_suffix(".json").read_text())
    assert second["steps"] == 1 and second["total_steps"] == 3
    assert [e["steps"] for e in second["earlier_legs"]] == [2] and leg2.with_suffix(".optim.pt").is_file()


def test_training_refuses_to_resume_from_a_directory_it_did_not_write(tmp_path, demo_dir):
    from workflow_scripts.core.io import PlanforgeError
    from workflow_scripts.training import dfine_demo as train_dfine_demo

    with pytest.raises(PlanforgeError, match=r"--resume .*dfine-demo: not a directory this script wrote"):
        train_dfine_demo.main(["--out", str(tmp_path / "x"), "--resume", str(demo_dir), "--device", "cpu"])
    assert not (tmp_path / "x").exists()


def test_the_committed_dfine_demo_scores_what_its_training_record_says(tmp_path):
    """weights/dfine-demo on the default's val split (seed 0, 200 images), torch FP32 on the CPU, through
    the training script's evaluation (the workflow's accuracy loop): the mAP the record claims, to 0.005."""
    from workflow_scripts.training import dfine_demo as train_dfine_demo

    record = json.loads((REPO / "weights" / "dfine-demo.json").read_text())
    settings = {
        "kind": "synthetic",
        "seed": 0,
        "splits": {"train": 0, "val": 200, "calib": 0},
        "image_size": [256, 416],
    }
    make_dataset(tmp_path / "shapes", settings, "val")
    model = dfine.load_torch(REPO / "weights" / "dfine-demo")
    stats = train_dfine_demo.evaluate(model, load_split(tmp_path / "shapes", "val"), 320, "cpu")
    assert record["val"]["map50_95"] >= 0.4
    assert abs(stats["map50_95"] - record["val"]["map50_95"]) < 0.005


def test_a_fixed_input_size_keeps_the_outputs_and_puts_anchors_in_the_model_dtype():
    """The precomputed anchors (what makes the forward capturable) change nothing in the outputs."""
    model = dfine.load_torch("dfine-demo.yaml")
    x = torch.rand(2, 3, 320, 320)
    with torch.inference_mode():
        before = dfine.forward_output(model(x))
        dfine.fix_input_size(model, 320, 320, torch.device("cpu"), torch.float32)
        after = dfine.forward_output(model(x))
    assert model.config.anchor_image_size == [320, 320]
    assert model.model.anchors.dtype == model.model.valid_mask.dtype == torch.float32
    assert model.model.anchors.shape[1] == sum((320 // s) ** 2 for s in model.config.feat_strides)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_the_torch_runner_fixes_the_input_size_once_per_shape():
    from workflow_scripts.pipeline import make_runner

    runner = make_runner("torch", "dfine-demo.yaml", "dfine", "fp32", "cpu", 1, {})
    calls = []
    fix = runner.input_size_fn
    runner.input_size_fn = lambda m, h, w, d, t: calls.append((h, w)) or fix(m, h, w, d, t)
    batch = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    for _ in range(2):
        runner.infer(runner.prepare(batch))
    runner.prepare(np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32))
    assert calls == [(320, 320), (256, 256)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
def test_dfine_captures_in_a_cuda_graph_and_replays_the_eager_outputs():
    from workflow_scripts.pipeline import make_runner

    runner = make_runner("torch-cudagraph", "dfine-demo.yaml", "dfine", "fp16", "cuda", 1, {})
    eager = make_runner("torch", "dfine-demo.yaml", "dfine", "fp16", "cuda", 1, {})
    batch = np.random.default_rng(0).random((2, 3, 320, 320), dtype=np.float32)
    got = runner.to_numpy(runner.infer(runner.prepare(batch)))
    want = eager.to_numpy(eager.infer(eager.prepare(batch)))
    for g, w in zip(got, want):
        assert np.allclose(g, w, atol=2e-2)


def test_the_numpy_resize_is_torchvisions_antialiased_bilinear_bit_for_bit():
    """dfine.resize_aa (numpy, so the Triton python backend needs no torch) equals the image processor's resize."""
    import torch
    from torchvision.transforms.v2 import functional as tvf

    rng = np.random.default_rng(5)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 400, 2))
        size = int(rng.choice([32, 160, 320, 640]))
        im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = tvf.resize(
            torch.from_numpy(im).permute(2, 0, 1),
            [size, size],
            interpolation=tvf.InterpolationMode.BILINEAR,
            antialias=True,
        )
        assert np.array_equal(dfine.resize_aa(im, size), ref.permute(1, 2, 0).numpy()), (h, w, size)
