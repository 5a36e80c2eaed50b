"""results/{target}/pictures/{model}/{backend}_{precision}.png: the first N val images with the boxes this
backend and precision predicts (solid, class and score) and the true boxes (dashed), in one grid: a person
sees at a glance whether, say, the INT8 model still finds the objects. Runs the backend through the same
family pre/post and runner as the accuracy step."""

from __future__ import annotations

import argparse
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, run_cli, save_figure
from workflow_scripts.models import FAMILIES, get_family
from workflow_scripts.pipeline import make_runner
from workflow_scripts.plan.settings import PictureSettings
from workflow_scripts.tasks import get_task


def draw(
    model: str,
    family: str,
    artifact: Path,
    checkpoint_info: Path,
    backend: str,
    precision: str,
    dataset: Path,
    target: str,
    s: PictureSettings,
    out: Path,
) -> dict:
    """Run the backend on the first `s.images` val images and write the task's picture of them as PNG;
    return what the picture counts (detection: true boxes found, and predictions that found none)."""
    if s.images < 1:
        raise PlanforgeError(f"{out}: pictures.images is {s.images}; a picture needs at least one image")
    fam = get_family(family)
    task = get_task(FAMILIES[family].task)
    runner = make_runner(
        backend, artifact, family, precision, s.device, s.threads, s.backend_options, target=target, gpu=s.gpu
    )
    title = f"{model} · {backend} {precision} · target {target} (predictions with score ≥ {s.conf:g})"
    fig, counts = task.picture(task.predictor(fam, runner, s), dataset, checkpoint_info, s.images, s.batch, title)
    save_figure(fig, out)
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--artifact", type=Path, required=True, help="what the backend runs (checkpoint, ONNX, engine)")
    p.add_argument("--checkpoint-info", type=Path, required=True, help="JSON with the model's class names")
    p.add_argument("--backend", required=True)
    p.add_argument("--precision", required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.PictureSettings")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    s = PictureSettings.from_json(a.settings)
    counts = draw(
        a.model, a.family, a.artifact, a.checkpoint_info, a.backend, a.precision, a.dataset, a.target, s, a.out
    )
    print(f"wrote {a.out}: {', '.join(f'{k} {v}' for k, v in counts.items())}")


if __name__ == "__main__":
    run_cli(main)
