"""SAMURAI family (workflow_scripts/models/samurai/): the tracker against plain transformers SAM 2, the
Kalman filter against filterpy, the memory rule, bounded state, one-line errors, parameter counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # noqa: F401 - a declared dependency: a broken install fails here, it is not skipped

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.runner_facts import RunnerFacts
from workflow_scripts.models import (
    FAMILIES,
    BadImage,
    get_family,
    samurai,
)

PLAIN_SAM2 = {"alpha": 0.0, "memory_filter": False, "min_obj_score_logits": 0.0, "stable_frames": 4}


def clip(n: int, h: int = 96, w: int = 120, seed: int = 0) -> tuple[list[np.ndarray], tuple]:
    """A red square moving right over noise; the box of its first frame."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(n):
        f = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
        x, y = 10 + 2 * t, 30 + t % 5
        f[y : y + 24, x : x + 20] = [230, 40, 30]
        frames.append(f)
    return frames, (10, 30, 20, 24)


@pytest.fixture(scope="module")
def tiny():
    return samurai.load_torch("samurai-tiny.yaml")


def test_family_is_registered_for_the_tracking_task():
    spec = FAMILIES["samurai"]
    assert spec.task == "tracking" and spec.artifacts == ("checkpoint", "onnx")
    assert spec.onnx_parts == tuple(samurai.ONNX_PARTS[1:])  # the image encoder is the model's fp32.onnx itself
    assert get_family("samurai") is samurai


def test_with_alpha_zero_and_no_memory_filter_it_tracks_exactly_as_transformers_sam2(tiny):
    """The key check: SAMURAI's own tracked-frame path, with α = 0 and the memory filter off, gives the same
    mask logits and object scores as transformers' `Sam2VideoModel` streaming the same frames and box."""
    from transformers import Sam2VideoInferenceSession, Sam2VideoModel

    frames, box = clip(10)
    plain = Sam2VideoModel(tiny.config).eval()
    plain.load_state_dict(tiny.state_dict())
    assert type(plain) is Sam2VideoModel

    tr = samurai.tracker(tiny, PLAIN_SAM2)
    session = Sam2VideoInferenceSession(video_height=96, video_width=120, dtype=torch.float32)
    s = samurai.input_size(tiny)
    x1, y1, x2, y2 = box[0] * s / 120, box[1] * s / 96, (box[0] + box[2]) * s / 120, (box[1] + box[3]) * s / 96
    obj = session.obj_id_to_idx(1)
    session.add_point_inputs(
        obj,
        0,
        {
            "point_coords": torch.tensor([[[[x1, y1], [x2, y2]]]], dtype=torch.float32),
            "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32),
        },
    )
    session.obj_with_new_inputs = [1]
    for t, frame in enumerate(frames):
        pixels = torch.from_numpy(samurai.preprocess_frame(frame, s))
        ref = plain(inference_session=session, frame=pixels, frame_idx=t)
        if t == 0:
            tr.start(frame, box)
        else:
            _, score = tr.track(frame)
            assert score == float(ref.object_score_logits.reshape(-1)[0])
        assert torch.equal(tr.last_logits, ref.pred_masks), f"frame {t}"
        assert np.array_equal(tr.last_mask, samurai.mask_to_frame(ref.pred_masks, s, 96, 120))
    # the SAMURAI path ran into its Kalman-weighted stage, it only chose as plain SAM 2 does
    assert tr.session.samurai.objects[0]["stable"] >= 4


def test_kalman_filter_matches_filterpy():
    from filterpy import kalman as filterpy

    kf = samurai.KalmanFilter()
    rng = np.random.default_rng(1)
    z0 = np.array([50.0, 40.0, 0.8, 30.0])
    mean, cov = kf.initiate(z0)
    ref = filterpy.KalmanFilter(dim_x=8, dim_z=4)
    ref.x, ref.P = mean.copy(), cov.copy()
    ref.F, ref.H = kf.motion_mat.copy(), kf.update_mat.copy()
    for t in range(1, 25):
        ref.Q = kf.process_noise(ref.x)
        ref.predict()
        mean, cov = kf.predict(mean, cov)
        np.testing.assert_allclose(mean, ref.x, rtol=1e-10)
        np.testing.assert_allclose(cov, ref.P, rtol=1e-9, atol=1e-12)
        z = z0 + np.array([3.0 * t, -1.5 * t, 0.0, 0.2 * t]) + rng.normal(0, 0.5, 4) * [1, 1, 0.01, 1]
        ref.R = kf.measurement_noise(ref.x)
        ref.update(z)
        mean, cov = kf.update(mean, cov, z)
        np.testing.assert_allclose(mean, ref.x, rtol=1e-9)
        np.testing.assert_allclose(cov, ref.P, rtol=1e-7, atol=1e-10)
    assert abs(mean[4] - 3.0) < 0.5 and abs(mean[5] + 1.5) < 0.5  # it learnt the velocity


def test_candidate_choice_follows_upstream_stages():
    settings = samurai.settings_for(None, {"stable_frames": 3, "alpha": 0.9})
    kf, st = samurai.KalmanFilter(), {"mean": None, "cov": None, "stable": 0, "predicted": None}
    near = [10, 10, 30, 30]
    far = [80, 80, 100, 100]
    for _ in range(3):  # initiate, then warm-up: always the best predicted IoU (here the near box)
        k, kf_score = samurai.select_candidate(st, np.array([0.9, 0.5]), [near, far], settings, kf)
        assert k == 0 and kf_score is None
    assert st["stable"] == 3
    plain = {**settings, "alpha": 0.0}
    assert samurai.select_candidate(dict(st), np.array([0.5, 0.9]), [near, far], plain, kf)[0] == 1
    # stable: the Kalman box (around `near`, where it was initiated and updated) outweighs the predicted IoU
    k, kf_score = samurai.select_candidate(st, np.array([0.5, 0.9]), [near, far], settings, kf)
    assert k == 0 and kf_score > 0.5
    # a chosen predicted IoU below stable_iou resets the count (no update)
    k, _ = samurai.select_candidate(st, np.array([0.2, 0.25]), [near, far], settings, kf)
    assert st["stable"] == 0


def test_memory_selection_keeps_the_newest_qualifying_frames_and_always_the_previous():
    settings = samurai.settings_for(None)

    def out(iou, score, kf=None):
        return {"best_iou_score": iou, "object_score_logits": torch.tensor([[[score]]]), "kf_score": kf}

    good, bad_iou, hidden, bad_motion = out(0.9, 2.0), out(0.4, 2.0), out(0.9, -0.5), out(0.9, 2.0, kf=0.0)
    outputs = {1: good, 2: good, 3: bad_iou, 4: good, 5: hidden, 6: good, 7: bad_motion, 8: good, 9: good, 10: bad_iou}
    # frame 11: qualifying 2, 4, 6, 8, 9 (1 is the first tracked frame, skipped as upstream does), 10 always
    assert samurai.select_memory_frames(outputs, 11, 0, settings, 7) == [2, 4, 6, 8, 9, 10]
    assert samurai.select_memory_frames(outputs, 11, 0, settings, 4) == [8, 9, 10]
    # upstream's code never applies the motion threshold: frame 7 then qualifies
    code = {**settings, "memory_kf_score": None}
    assert samurai.select_memory_frames(outputs, 11, 0, code, 7) == [4, 6, 7, 8, 9, 10]
    # at most memory_window qualifying frames are scanned, newest first
    many = {i: good for i in range(1, 40)}
    assert samurai.select_memory_frames(many, 40, 0, settings, 7) == [34, 35, 36, 37, 38, 39]
    assert samurai.select_memory_frames({}, 1, 0, settings, 7) == [0]


def test_state_stays_bounded_over_a_long_sequence(tiny):
    frames, box = clip(32, h=64, w=80)
    tr = samurai.tracker(tiny)
    tr.start(frames[0], (10, 30, 20, 24))
    held, sizes = [], []
    for f in frames[1:]:
        b, score = tr.track(f)
        assert b.shape == (4,) and b.dtype == np.float64 and isinstance(score, float)
        held.append(tr.frames_held)
        sizes.append(tr.state_bytes())
    cap = 1 + max(tiny.num_maskmem - 1, tiny.config.max_object_pointers_in_encoder - 1) + tiny.num_maskmem - 1
    assert max(held) <= cap
    assert max(sizes[22:]) <= max(sizes[:22])  # no growth once the window is full
    assert not tr.session.processed_frames and not tr.session.cache._vision_features
    # the next frame attends to the prompt frame and the frames of SAMURAI's rule, newest at offset 1
    s, t = tr.session, tr.frame_idx + 1
    non_cond = s.output_dict_per_obj[0]["non_cond_frame_outputs"]
    frames = samurai.select_memory_frames(non_cond, t, 0, tr.settings, tiny.num_maskmem)
    picked = tiny._gather_memory_frame_outputs(s, 0, t)
    assert picked[0][0] == 0 and picked[0][1] is s.output_dict_per_obj[0]["cond_frame_outputs"][0]
    assert [(o, id(out)) for o, out in picked[1:]] == [(len(frames) - i, id(non_cond[f])) for i, f in enumerate(frames)]
    tr.close()
    assert tr.frames_held == 0 and tr.state_bytes() == 0


def test_bad_frames_boxes_and_checkpoints_fail_in_one_line(tiny, tmp_path):
    tr = samurai.tracker(tiny)
    frames, box = clip(2)
    with pytest.raises(PlanforgeError, match="before Tracker.start"):
        tr.track(frames[0])
    with pytest.raises(BadImage, match="frame: expected HxWx3 uint8"):
        tr.start(frames[0].astype(np.float32), box)
    with pytest.raises(PlanforgeError, match="box: expected"):
        tr.start(frames[0], (1, 2, 0, 5))
    tr.start(frames[0], box)
    with pytest.raises(BadImage, match="frame: expected"):
        tr.track(frames[1][:, :, :2])
    with pytest.raises(PlanforgeError, match="this sequence is 96x120"):
        tr.track(frames[1][:50])
    with pytest.raises(PlanforgeError, match="not one of"):
        samurai.tracker(tiny, {"alfa": 0.1})
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PlanforgeError, match="corrupt.pt: not a readable samurai checkpoint") as e:
        samurai.load_torch(bad)
    assert "\n" not in str(e.value)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(PlanforgeError, match="not a planforge-samurai-v1 checkpoint"):
        samurai.load_torch(other)


def test_prepared_and_trained_checkpoints_load_back(tiny, tmp_path):
    prepared = tmp_path / "random.pt"
    samurai.save_checkpoint(samurai.build_architecture("samurai-tiny.yaml"), prepared)
    assert prepared.stat().st_size < 10_000  # random weights are rebuilt from the seed
    again = samurai.load_torch(prepared)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), tiny.state_dict().values()))
    trained = samurai.build_architecture("samurai-tiny.yaml", seed=5)
    trained.planforge_source["trained"] = True
    path = tmp_path / "trained.pt"
    samurai.save_checkpoint(trained, path)
    back = samurai.load_torch(path)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), trained.state_dict().values()))


@pytest.mark.parametrize(
    "name, millions",
    [("samurai-t.yaml", 38.9), ("samurai-s.yaml", 46.0), ("samurai-b+.yaml", 80.8), ("samurai-l.yaml", 224.4)],
)
def test_sam21_sizes_have_the_published_parameter_counts(name, millions):
    model = samurai.build_architecture(name, device="meta")
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) / millions < 0.02, count
    assert samurai.settings_for(model)["alpha"] == (0.15 if name == "samurai-l.yaml" else 0.25)


def test_tiny_is_small_and_follows_the_model_dtype(tiny):
    assert sum(p.numel() for p in tiny.parameters()) < 3_000_000
    assert samurai.input_size(tiny) == 128
    model = samurai.build_architecture("samurai-tiny.yaml").to(torch.bfloat16)
    tr = samurai.tracker(model)
    frames, box = clip(3)
    tr.start(frames[0], box)
    b, score = tr.track(frames[1])
    assert tr.session.dtype == torch.bfloat16 and np.isfinite(b).all() and np.isfinite(score)


def test_demo_training_clips_loss_and_auc():
    from workflow_scripts.training import samurai_demo as demo

    rng = np.random.default_rng(0)
    video, masks = demo.make_clip(rng, 3, 128)
    assert video.shape == (3, 128, 128, 3) and video.dtype == np.uint8 and masks.shape == (3, 128, 128)
    assert all(m.sum() > 50 for m in masks)
    assert demo.success_auc([1.0, 1.0]) == pytest.approx(20 / 21) and demo.success_auc([0.0]) == 0.0
    assert demo.iou_xywh(np.array([0, 0, 10, 10]), np.array([5, 0, 10, 10])) == pytest.approx(50 / 150)
    model = samurai.build_architecture("samurai-tiny.yaml").train()
    pixels = torch.from_numpy(np.stack([samurai.preprocess_frame(f, 128) for f in video]))[:, None]
    box = demo.mask_xywh(masks[0])
    boxes = torch.tensor([[[box[0], box[1], box[0] + box[2], box[1] + box[3]]]] * 3, dtype=torch.float32)
    loss, parts = demo.clip_loss(model, pixels, torch.from_numpy(masks[:, None].astype(np.float32)), boxes, 1.0)
    loss.backward()
    assert (
        torch.isfinite(loss) and set(parts) == {"mask", "iou", "obj", "box", "prompt_as_tracker"} and parts["box"] > 0
    )
    assert model.mask_decoder.training  # `_heads(as_tracker=True)` put the decoder back in train mode
    grads = [p.grad for p in model.memory_attention.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)  # the tracked frames train the memory path


def test_the_prompt_frame_is_trained_on_the_mask_the_tracker_takes():
    """A box prompt's single mask is replaced at run time by the best multimask token when it is unstable (the
    decoder in eval mode); train mode never does that, so the training script also scores the eval-mode mask."""
    from workflow_scripts.training import samurai_demo as demo

    model = samurai.build_architecture("samurai-tiny.yaml").train()
    dec = model.mask_decoder
    pix, high = torch.randn(2, 128, 8, 8), [torch.randn(2, 16, 32, 32), torch.randn(2, 32, 16, 16)]
    box = torch.tensor([[[[10.0, 10.0], [60.0, 70.0]]]]).repeat(2, 1, 1, 1)
    labels = torch.tensor([2, 3], dtype=torch.int32).repeat(2, 1, 1)
    train_low = demo._heads(model, high, pix, box, labels, False)[0]
    tracker_low = demo._heads(model, high, pix, box, labels, False, as_tracker=True)[0]
    assert dec.training
    with torch.no_grad():
        dec.eval()
        want = demo._heads(model, high, pix, box, labels, False)[0]
        stable = dec._get_stability_scores(train_low[:, :1].detach()) >= dec.dynamic_multimask_stability_thresh
    assert torch.equal(tracker_low.detach(), want)
    assert not stable.all() and not torch.equal(tracker_low, train_low)  # random weights: token 0 is unstable


def test_demo_checkpoint_tracks_far_better_than_its_random_initialisation():
    from pathlib import Path

    from workflow_scripts.training import samurai_demo as demo

    trained = samurai.load_torch(Path(__file__).resolve().parents[1] / "weights" / "samurai-demo.pt")
    rng = np.random.default_rng(8)  # neither the training nor the validation clips of its record
    clips = [demo.make_clip(rng, 6, 128) for _ in range(3)]
    got = demo.evaluate(trained, clips)["auc"]
    random = demo.evaluate(samurai.build_architecture("samurai-tiny.yaml"), clips)["auc"]
    assert got > random + 0.2, (got, random)


def test_mask_boxes_on_the_device_equal_mask_box_on_the_host():
    rng = np.random.default_rng(3)
    masks = rng.random((6, 40, 52)) > 0.97
    masks[1] = False  # empty → [0, 0, 0, 0]
    masks[2] = False
    masks[2, 0, 0] = True  # one pixel in the corner: also [0, 0, 0, 0], but found
    masks[3, 5:9, 30:51] = True
    got = samurai.mask_boxes(torch.from_numpy(masks)).tolist()
    assert got == [samurai.mask_box(m) for m in masks]


def _track(model, frames, box, **settings) -> tuple[list, list]:
    tr = samurai.Tracker(model, settings)
    boxes, logits = [tr.start(frames[0], box)], [tr.last_logits.clone()]
    for f in frames[1:]:
        boxes.append(tr.track(f))
        logits.append(tr.last_logits.clone())
    return boxes, logits


def test_parts_replayed_from_stand_in_graphs_track_exactly_as_eager_fake_cuda():
    """The graph modes' bookkeeping (static inputs per signature, copies of the outputs, one graph per memory
    length) on the CPU: `ShapeGraphs`' stand-in re-runs each part into its static outputs where a CUDA graph
    would replay (no CUDA here), and every frame's box, score and mask logits equal the eager tracker's."""
    frames, box = clip(12)
    eager = samurai.load_torch("samurai-tiny.yaml")
    graphed = samurai.load_torch("samurai-tiny.yaml")
    parts = samurai.accelerate(graphed, "cudagraph", stand_in=True)
    want, want_logits = _track(eager, frames, box)
    got, got_logits = _track(graphed, frames, box)
    for t, (a, b) in enumerate(zip(want_logits, got_logits)):
        assert torch.equal(a, b), f"frame {t}"
    assert [np.asarray(w[0] if isinstance(w, tuple) else w).tolist() for w in want] == [
        np.asarray(g[0] if isinstance(g, tuple) else g).tolist() for g in got
    ]
    record = samurai.parts_record(graphed)
    assert record["mode"] == "cudagraph" and set(record["parts"]) == set(samurai.PARTS)
    assert record["parts"]["image_encoder"]["graphs"] == 1  # one frame size
    assert record["parts"]["memory_attention"]["graphs"] > 1  # the memory bank grows over the first frames
    assert all(p["eager_because"] is None for p in record["parts"].values())
    assert parts["fns"]["heads"].graphs  # the tracked frames' heads went through their graph
    with pytest.raises(PlanforgeError, match="already run as cudagraph"):
        samurai.accelerate(graphed, "compile-graph", stand_in=True)


def test_a_torch_runner_hands_the_tracker_its_module_and_mode_as_typed_facts():
    from workflow_scripts.pipeline import make_runner

    runner = make_runner("torch", "samurai-tiny.yaml", "samurai", "bf16", "cpu", 1)
    facts = runner.facts()
    assert facts is runner.facts()  # one object per runner: what a family builds on it is built once
    assert (facts.backend, facts.precision.name, facts.mode, facts.dtype) == ("torch", "bf16", "eager", torch.bfloat16)
    assert facts.precision is runner.precision and runner.precision.torch_dtype == "bfloat16"  # parsed once
    assert facts.module is runner.model and facts.open_parts is None
    tr = samurai.tracker(facts)
    assert tr.model is runner.model and tr.dtype == torch.bfloat16 and samurai.input_size(facts) == 128


def test_compiled_parts_track_as_eager_and_graph_modes_refuse_a_cpu_model():
    """torch.compile of the fixed-shape parts (dynamo's `eager` backend here: the same traced graphs without
    inductor's code generation, which would take minutes on 2 CPU cores)."""
    frames, box = clip(6)
    eager = samurai.load_torch("samurai-tiny.yaml")
    compiled = samurai.load_torch("samurai-tiny.yaml")
    tr = samurai.tracker(RunnerFacts("torch-compile", module=compiled, mode="compile", compile_backend="eager"))
    assert samurai.parts_record(compiled)["parts"]["image_encoder"]["compiled"]
    want, _ = _track(eager, frames, box)
    tr.close()
    got, _ = _track(compiled, frames, box)
    np.testing.assert_allclose(np.asarray([np.asarray(g[0] if isinstance(g, tuple) else g) for g in got]),
                               np.asarray([np.asarray(w[0] if isinstance(w, tuple) else w) for w in want]), atol=1e-3)  # fmt: skip
    with pytest.raises(PlanforgeError, match="needs the model on a CUDA device"):
        samurai.tracker(
            RunnerFacts("torch-cudagraph", module=samurai.load_torch("samurai-tiny.yaml"), mode="cudagraph")
        )
    with pytest.raises(PlanforgeError, match="is not built for it"):
        samurai.tracker(RunnerFacts("tensorrt", module=eager, mode="tensorrt"))
    with pytest.raises(
        PlanforgeError, match="samurai on openvino: the tracker runs a torch module or the ONNX Runtime"
    ):
        samurai.tracker(RunnerFacts("openvino", onnx=Path("fp32.onnx")))  # a runner that opens no parts


@pytest.mark.parametrize("batch_parts", [False, True], ids=["encoder-batched", "all-parts-batched"])
def test_track_many_encodes_the_frames_of_several_sequences_in_one_batch_and_tracks_as_each_alone(tiny, batch_parts):
    clips = [clip(8, seed=s) for s in range(3)]
    alone = []
    for frames, box in clips:
        tr = samurai.tracker(tiny)
        tr.start(frames[0], box)
        alone.append([tr.track(f) for f in frames[1:]])
    trackers = [samurai.tracker(tiny) for _ in clips]
    for tr, (frames, box) in zip(trackers, clips):
        tr.start(frames[0], box)
    calls = []
    encode = tiny.get_image_features
    tiny.get_image_features = lambda px, **kw: calls.append(px.shape[0]) or encode(px, **kw)
    try:
        tiny.__dict__.pop("planforge_batched_calls", None)
        together = [samurai.track_many(trackers, [frames[t] for frames, _ in clips], batch_parts) for t in range(1, 8)]
    finally:
        del tiny.get_image_features
    assert calls == [3] * 7  # one batch of three frames per step, no per-sequence encoding
    batched = samurai.parts_record(tiny).get("batched_part_calls")
    # the three sequences move in step: each of memory attention, heads and memory encoder ran once per frame for all
    assert batched == ({"3": 3 * 7} if batch_parts else None)
    for s in range(3):
        for t in range(7):
            (box_a, score_a), (box_b, score_b) = alone[s][t], together[t][s]
            np.testing.assert_allclose(box_b, box_a, atol=1.0)  # a batched GEMM may round differently
            assert abs(score_a - score_b) < 1e-3
    bad = np.zeros((10, 10, 3), np.uint8)
    before = [t.frame_idx for t in trackers]
    with pytest.raises(PlanforgeError, match="but this sequence is 96x120"):
        samurai.track_many(trackers, [clips[0][0][1], clips[1][0][1], bad])
    assert [t.frame_idx for t in trackers] == before  # checked before any sequence was stepped


def test_a_part_failing_in_a_batched_step_raises_in_the_caller_and_leaves_the_hooks_as_they_were():
    model = samurai.load_torch("samurai-tiny.yaml")
    clips = [clip(3, seed=s) for s in range(2)]
    trackers = [samurai.tracker(model) for _ in clips]
    for tr, (frames, box) in zip(trackers, clips):
        tr.start(frames[0], box)

    def broken(**kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    model._encode_new_memory = broken  # the hook the Rendezvous wraps for the memory encoder
    with pytest.raises(RuntimeError, match="simulated"):
        samurai.track_many(trackers, [frames[1] for frames, _ in clips], batch_parts=True)
    assert model._encode_new_memory is broken  # restored, not left pointing at the rendezvous
    del model._encode_new_memory
    assert "_tracked_heads" not in model.__dict__ and "forward" not in model.memory_attention.__dict__
