"""Accuracy of one (model, backend, precision) on the val split, by its task's metric, gated against the
FP32 eager baseline (detection: COCO mAP50-95 with pycocotools)."""

from __future__ import annotations

import argparse
from pathlib import Path

from workflow_scripts.core.envinfo import environment
from workflow_scripts.core.io import PlanforgeError, read_json, run_cli, write_json
from workflow_scripts.core.isa import int8_record
from workflow_scripts.models import FAMILIES, get_family
from workflow_scripts.pipeline import make_runner
from workflow_scripts.plan.settings import AccuracySettings
from workflow_scripts.tasks import TASKS, gate, get_task


def evaluate(
    model: str,
    family: str,
    artifact: Path,
    checkpoint_info: Path,
    backend: str,
    precision: str,
    dataset: Path,
    target: str,
    s: AccuracySettings,
    reference: Path | None = None,
    save_outputs: Path | None = None,
) -> dict:
    """Run the backend over the val split through the family's pre/post and score it by the task's metric."""
    fam = get_family(family)
    task_name = FAMILIES[family].task
    task = get_task(task_name)
    runner = make_runner(
        backend, artifact, family, precision, s.device, s.threads, s.backend_options, target=target, gpu=s.gpu
    )
    predict = task.predictor(fam, runner, s)
    # tasks scored against the baseline's outputs (vla) read the reference and save their own outputs
    io = {k: v for k, v in (("reference", reference), ("save", save_outputs)) if v is not None}
    scored = task.evaluate(
        predict, dataset, checkpoint_info, s.batch, s.max_images, f"{model} {backend} {precision}", **io
    )
    return {
        "status": "ok",
        "model": model,
        "family": family,
        "backend": backend,
        "precision": precision,
        "target": target,
        "artifact": str(artifact),
        "metric_label": TASKS[task_name].metric_label,
        **scored,
        "conf": s.conf,
        "iou": s.iou,
        "max_det": s.max_det,
        "batch": s.batch,
        "runner": runner.versions(),
        "environment": environment(s.device),
        "config_hash": s.config_hash,
    }


def default_settings(imgsz: int, device: str = "cpu", threads: int | None = None, **overrides) -> AccuracySettings:
    """Settings with the config's defaults (config.DEFAULTS["accuracy"]), for scripts that score outside the DAG."""
    from workflow_scripts.config import DEFAULTS

    acc = {k: v for k, v in DEFAULTS["accuracy"].items() if k != "baseline"}
    base = {"device": device, "threads": threads, "backend_options": {}, "power": "none", "gpu": None}
    return AccuracySettings(**{**base, **acc, "imgsz": imgsz, **overrides})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--checkpoint-info", type=Path, required=True, help="JSON with the model's class names")
    p.add_argument("--backend", required=True)
    p.add_argument("--precision", required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--baseline", type=Path, default=None, help="the baseline's accuracy JSON (absent: this is it)")
    p.add_argument("--reference", type=Path, default=None, help="the baseline's saved outputs (vla: actions .npz)")
    p.add_argument("--save-outputs", type=Path, default=None, help="save this run's outputs here (vla: actions .npz)")
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.AccuracySettings")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    s = AccuracySettings.from_json(a.settings)
    r = evaluate(
        a.model,
        a.family,
        a.artifact,
        a.checkpoint_info,
        a.backend,
        a.precision,
        a.dataset,
        a.target,
        s,
        reference=a.reference,
        save_outputs=a.save_outputs,
    )
    r = gate(r, read_json(a.baseline) if a.baseline else None, s.gate, s.error_tolerance)
    if plan := int8_record(a.artifact):  # a QDQ model's: the INT8 plan it was made for (quantize, sensitivity)
        r["int8"] = plan
    write_json(a.out, r)
    verdict = "pass" if r["gate"]["passed"] else "FAIL"
    print(f"{a.out}: {r['metric_label']} {r[r['metric']]:.6g}, ratio {r['ratio_to_baseline']} ({verdict})")
    if s.strict and not r["gate"]["passed"]:
        a.out.unlink()
        raise PlanforgeError(
            f"{a.out}: {r['metric_label']} {r[r['metric']]:.6g} fails the gate {r['gate']} (accuracy.strict is on)"
        )


if __name__ == "__main__":
    run_cli(main)
