"""Detection through Triton: the served ensemble's sweep, its served mAP and its summary lines.

- `DetectionSweep`: the task's part of the perf_analyzer sweep (`perf.run_sweep`): one real validation image per
  request to the ensemble (preprocess → model → postprocess), dynamic batching on and off, and the bare inference
  model at concurrency 1, beside ONNX Runtime in this process on the repository's own model.onnx;
- `served_accuracy`: every val image through the `{model}_eval` ensemble (the COCO evaluation thresholds), scored by
  the same loop and evaluator as the in-process backends (`tasks.detection.coco_detections`,
  `metrics.coco_evaluate`); it must match the in-process ONNX Runtime mAP50-95 within `serving_accuracy`'s
  `map_tolerance`;
- `summary_lines`: what the summary says of one served detection model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.data import load_split, read_image
from workflow_scripts.core.io import PlanforgeError, read_json
from workflow_scripts.core.metrics import coco_evaluate, latency_stats
from workflow_scripts.models import get_family, raw_outputs
from workflow_scripts.pipeline import make_runner
from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.perf import Load, TaskSweep, batching_gain_lines, compare_batching
from workflow_scripts.serving.python_models import unpack_detections
from workflow_scripts.serving.served import AccuracyJob, Checked, triton_models_of
from workflow_scripts.serving.server import TritonServer, fresh_log, serve
from workflow_scripts.tasks.detection import category_map, coco_detections


def write_image_input(image, path: Path) -> str:
    """perf_analyzer --input-data JSON holding one real image; returns the --shape argument."""
    path.write_text(
        json.dumps({"data": [{"IMAGE": {"content": image.reshape(-1).tolist(), "shape": list(image.shape)}}]})
    )
    return f"IMAGE:{image.shape[0]},{image.shape[1]},3"


def in_process_reference(repository: Path, index: dict, model: str, image, iterations: int) -> dict:
    """ONNX Runtime in this process on the repository's own model.onnx, timed right before the sweep.

    The same machine state as the served numbers, so their ratio is the serving overhead (on a shared
    machine a bench JSON from another hour is not comparable). Model only, and pre+model+post on the
    request's image, with the family's functions and the target's thread count.
    """
    entry = index["models"][model]
    precision, infer_model = next(iter(entry["inference_models"].items()))
    fam = get_family(entry["family"])
    runner = make_runner(
        "onnxruntime",
        repository / infer_model / "1" / "model.onnx",
        entry["family"],
        precision,
        "cpu",
        index.get("threads"),
    )
    conf = index["serving"]["conf"]
    inputs, metas = fam.preprocess([image], entry["imgsz"])
    prepared = runner.prepare(inputs)

    def pipeline():
        x, m = fam.preprocess([image], entry["imgsz"])
        fam.postprocess(raw_outputs(fam, runner(x)), m, conf=conf)

    for _ in range(5):
        pipeline()
    model_times, pipe_times = [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        runner.infer(prepared)
        model_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pipeline()
        pipe_times.append(time.perf_counter() - t0)
    return {
        "model_ms": latency_stats(model_times),
        "pipeline_ms": latency_stats(pipe_times),
        "iterations": iterations,
        "runner": runner.versions(),
        "threads": index.get("threads"),
    }


class DetectionSweep(TaskSweep):
    """The ensemble with a real val image per request; first, per protocol, the bare inference model (random input,
    concurrency 1), to compare with ONNX Runtime in process."""

    timer = (
        "perf_analyzer end to end per request: client send → server (queue, pre, model, post) → client "
        "receive; batch 1 per request, `concurrency` requests in flight"
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ensemble = self.entry["ensembles"]["serve"]["name"]
        self.infer_model = next(iter(self.entry["inference_models"].values()))
        split = load_split(self.dataset, "val")
        self.image = read_image(split.image_path(split.images[0]))
        self.model_only: list[dict] = []

    def head(self) -> dict:
        return {
            "model": self.model,
            "target": self.target,
            "ensemble": self.ensemble,
            "inference_model": self.infer_model,
        }

    def reference(self) -> dict:
        return in_process_reference(self.repository, self.index, self.model, self.image, min(self.s.requests, 200))

    def load(self, tmp: Path) -> Load:
        shape = write_image_input(self.image, tmp / "image.json")
        return Load(self.ensemble, str(tmp / "image.json"), shape)

    def inputs(self) -> dict:
        return {"image_shape": list(self.image.shape)}

    def before_levels(self, measure, batching: str, protocol: str) -> None:
        if batching == "on":
            r = measure(Load(self.infer_model, "random"), 1)
            self.model_only.append({"model": self.infer_model, "protocol": protocol, **r})

    def tail(self) -> dict:
        return {"model_only": self.model_only}

    def comparison(self, rows: list[dict], reference: dict) -> dict:
        bench = read_json(self.bench_b1) if self.bench_b1 else None
        return compare(rows, self.model_only, reference, bench, max(self.s.concurrency))


def compare(rows: list[dict], model_only: list[dict], reference: dict, bench: dict | None, top: int) -> dict:
    """Serving overhead vs in-process ORT (same job; and the bench JSON), and what batching buys at the top concurrency."""
    out: dict = {
        "batching_gain_at_max_concurrency": compare_batching(rows, top),
        "overhead_vs_in_process": {},
        "overhead_vs_bench": {},
    }
    sources = [("overhead_vs_in_process", reference["model_ms"]["p50"], reference["pipeline_ms"]["p50"], None)]
    if bench:
        sources.append(
            (
                "overhead_vs_bench",
                bench["latency_ms"]["p50"],
                bench["latency_ms"]["p50"] + bench["preprocess_ms"]["p50"] + bench["postprocess_ms"]["p50"],
                bench.get("environment", {}).get("timestamp"),
            )
        )
    for key, ort_model, ort_pipeline, when in sources:
        for m in model_only:
            c1 = next(
                (r for r in rows if r["protocol"] == m["protocol"] and r["batching"] == "on" and r["concurrency"] == 1),
                None,
            )
            out[key][m["protocol"]] = {
                "in_process_ort_model_p50_ms": ort_model,
                "triton_model_p50_ms": m["latency_ms"]["p50"],
                "model_ratio": round(m["latency_ms"]["p50"] / ort_model, 3),
                "in_process_pipeline_p50_ms": round(ort_pipeline, 3),
                "triton_ensemble_p50_ms": c1["latency_ms"]["p50"] if c1 else None,
                "pipeline_ratio": round(c1["latency_ms"]["p50"] / ort_pipeline, 3) if c1 else None,
                **({"bench_timestamp": when} if when else {}),
            }
    return out


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


def served_accuracy(job: AccuracyJob) -> Checked:
    """mAP through the `_eval` ensemble, against the in-process ONNX Runtime accuracy JSON where the job has one."""
    s = job.settings
    record = evaluate_served(
        job.repository,
        job.model,
        job.target,
        job.dataset,
        job.checkpoint_info,
        job.server_log,
        s.batch,
        s.max_images,
        s.startup_timeout_s,
        read_json(job.reference) if job.reference else None,
        s.map_tolerance,
    )
    ref = record.get("reference")
    problem = None
    if ref and not ref["matches"]:
        problem = (
            f"mAP50-95 through the server {record['map50_95']:.4f} differs from in-process "
            f"{ref['backend']} {ref['map50_95']:.4f} by {ref['delta_map50_95']:+.4f} (tolerance {ref['tolerance']}); "
            f"the served pre/post or model differ from the in-process path"
        )
    extra = f", in-process {ref['map50_95']:.4f} (Δ {ref['delta_map50_95']:+.5f})" if ref else ""
    return Checked(record, problem, f"mAP50-95 {record['map50_95']:.4f} through {record['ensemble']}{extra}")


def summary_lines(rec: dict, acc: dict | None) -> list[str]:
    """The summary's lines on one served detection model: what dynamic batching gains, the serving overhead over
    ONNX Runtime in process, and the mAP through the server."""
    lines = batching_gain_lines(rec)
    for protocol, o in rec.get("comparison", {}).get("overhead_vs_in_process", {}).items():
        ens = o.get("triton_ensemble_p50_ms")
        ens_text = (
            f"; ensemble {ens:.2f} ms vs in-process pre+model+post {o['in_process_pipeline_p50_ms']:.2f} ms "
            f"(**{o['pipeline_ratio']:.2f}×**)"
            if ens is not None
            else ""
        )
        lines.append(
            f"- {rec['model']} {protocol} at concurrency 1: served model p50 {o['triton_model_p50_ms']:.2f} ms vs "
            f"in-process ONNX Runtime {o['in_process_ort_model_p50_ms']:.2f} ms (**{o['model_ratio']:.2f}×**)"
            f"{ens_text}."
        )
    if acc:
        ref = acc.get("reference")
        ref_text = (
            f", in-process {ref['backend']} {ref['map50_95']:.4f} (Δ {ref['delta_map50_95']:+.5f}, "
            f"{'matches' if ref['matches'] else '**DIFFERS**'} within {ref['tolerance']:g})"
            if ref
            else ""
        )
        lines.append(
            f"- {rec['model']} mAP50-95 through the server: {acc['map50_95']:.4f} on {acc['images']} images{ref_text}."
        )
    return lines
