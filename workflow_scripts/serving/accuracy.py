"""results/{target}/serving/{model}_accuracy.json: mAP of the validation split sent through the served ensemble.

Every image goes to the `{model}_eval` ensemble (the COCO evaluation thresholds) with tritonclient
over HTTP, and the detections it returns are scored by the same loop and evaluator as the
in-process backends (`tasks.detection.coco_detections`, `metrics.coco_evaluate`). The result must match
the in-process ONNX Runtime mAP50-95 to within `--tolerance`, or the job fails.

A vla model (Pi0): the val episodes with their own noise through the served model vs the in-process
torch FP32 actions of the same checkpoint (`serving.vla.evaluate_served_actions`): the action MSE and max
abs error are recorded, and a max abs error above `serving.vla.ACTION_TOLERANCE` fails the job.

A tracking model (SAMURAI): the val sequences replayed through the sequence batcher, one correlation id each,
scored by the task's OTB metrics vs `tasks.tracking.evaluate` in process on the same checkpoint
(`serving.tracking.evaluate_served_tracking`); an AUC difference above `serving.tracking.AUC_TOLERANCE` fails.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.data import load_split
from workflow_scripts.core.io import PlanforgeError, read_json, run_cli, write_json
from workflow_scripts.core.metrics import coco_evaluate
from workflow_scripts.plan.settings import ServingAccuracySettings
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.python_models import unpack_detections
from workflow_scripts.serving.repository import triton_models_of
from workflow_scripts.serving.server import TritonServer, fresh_log, serve
from workflow_scripts.tasks.detection import category_map, coco_detections


class EnsembleDetector:
    """images → per-image detections, one request per image (images differ in size), `inflight` at a time."""

    def __init__(self, server: TritonServer, ensemble: str, inflight: int = 4) -> None:
        import tritonclient.http as httpclient

        self.http = httpclient
        self.server = server
        self.ensemble = ensemble
        self.client = httpclient.InferenceServerClient(server.http_url, concurrency=inflight)

    def _request(self, image: np.ndarray):
        inp = self.http.InferInput("IMAGE", [1, *image.shape], "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(image[None], dtype=np.uint8))
        outs = [self.http.InferRequestedOutput("DETECTIONS"), self.http.InferRequestedOutput("NUM_DETECTIONS")]
        return self.client.async_infer(self.ensemble, [inp], outputs=outs)

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        pending = [self._request(im) for im in images]
        results = []
        for p in pending:
            try:
                r = p.get_result()
            except Exception as exc:  # tritonclient raises its own types; a dead server is the usual cause
                if not self.server.alive():
                    raise self.server.failure(f"tritonserver stopped while serving {self.ensemble}") from None
                raise PlanforgeError(f"{self.ensemble}: inference through the server failed ({exc})") from None
            results += unpack_detections(r.as_numpy("DETECTIONS"), r.as_numpy("NUM_DETECTIONS"))
        return results


def evaluate_served(
    repository: Path,
    model: str,
    target: str,
    dataset: Path,
    checkpoint_info: Path,
    server_log: Path,
    batch: int,
    max_images: int | None,
    startup_timeout: float,
    reference: dict | None,
    tolerance: float,
    env_dir: Path | None = None,
) -> dict:
    env = ensure(env_dir)
    index = read_json(repository / "planforge.json")
    if model not in index["models"]:
        raise PlanforgeError(f"{repository}: has no model {model!r}; rerun the triton rule")
    ens = index["models"][model]["ensembles"]["eval"]
    split = load_split(dataset, "val")
    records = split.images[:max_images] if max_images else split.images
    cats = category_map(read_json(checkpoint_info)["class_names"], split.categories, str(checkpoint_info))
    fresh_log(server_log)
    t0 = time.perf_counter()
    load = triton_models_of(index["models"][model])
    with serve(env, repository, server_log, timeout=startup_timeout, models=load) as server:
        detect = EnsembleDetector(server, ens["name"])
        detections, seconds = coco_detections(split, records, cats, detect, batch, f"mAP {model} via triton")
    stats = coco_evaluate(split.annotations, detections, [r["id"] for r in records])
    record = {
        "status": "ok",
        "model": model,
        "backend": "triton",
        "precision": next(iter(index["models"][model]["inference_models"])),
        "target": target,
        "ensemble": ens["name"],
        "images": len(records),
        "detections": len(detections),
        **stats,
        "evaluator": "pycocotools COCOeval bbox",
        "conf": ens["conf"],
        "iou": ens["iou"],
        "max_det": ens["max_det"],
        "seconds": round(seconds, 2),
        "wall_seconds_with_server_start": round(time.perf_counter() - t0, 2),
        "server": {"log": str(server_log), "environment": env.versions()},
    }
    if reference is not None:
        delta = record["map50_95"] - reference["map50_95"]
        record["reference"] = {
            "backend": reference["backend"],
            "precision": reference["precision"],
            "map50_95": reference["map50_95"],
            "delta_map50_95": round(delta, 6),
            "tolerance": tolerance,
            "matches": abs(delta) <= tolerance,
        }
        if reference.get("images") != record["images"]:
            raise PlanforgeError(
                f"the in-process reference scored {reference.get('images')} images and the server {record['images']}; "
                "use the same accuracy.max_images for both"
            )
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--checkpoint-info", type=Path, required=True)
    p.add_argument("--reference", type=Path, default=None, help="in-process ONNX Runtime accuracy JSON")
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.ServingAccuracySettings")
    p.add_argument("--server-log", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    s = ServingAccuracySettings.from_json(a.settings)
    index = read_json(a.repository / "planforge.json")
    if index["models"].get(a.model, {}).get("task") == "vla":
        return main_vla(a, s, index)
    if index["models"].get(a.model, {}).get("task") == "tracking":
        return main_tracking(a, s, index)
    record = evaluate_served(
        a.repository,
        a.model,
        a.target,
        a.dataset,
        a.checkpoint_info,
        a.server_log,
        s.batch,
        s.max_images,
        s.startup_timeout_s,
        read_json(a.reference) if a.reference else None,
        s.map_tolerance,
    )
    record["config_hash"] = s.config_hash
    ref = record.get("reference")
    if ref and not ref["matches"]:
        raise PlanforgeError(
            f"{a.out}: mAP50-95 through the server {record['map50_95']:.4f} differs from in-process "
            f"{ref['backend']} {ref['map50_95']:.4f} by {ref['delta_map50_95']:+.4f} (tolerance {ref['tolerance']}); "
            f"the served pre/post or model differ from the in-process path"
        )
    write_json(a.out, record)
    extra = f", in-process {ref['map50_95']:.4f} (Δ {ref['delta_map50_95']:+.5f})" if ref else ""
    print(f"{a.out}: mAP50-95 {record['map50_95']:.4f} through {record['ensemble']}{extra}")


def main_vla(a, s: ServingAccuracySettings, index: dict) -> None:
    from workflow_scripts.serving.vla import evaluate_served_actions

    record = evaluate_served_actions(
        a.repository, index, a.model, a.target, a.dataset, a.server_log, s.batch, s.max_images, s.startup_timeout_s
    )
    record["config_hash"] = s.config_hash
    ref = record["reference"]
    if not ref["matches"]:
        raise PlanforgeError(
            f"{a.out}: actions through the server differ from in-process torch fp32 by up to "
            f"{record['action_max_abs']:.3g} (tolerance {ref['tolerance_max_abs']:g}); the served model or its "
            "inputs differ from the in-process path"
        )
    write_json(a.out, record)
    print(
        f"{a.out}: {record['episodes']} episodes through {record['served_model']}: action MSE "
        f"{record['action_mse']:.3g}, max abs {record['action_max_abs']:.3g} vs in-process torch fp32"
    )


def main_tracking(a, s: ServingAccuracySettings, index: dict) -> None:
    from workflow_scripts.serving.tracking import evaluate_served_tracking

    record = evaluate_served_tracking(
        a.repository, index, a.model, a.target, a.dataset, a.server_log, s.max_images, s.startup_timeout_s
    )
    record["config_hash"] = s.config_hash
    ref = record["reference"]
    if not ref["matches"]:
        raise PlanforgeError(
            f"{a.out}: AUC through the server {record['auc']:.4f} differs from in-process torch fp32 "
            f"{ref['auc']:.4f} by {ref['delta_auc']:+.4f} (tolerance {ref['tolerance']:g}); the served tracker or "
            "its requests differ from the in-process path"
        )
    write_json(a.out, record)
    print(
        f"{a.out}: {record['sequences']} sequences through {record['served_model']}: AUC {record['auc']:.4f}, "
        f"in-process {ref['auc']:.4f} (Δ {ref['delta_auc']:+.5f})"
    )


if __name__ == "__main__":
    run_cli(main)
