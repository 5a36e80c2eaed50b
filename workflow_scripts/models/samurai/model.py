"""`SamuraiVideoModel`: transformers' `Sam2VideoModel` with SAMURAI's mask and memory selection on tracked frames."""

from __future__ import annotations

import numpy as np

from workflow_scripts.models.samurai.motion import SamuraiState, mask_boxes, select_candidate, select_memory_frames

NO_OBJ_SCORE = -1024.0  # transformers' and upstream's logit for "no object" masks

_MODEL_CLASS: list = []


def model_class():
    """`SamuraiVideoModel`, defined on first use so that importing this module does not import torch."""
    if not _MODEL_CLASS:
        _MODEL_CLASS.append(_make_model_class())
    return _MODEL_CLASS[0]


def _make_model_class():
    import torch
    import torch.nn.functional as F
    from transformers import Sam2VideoModel

    class SamuraiVideoModel(Sam2VideoModel):
        """`Sam2VideoModel` whose tracked frames use SAMURAI's mask and memory selection when the session
        carries a `SamuraiState` (`session.samurai`); without one it is exactly `Sam2VideoModel`."""

        def _run_single_frame_inference(
            self,
            inference_session,
            frame_idx,
            obj_idx,
            batch_size,
            is_init_cond_frame,
            point_inputs,
            mask_inputs,
            reverse,
            prev_sam_mask_logits=None,
            streaming=False,
        ):
            st = getattr(inference_session, "samurai", None)
            plain = (
                st is None
                or is_init_cond_frame
                or point_inputs is not None
                or mask_inputs is not None
                or prev_sam_mask_logits is not None
                or batch_size != 1
                or not self._use_multimask(False, None)
            )
            if plain:
                return super()._run_single_frame_inference(
                    inference_session,
                    frame_idx,
                    obj_idx,
                    batch_size,
                    is_init_cond_frame,
                    point_inputs,
                    mask_inputs,
                    reverse,
                    prev_sam_mask_logits,
                    streaming,
                )
            feats, pos = self._prepare_vision_features(inference_session, frame_idx, batch_size)
            high_res = [
                x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)
                for x, s in zip(feats[:-1], self.backbone_feature_sizes[:-1])
            ]
            pix_feat = self._prepare_memory_conditioned_features(
                inference_session=inference_session,
                frame_idx=frame_idx,
                obj_idx=obj_idx,
                is_initial_conditioning_frame=False,
                current_vision_features=feats[-1],
                current_vision_positional_embeddings=pos[-1],
                num_total_frames=inference_session.num_frames,
                track_in_reverse_time=reverse,
                streaming=streaming,
            )
            return self._samurai_heads(st, obj_idx, high_res + [pix_feat])

        def _samurai_heads(self, st: SamuraiState, obj_idx: int, image_embeddings: list) -> dict:
            """`_single_frame_forward` of a tracked frame (no prompt, multimask) with SAMURAI's choice of mask."""
            emb = image_embeddings[-1]
            low_multi, iou_scores, tokens, obj_logits, high_multi, boxes = self._tracked_heads(
                emb, image_embeddings[0], image_embeddings[1], float(st.settings["min_obj_score_logits"])
            )
            # what the host decides with, in one transfer: the candidates' predicted IoUs, their boxes, the score
            n = iou_scores.shape[-1]
            host = torch.cat(
                [iou_scores[0, 0].float(), boxes[0].reshape(-1).float(), obj_logits.reshape(-1)[:1].float()]
            )
            host = host.cpu().numpy().astype(np.float64)
            ious, obj_score = host[:n], float(host[-1])
            kf_score = None
            if st.settings["samurai"]:
                cand = [[int(v) for v in host[n + 4 * i : n + 4 * i + 4]] for i in range(n)]
                k, kf_score = select_candidate(st.object(obj_idx), ious, cand, st.settings, st.kf)
            else:
                k = int(np.argmax(ious))
            # the host's choice indexes the candidates as a Python int: no host-to-device copy (which would wait for
            # the device); the same values and shapes as transformers' argmax indexing over [batch, objects]
            token = tokens[:, :, k] if tokens.size(2) > 1 else tokens[:, :, 0]
            pointer = self.object_pointer_proj(token)
            lam = (obj_logits > st.settings["min_obj_score_logits"]).to(pointer.dtype)
            pointer = lam * pointer + (1 - lam) * self.no_object_pointer
            return {
                "pred_masks": low_multi[:, :, k],
                "object_pointer": pointer,
                "high_res_masks": high_multi[:, :, k],
                "object_score_logits": obj_logits,
                "object_score": obj_score,
                "best_iou_score": float(ious[k]),
                "kf_score": kf_score,
            }

        def _tracked_heads(self, emb, feat_s0, feat_s1, min_obj_score_logits: float):
            """The tensor work of a tracked frame's heads (one CUDA graph in the graph modes): the decoder's
            candidates, hidden when the object score is ≤ the threshold, at the model's resolution, and each
            candidate's box on the device (xyxy, `mask_box`'s convention) so that the host reads 4 numbers a mask."""
            low_multi, iou_scores, tokens, obj_logits = self._tracked_decoder(emb, feat_s0, feat_s1)
            appearing = obj_logits > min_obj_score_logits
            low_multi = torch.where(appearing[:, None, None], low_multi, NO_OBJ_SCORE)
            high_multi = (
                F.interpolate(
                    low_multi.squeeze(1).float(),
                    size=(self.image_size, self.image_size),
                    mode="bilinear",
                    align_corners=False,
                )
                .unsqueeze(1)
                .to(low_multi.dtype)
            )
            boxes = mask_boxes((high_multi[:, 0] > 0).flatten(0, 1)).view(*high_multi.shape[:1], -1, 4)
            return low_multi, iou_scores, tokens, obj_logits, high_multi, boxes  # boxes [batch, candidates, 4]

        def _tracked_decoder(self, emb, feat_s0, feat_s1):
            """Prompt encoder (no prompt) and mask decoder of a tracked frame, multimask: the candidates' low-res
            logits, predicted IoUs, output tokens and the object score logit (the part an ONNX graph replaces)."""
            batch = emb.shape[0]
            pe = self.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
            points = torch.zeros(batch, 1, 1, 2, dtype=emb.dtype, device=emb.device)
            labels = -torch.ones(batch, 1, 1, dtype=torch.int32, device=emb.device)
            sparse, dense = self.prompt_encoder(
                input_points=points, input_labels=labels, input_boxes=None, input_masks=None
            )
            return self.mask_decoder(
                image_embeddings=emb,
                image_positional_embeddings=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
                high_resolution_features=[feat_s0, feat_s1],
            )

        def _gather_memory_frame_outputs(self, inference_session, obj_idx, frame_idx, track_in_reverse_time=False):
            st = getattr(inference_session, "samurai", None)
            if st is None or not st.settings["memory_filter"] or track_in_reverse_time:
                return super()._gather_memory_frame_outputs(
                    inference_session, obj_idx, frame_idx, track_in_reverse_time
                )
            outputs = inference_session.output_dict_per_obj[obj_idx]
            cond = outputs["cond_frame_outputs"]
            if not cond:
                raise ValueError(
                    "maskmem_features in conditioning outputs cannot be empty when not is_initial_conditioning_frame"
                )
            selected, unselected = self._select_closest_cond_frames(frame_idx, cond, self.config.max_cond_frame_num)
            picked = [(0, out) for out in selected.values()]
            non_cond = outputs["non_cond_frame_outputs"]
            frames = select_memory_frames(non_cond, frame_idx, st.first_frame, st.settings, self.num_maskmem)
            # oldest first, as upstream's t_pos 1 … num_maskmem − 1; the newest selected frame has offset 1
            for i, idx in enumerate(frames):
                picked.append((len(frames) - i, non_cond.get(idx, unselected.get(idx))))
            return picked

    return SamuraiVideoModel
