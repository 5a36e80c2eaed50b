"""results/{target}/serving/{model}_accuracy.json: the model's accuracy through the server, against in-process.

The model's task checks it (`tasks.TaskSpec.served.accuracy`), and a served result that differs from the in-process
one beyond the task's tolerance fails the job:
- detection (`serving.detection.served_accuracy`): every val image through the `{model}_eval` ensemble (the COCO
  evaluation thresholds), scored by the same loop and evaluator as the in-process backends; mAP50-95 within the
  settings' `map_tolerance` of the in-process ONNX Runtime accuracy JSON (`--reference`);
- vla (`serving.vla.served_accuracy`, Pi0): the val episodes with their own noise through the served model vs the
  in-process torch FP32 actions of the same checkpoint; max abs error within `serving.vla.ACTION_TOLERANCE`;
- tracking (`serving.tracking.served_accuracy`, SAMURAI): the val sequences replayed through the sequence batcher,
  one correlation id each, scored by the task's OTB metrics vs `tasks.tracking.evaluate` in process; AUC within
  `serving.tracking.AUC_TOLERANCE`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, read_json, run_cli, write_json
from workflow_scripts.models import FAMILIES
from workflow_scripts.plan.settings import ServingAccuracySettings
from workflow_scripts.serving import hooks
from workflow_scripts.serving.served import AccuracyJob


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
    if a.model not in index["models"]:
        raise PlanforgeError(f"{a.repository}: has no model {a.model!r}; rerun the triton rule")
    job = AccuracyJob(
        a.repository, index, a.model, a.target, a.dataset, a.server_log, s, a.checkpoint_info, a.reference
    )  # fmt: skip
    checked = hooks.served_accuracy(FAMILIES[index["models"][a.model]["family"]].task)(job)
    checked.record["config_hash"] = s.config_hash
    if checked.problem:
        raise PlanforgeError(f"{a.out}: {checked.problem}")
    write_json(a.out, checked.record)
    print(f"{a.out}: {checked.line}")


if __name__ == "__main__":
    run_cli(main)
