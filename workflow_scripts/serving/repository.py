"""artifacts/triton/{target}/: a Triton model repository built from the pipeline's artifacts.

Each model is written by the served-model class of its family's task (`served.py`, named by
`tasks.TaskSpec.served.model`): a detection model as an ensemble of pre, inference and post models, a vla model as one
python-backend model with dynamic batching, a tracking model as one stateful model behind the sequence batcher.
`planforge.json` indexes what each model became (the entry its class returns), with the serving settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workflow_scripts.core.io import atomic_dir, run_cli, write_json
from workflow_scripts.models import FAMILIES
from workflow_scripts.plan.settings import TritonRepositorySettings
from workflow_scripts.serving.served import served_model


def build_repository(
    out: Path,
    target: str,
    device: str,
    threads: int | None,
    models: dict[str, dict],
    serving: dict,
    accuracy: dict,
) -> dict:
    """Write the repository for one target: each model's entry by its task's served-model class (`served_model`).

    `models[name]` is what that class reads (detection: family, imgsz, `onnx` {precision: path} and optionally
    `engines` {precision: {"path", "max_batch"}}; vla, tracking: family, checkpoint, …).
    """
    gpu = device.startswith("cuda")
    index: dict = {"target": target, "device": device, "threads": threads, "models": {}}
    with atomic_dir(out) as tmp:
        for name, m in models.items():
            served = served_model(FAMILIES[m["family"]].task)
            index["models"][name] = served.write(tmp, name, m, gpu, threads, serving, accuracy)
        index["serving"] = serving
        write_json(tmp / "planforge.json", index)
    return index


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--models", required=True, help='JSON: {model: {"family", "imgsz", "onnx": {precision: path}}}')
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.TritonRepositorySettings")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    s = TritonRepositorySettings.from_json(a.settings)
    index = build_repository(a.out, a.target, s.device, s.threads, json.loads(a.models), s.serving, s.accuracy)
    print(f"{a.out}: {', '.join(index['models'])}")


if __name__ == "__main__":
    run_cli(main)
