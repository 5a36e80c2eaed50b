"""Several live sequences of one model stepped together: `track_many` encodes their frames in one image-encoder batch
and (`Rendezvous`) runs each later per-frame part once for every sequence that reached it, each sequence's
session code in its own thread."""

from __future__ import annotations

import numpy as np

from workflow_scripts.models.samurai.session import Tracker

# How the per-frame parts a `Rendezvous` batches take a batch: the batch dimension of each tensor argument (by
# name) and of each output (by position). Arguments not named are plain values: calls batch together only when
# those, and every tensor's other dimensions, are equal.
BATCH_DIMS = {
    "memory_attention": (
        {
            "current_vision_features": 1,
            "current_vision_position_embeddings": 1,
            "memory": 1,
            "memory_posision_embeddings": 1,
        },
        (1,),  # [1, batch, HW, C]
    ),
    "heads": ({"emb": 0, "feat_s0": 0, "feat_s1": 0}, (0, 0, 0, 0, 0, 0)),
    "memory_encoder": (
        {"current_vision_feats": 1, "pred_masks_high_res": 0, "object_score_logits": 0},
        (1, 1),  # [HW, batch, C]
    ),
}
_HOOKS = {  # part → (object attribute holding it, argument names in call order)
    "memory_attention": (("memory_attention", "forward"), None),
    "heads": (("", "_tracked_heads"), ("emb", "feat_s0", "feat_s1", "min_obj_score_logits")),
    "memory_encoder": (("", "_encode_new_memory"), None),
}


class _Slot:
    def __init__(self, part: str, kwargs: dict) -> None:
        self.part, self.kwargs = part, kwargs
        self.done, self.result, self.error = False, None, None


class Rendezvous:
    """Steps several live sequences of one model in lockstep threads and runs each per-frame part once for all of
    them: every sequence's thread runs transformers' session code as it always does, and a part's call waits until
    each still-running thread has reached a part; then the waiting calls are grouped (same part, same shapes but
    the batch dimension, same plain arguments), each group runs as one batch (`BATCH_DIMS`) and every thread gets
    its slice. The memory attention of 8 sequences at 1024 px is one attention over 8 query batches instead of 8
    launches of 32 query tiles each. Used by `track_many`; the hooks are the model's own (eager, compiled or
    graphed) and are restored when the step ends."""

    def __init__(self, model, threads: int) -> None:
        import threading

        self.model, self.active = model, threads
        self.cv = threading.Condition()
        self.pending: list[_Slot] = []
        self.batches: list[int] = []  # sizes of the batches run (the record of what was batched)
        self.fns = {}
        for part, ((attr, name), _) in _HOOKS.items():
            owner = getattr(model, attr) if attr else model
            self.fns[part] = (owner, name, getattr(owner, name), name in owner.__dict__)

    def __enter__(self) -> Rendezvous:
        for part, (owner, name, _, _) in self.fns.items():
            setattr(owner, name, self._hook(part))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, fn, own in self.fns.values():
            if own:
                setattr(owner, name, fn)
            else:
                del owner.__dict__[name]

    def _hook(self, part: str):
        names = _HOOKS[part][1]

        def call(*args, **kwargs):
            if args:
                kwargs = {**dict(zip(names, args)), **kwargs}
            slot = _Slot(part, kwargs)
            with self.cv:
                self.pending.append(slot)
                self._run_if_all_waiting()
                while not slot.done:
                    self.cv.wait()
            if slot.error is not None:
                raise slot.error
            return slot.result

        return call

    def leave(self) -> None:
        """A sequence's step ended (or failed): the others no longer wait for it."""
        with self.cv:
            self.active -= 1
            self._run_if_all_waiting()

    def _key(self, slot: _Slot) -> tuple:
        dims = BATCH_DIMS[slot.part][0]
        key = [slot.part]
        for k, v in sorted(slot.kwargs.items()):
            if k in dims:
                shape = list(v.shape)
                shape[dims[k]] = -1
                key.append((k, tuple(shape), v.dtype))
            else:
                key.append((k, repr(v)))
        return tuple(key)

    def _run_if_all_waiting(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        import torch

        groups: dict[tuple, list[_Slot]] = {}
        for slot in self.pending:
            groups.setdefault(self._key(slot), []).append(slot)
        self.pending = []
        for slots in groups.values():
            part = slots[0].part
            dims, out_dims = BATCH_DIMS[part]
            owner, name, fn, _ = self.fns[part]
            try:
                if len(slots) == 1:
                    outs = [fn(**slots[0].kwargs)]
                else:
                    kwargs = {
                        k: torch.cat([s.kwargs[k] for s in slots], dim=dims[k]) if k in dims else v
                        for k, v in slots[0].kwargs.items()
                    }
                    out = fn(**kwargs)
                    single = not isinstance(out, tuple)
                    parts = (out,) if single else out
                    split = [o.split(1, dim=d) for o, d in zip(parts, out_dims)]
                    outs = [x[0].clone() if single else tuple(p.clone() for p in x) for x in zip(*split)]
                self.batches.append(len(slots))
                for s, o in zip(slots, outs):
                    s.result = o
            except Exception as exc:  # noqa: BLE001 - every sequence of the group gets the error
                for s in slots:
                    s.error = exc
            for s in slots:
                s.done = True
        self.cv.notify_all()


def track_many(
    trackers: list[Tracker], frames: list[np.ndarray], batch_parts: bool | None = None
) -> list[tuple[np.ndarray, float]]:
    """The next frame of each of several live sequences of one model, batched: the image encoder runs once on all
    the frames, and (`batch_parts`) the memory attention, heads and memory encoder once per group of sequences at
    the same point (`Rendezvous`: each sequence's step in its own thread, its Kalman choice its own); the result is
    what `Tracker.track` of each gives, up to the rounding of batched kernels. `batch_parts` None: on CUDA only (a
    GPU runs one batch faster than several small launches; on 2 CPU cores the threads cost more than they save:
    1.26 s vs 1.07 s for 4 sequences × 11 frames of samurai-demo). Sequences of different models or frame sizes,
    and the ONNX Runtime tracker (its graphs take one sequence), are stepped one by one after the batched image
    encoder. A bad frame raises before any sequence is stepped."""
    import threading

    import torch

    for t, f in zip(trackers, frames, strict=True):
        t.check_frame(f)
    if len(trackers) < 2 or len({id(t.model) for t in trackers}) > 1 or len({f.shape for f in frames}) > 1:
        return [t.track(f) for t, f in zip(trackers, frames)]
    model = trackers[0].model
    pixels = [t.pixels(f) for t, f in zip(trackers, frames)]
    with torch.inference_mode():
        out = model.get_image_features(torch.stack(pixels), return_dict=True)
    feats, pos = out.fpn_hidden_states, out.fpn_position_encoding  # [HW, batch, C] per level
    steps = [
        (
            t,
            f,
            p,
            {"vision_feats": [x[:, i : i + 1] for x in feats], "vision_pos_embeds": [x[:, i : i + 1] for x in pos]},
        )
        for i, (t, f, p) in enumerate(zip(trackers, frames, pixels))
    ]
    if batch_parts is None:
        batch_parts = next(model.parameters()).device.type == "cuda"
    if not batch_parts or getattr(model, "planforge_parts", {}).get("mode") == "onnxruntime":
        return [t.track(f, pixels=p, features=v) for t, f, p, v in steps]
    results: list = [None] * len(steps)
    with Rendezvous(model, len(steps)) as meet:

        def step(i: int) -> None:
            t, f, p, v = steps[i]
            try:
                results[i] = t.track(f, pixels=p, features=v)
            except Exception as exc:  # noqa: BLE001 - raised below, in the caller's thread
                results[i] = exc
            finally:
                meet.leave()

        workers = [threading.Thread(target=step, args=(i,), name=f"samurai-seq{i}") for i in range(len(steps))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    counts = model.__dict__.setdefault("planforge_batched_calls", {})
    for size in meet.batches:
        counts[size] = counts.get(size, 0) + 1
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results
