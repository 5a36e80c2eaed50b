"""Compile and CUDA-graph modes of the per-frame parts (`accelerate`), and the record of how they run
(`parts_record`)."""

from __future__ import annotations

from workflow_scripts.core.io import PlanforgeError

TRACKER_MODES = ("eager", "cudagraph", "compile", "compile-graph")  # the torch runner modes the tracker runs
PARTS = ("image_encoder", "memory_attention", "heads", "memory_encoder")  # what a frame runs, heaviest first
COMPILED_PARTS = PARTS  # the memory attention with a dynamic memory length (it grows over the first frames)


def accelerate(
    model,
    mode: str,
    inductor_options: dict | None = None,
    compile_backend: str = "inductor",
    compile_mode: str | None = None,
    stand_in: bool = False,
) -> dict:
    """Run the model's per-frame parts compiled and / or from CUDA graphs (once per model; every tracker of the
    model shares them, as the runner's one module is shared by all live sequences).

    The four parts (`PARTS`) are what a tracked frame spends its kernels on: the image encoder (Hiera, FPN and
    the decoder's high-res projections), the memory attention over the selected memories and object pointers,
    the heads (prompt encoder, mask decoder, candidate masks at model size and their boxes) and the memory
    encoder. Between them the session's bookkeeping and SAMURAI's Kalman choice stay eager, in Python.
    - `cudagraph`: each part replayed from a CUDA graph per input signature (`core.cudagraphs.ShapeGraphs`);
      the memory attention gets one graph per memory length (it grows over the first frames of a sequence).
    - `compile`: the parts compiled by torch.compile (`compile_backend`, `compile_mode`) and run as compiled;
      the memory attention with a dynamic memory length (one compile, not one per length).
    - `compile-graph`: inductor's kernels of the parts (`inductor_options`), each in CUDA graphs.
    `stand_in`: CPU tests only — `ShapeGraphs` re-runs instead of replaying (there is no CUDA here).
    """
    import torch

    from workflow_scripts.core.cudagraphs import ShapeGraphs, graph_pool

    done = getattr(model, "planforge_parts", None)
    if done is not None:
        if done["mode"] != mode:
            raise PlanforgeError(f"samurai: this model's parts already run as {done['mode']}, not {mode}")
        return done
    if mode not in TRACKER_MODES[1:]:
        raise PlanforgeError(f"samurai: tracker mode {mode!r} is not one of {list(TRACKER_MODES)}")
    graphed = mode in ("cudagraph", "compile-graph")
    if graphed and not stand_in and next(model.parameters()).device.type != "cuda":
        raise PlanforgeError(f"samurai: {mode} needs the model on a CUDA device (it is on the CPU)")
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoVisionEncoderOutput

    image_features = model.get_image_features

    def image_encoder(pixel_values):
        out = image_features(pixel_values, return_dict=True)
        return tuple(out.fpn_hidden_states), tuple(out.fpn_position_encoding)

    fns = {
        "image_encoder": image_encoder,
        "memory_attention": model.memory_attention.forward,
        "heads": model._tracked_heads,
        "memory_encoder": model._encode_new_memory,
    }
    eager = dict(fns)
    compiled: set[str] = set()
    if mode in ("compile", "compile-graph"):
        for name in COMPILED_PARTS:
            dynamic = name == "memory_attention"  # one compile for every memory length, not one per length
            if mode == "compile-graph":
                fns[name] = torch.compile(fns[name], backend="inductor", options=inductor_options, dynamic=dynamic)
            else:
                fns[name] = torch.compile(fns[name], backend=compile_backend, mode=compile_mode, dynamic=dynamic)
            compiled.add(name)
            if not graphed:  # reduce-overhead keeps its outputs in its own graphs' pool: the session keeps copies
                fns[name] = _cloning(fns[name])
    if graphed:
        pool = graph_pool(stand_in)
        fns = {
            k: ShapeGraphs(f, k, pool, compiled=k in compiled, stand_in=stand_in, fallback=eager[k])
            for k, f in fns.items()
        }
    run_image = fns["image_encoder"]

    def get_image_features(pixel_values, **kwargs):
        feats, pos = run_image(pixel_values)
        return Sam2VideoVisionEncoderOutput(fpn_hidden_states=list(feats), fpn_position_encoding=list(pos))

    model.get_image_features = get_image_features
    model.memory_attention.forward = fns["memory_attention"]
    model._tracked_heads = fns["heads"]
    model._encode_new_memory = fns["memory_encoder"]
    model.planforge_parts = {"mode": mode, "fns": fns, "compiled": sorted(compiled)}
    return model.planforge_parts


def _cloning(fn):
    from torch.utils._pytree import tree_map

    def call(*args, **kwargs):
        return tree_map(lambda t: t.clone() if hasattr(t, "clone") else t, fn(*args, **kwargs))

    return call


def parts_record(model) -> dict:
    """How the model's per-frame parts run (the bench JSON's `tracker`): eager, compiled, graphs captured."""
    done = getattr(model, "planforge_parts", None)
    batched = getattr(model, "planforge_batched_calls", None)  # track_many: part calls per batch size
    extra = {"batched_part_calls": {str(k): v for k, v in sorted(batched.items())}} if batched else {}
    if done is None:
        return {"mode": "eager", **extra}
    if "record" in done:  # the ONNX Runtime tracker (`ort_model`)
        return done["record"]
    parts = {}
    for name in PARTS:
        fn = done["fns"][name]
        info = fn.describe() if hasattr(fn, "describe") else {}
        parts[name] = {"compiled": name in done["compiled"], **info}
    return {"mode": done["mode"], "parts": parts, **extra}
