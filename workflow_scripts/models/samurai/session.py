"""The Tracker session: one live sequence of one object on a loaded model (numpy frames in, xywh boxes out), its
state in a transformers inference session pruned after every frame, and the frame conversions it uses."""

from __future__ import annotations

import numpy as np

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.models import check_image
from workflow_scripts.models.samurai.build import image_size, settings_for
from workflow_scripts.models.samurai.modes import parts_record
from workflow_scripts.models.samurai.motion import SamuraiState, mask_boxes, select_memory_frames

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def frame_pixels(frame: np.ndarray, size: int, device="cpu", dtype=None):
    """HxWx3 uint8 RGB → 3xSxS tensor on `device`: resized (bilinear, antialiased as PIL's) and ImageNet-normalised
    as SAM 2's processor does; the uint8 frame is what crosses to the device."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float() / 255.0
    if x.shape[1] != size or x.shape[2] != size:
        x = F.interpolate(x[None], (size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.as_tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=x.device)[:, None, None]
    x = (x - mean) / std
    return x if dtype is None else x.to(dtype)


def preprocess_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """`frame_pixels` on the CPU, as float32 numpy (the training script and tests)."""
    return frame_pixels(frame, size).numpy()


def mask_to_frame(pred_masks, size: int, height: int, width: int) -> np.ndarray:
    """Low-res mask logits [.., h, w] → boolean HxW mask of the frame (model size, then frame size, as the processor)."""
    return frame_mask(pred_masks, size, height, width).cpu().numpy()


def frame_mask(pred_masks, size: int, height: int, width: int):
    """`mask_to_frame` on the logits' device (a boolean tensor)."""
    import torch.nn.functional as F

    m = pred_masks.reshape(1, 1, *pred_masks.shape[-2:]).float()
    m = F.interpolate(m, (size, size), mode="bilinear", align_corners=False)
    m = F.interpolate(m, (height, width), mode="bilinear", align_corners=False)
    return m[0, 0] > 0


def _xywh(box_xyxy) -> np.ndarray:
    x1, y1, x2, y2 = box_xyxy
    return np.array([x1, y1, x2 - x1 + 1, y2 - y1 + 1], np.float64)


def tensor_bytes(obj) -> int:
    """Bytes of every tensor reachable through dicts, lists and tuples."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class Tracker:
    """One live sequence of one object: `start` on the prompt frame with its box, then `track` per frame.

    The session (memories, Kalman state) belongs to this tracker; between frames it keeps the prompt frame's
    output and, of the tracked frames, only those a later frame can still read — the last
    `max_object_pointers − 1` (object pointers, and plain SAM 2's memories) and the newest `num_maskmem − 1`
    that qualify for SAMURAI's memory — without their masks, and no pixels or image features.
    """

    OBJ_ID = 1

    def __init__(self, model, settings: dict | None = None) -> None:
        self.model = model
        self.settings = settings_for(model, settings)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.size = image_size(model)
        self.session = None
        self.frame_idx = -1
        self.last_box = np.zeros(4)
        self.frame_shape: tuple[int, int] = (0, 0)
        self.last_logits = None  # the last frame's low-res mask logits (torch, on the model's device)
        self._mask = None  # its boolean HxW mask on the device (`last_mask` copies it to the host when read)

    @property
    def last_mask(self) -> np.ndarray | None:
        """The last frame's boolean HxW mask (numpy)."""
        return None if self._mask is None else self._mask.cpu().numpy()

    def _read_frame_result(self, pred_masks, score=None) -> tuple[np.ndarray, bool, float | None]:
        """The frame's mask (kept on the device), its xyxy box, whether it is empty, and the score: one host copy."""
        import torch

        self._mask = frame_mask(pred_masks, self.size, *self.frame_shape)
        self.last_logits = pred_masks
        parts = [mask_boxes(self._mask[None])[0].float(), self._mask.any().reshape(1).float()]
        if score is not None:
            parts.append(score.reshape(-1)[:1].float())
        host = torch.cat(parts).cpu().numpy()
        return host[:4].astype(np.int64), bool(host[4]), (float(host[5]) if score is not None else None)

    @property
    def frames_held(self) -> int:
        if self.session is None:
            return 0
        return sum(
            len(o["cond_frame_outputs"]) + len(o["non_cond_frame_outputs"])
            for o in self.session.output_dict_per_obj.values()
        )

    def state_bytes(self) -> int:
        s = self.session
        if s is None:
            return 0
        return tensor_bytes(
            [
                s.output_dict_per_obj,
                s.processed_frames or {},
                s.cache._vision_features,
                s.point_inputs_per_obj,
                s.mask_inputs_per_obj,
            ]
        )

    def pixels(self, frame: np.ndarray):
        """The frame as the model's input, on its device and in its dtype (`frame_pixels`)."""
        return frame_pixels(frame, self.size, self.device, self.dtype)

    def start(self, frame: np.ndarray, box_xywh) -> np.ndarray:
        """Prompt frame and the object's box (x, y, w, h pixels) → the box of the mask on that frame."""
        import torch
        from transformers import Sam2VideoInferenceSession

        check_image(frame, "frame")
        box = np.asarray(box_xywh, np.float64).reshape(-1)
        if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            raise PlanforgeError(f"box: expected (x, y, w, h) with w, h > 0; got {np.asarray(box_xywh).tolist()}")
        self.close()
        h, w = frame.shape[:2]
        self.frame_shape = (h, w)
        self.session = Sam2VideoInferenceSession(
            video_height=h,
            video_width=w,
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device=self.device,
            dtype=self.dtype,
        )
        self.session.samurai = SamuraiState(self.settings, first_frame=0)
        sx, sy = self.size / w, self.size / h
        x1, y1, x2, y2 = box[0] * sx, box[1] * sy, (box[0] + box[2]) * sx, (box[1] + box[3]) * sy
        obj_idx = self.session.obj_id_to_idx(self.OBJ_ID)
        coords = torch.tensor([[[[x1, y1], [x2, y2]]]], dtype=torch.float32)
        labels = torch.tensor([[[2, 3]]], dtype=torch.int32)
        self.session.add_point_inputs(obj_idx, 0, {"point_coords": coords, "point_labels": labels})
        self.session.obj_with_new_inputs = [self.OBJ_ID]
        self.frame_idx = 0
        out = self.model(inference_session=self.session, frame=self.pixels(frame), frame_idx=0)
        xyxy, found, _ = self._read_frame_result(out.pred_masks)
        self.last_box = _xywh(xyxy) if found else box.copy()
        self._prune()
        return self.last_box.copy()

    def check_frame(self, frame: np.ndarray) -> None:
        """One line if `frame` cannot be this sequence's next frame (no sequence, not an image, another size)."""
        if self.session is None:
            raise PlanforgeError("Tracker.track before Tracker.start: give the prompt frame and box first")
        check_image(frame, "frame")
        if frame.shape[:2] != self.frame_shape:
            raise PlanforgeError(
                f"frame: {frame.shape[0]}x{frame.shape[1]}, but this sequence is {self.frame_shape[0]}x{self.frame_shape[1]}"
            )

    def track(self, frame: np.ndarray, pixels=None, features: dict | None = None) -> tuple[np.ndarray, float]:
        """The next frame → (box xywh, object score logit). Lost (empty mask): the Kalman prediction, score ≤ 0.

        `pixels` / `features`: the frame already on the device and its image-encoder output (`track_many`
        encodes the frames of several sequences in one batch, after `check_frame` of each); the session then skips
        its own encoding, and the frame is not checked again."""
        if pixels is None:
            self.check_frame(frame)
        self.frame_idx += 1
        if features is not None:
            self.session.cache.cache_vision_features(self.frame_idx, features)
        pixels = self.pixels(frame) if pixels is None else pixels
        out = self.model(inference_session=self.session, frame=pixels, frame_idx=self.frame_idx)
        xyxy, found, score = self._read_frame_result(out.pred_masks, out.object_score_logits)
        if found:
            self.last_box = _xywh(xyxy)
        else:
            score = min(score, 0.0)
            predicted = self.session.samurai.object(0).get("predicted")
            if predicted is not None:
                h, w = self.frame_shape
                sx, sy = w / self.size, h / self.size
                x1, y1, x2, y2 = predicted
                self.last_box = np.array([x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy], np.float64)
        self._prune()
        return self.last_box.copy(), score

    def _prune(self) -> None:
        """Drop what no later frame reads: the frame's pixels and image features (the next frame computes its
        own), the outputs of frames no later frame attends to, and every kept output's masks."""
        s, t = self.session, self.frame_idx
        s.processed_frames = {}
        s.cache.clear_all()  # at 1024 px the FPN maps and their position encodings are ~100 MB
        cfg = self.model.config
        window = max(self.model.num_maskmem - 1, cfg.max_object_pointers_in_encoder - 1)
        for obj_idx, outputs in s.output_dict_per_obj.items():
            non_cond = outputs["non_cond_frame_outputs"]
            keep = {i for i in non_cond if i > t - window}
            if self.settings["memory_filter"]:
                keep |= set(
                    select_memory_frames(non_cond, t + 1, s.samurai.first_frame, self.settings, self.model.num_maskmem)
                )
            for i in list(non_cond):
                if i not in keep:
                    del non_cond[i]
                else:
                    non_cond[i].pop("high_res_masks", None)
                    non_cond[i].pop("pred_masks", None)  # only a prompt frame's masks are ever read back
            for out in outputs["cond_frame_outputs"].values():
                out.pop("high_res_masks", None)
            tracked = s.frames_tracked_per_obj[obj_idx]
            for i in list(tracked):
                if i not in keep:
                    del tracked[i]

    def describe(self) -> dict:
        """How the model's per-frame parts run (`parts_record`), and the SAMURAI settings this tracker applies."""
        return {**parts_record(self.model), "settings": dict(self.settings)}

    def close(self) -> None:
        """Drop all state of the sequence."""
        if self.session is not None:
            self.session.reset_inference_session()
            self.session.processed_frames = None
        self.session = None
        self.frame_idx = -1
        self._mask = self.last_logits = None
