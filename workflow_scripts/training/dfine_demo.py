"""Train the small D-FINE of the embedded default (`dfine-demo.yaml`'s config) on the synthetic shapes.

Reproducible from its arguments: the dataset is regenerated from its seed, the model starts from
transformers' own initialisation under a fixed seed, and training is transformers' D-FINE loss
(Hungarian matching, focal/VFL, FGL and DDF terms, denoising queries) with AdamW, a linear warm-up
and a constant or cosine learning rate. The training images are resized once and kept on the
device (uint8), with random horizontal flips. Writes a `save_pretrained` directory (a checkpoint
the pipeline loads: `checkpoint: weights/dfine-demo`), the optimizer state beside it
(`<out>.optim.pt`, for `--resume`) and a JSON with the arguments, the training time, the machine,
the validation mAP from the workflow's own accuracy loop (pycocotools) at every evaluation, and
every earlier leg when the run was resumed. The checkpoint is rewritten at every evaluation, so a
run cut short still leaves its last evaluated weights.
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.data import SHAPE_CLASSES, SyntheticSpec, load_split, make_synthetic_dataset, read_image
from workflow_scripts.core.io import PlanforgeError, atomic_dir, atomic_path, read_json, run_cli, write_json
from workflow_scripts.core.metrics import coco_evaluate
from workflow_scripts.models import dfine
from workflow_scripts.tasks.detection import category_map, coco_detections


def evaluate(model, split, imgsz: int, device: str, batch: int = 8) -> dict[str, float]:
    import torch

    model.eval()
    cats = category_map(dfine.class_names(model), split.categories, "dfine-demo")

    def detect(images):
        x, metas = dfine.preprocess(images, imgsz)
        with torch.inference_mode():
            out = dfine.forward_output(model(torch.from_numpy(x).to(device)))
        return dfine.postprocess([o.float().cpu().numpy() for o in out], metas, conf=0.001, max_det=300)

    dets, _ = coco_detections(split, split.images, cats, detect, batch, "mAP dfine-demo")
    return coco_evaluate(split.annotations, dets, [r["id"] for r in split.images])


def lr_factor(step: int, elapsed: float, a: argparse.Namespace) -> float:
    """Linear warm-up over `warmup_steps`, then constant, or cosine to 5 % over the time budget."""
    warm = min(1.0, (step + 1) / a.warmup_steps) if a.warmup_steps else 1.0
    if a.schedule == "cosine":
        frac = min(1.0, elapsed / (a.time_hours * 3600))
        return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
    return warm


def train(a: argparse.Namespace) -> dict:
    import torch
    from transformers import DFineForObjectDetection

    t0 = time.perf_counter()
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rng = np.random.default_rng(a.seed)
    earlier = []
    if a.resume:
        prev = read_json(Path(a.resume).with_suffix(".json"))
        earlier = [*prev.pop("earlier_legs", []), prev]
        rng = np.random.default_rng([a.seed, len(earlier)])  # a new shuffle stream per leg
    with tempfile.TemporaryDirectory(prefix="planforge-dfine-train-") as tmp:
        data = Path(tmp) / "shapes"
        spec = SyntheticSpec(seed=a.seed, train=a.train_images, val=a.val_images, calib=0)
        make_synthetic_dataset(data, spec, progress=False, splits=("train", "val"))
        train_split, val_split = load_split(data, "train"), load_split(data, "val")
        targets = train_split.normalized_targets()
        ids = [r["id"] for r in train_split.images]
        # Resized once, kept on the device as uint8 (exactly what preprocess gives, times 255).
        pixels = torch.empty((len(ids), 3, a.imgsz, a.imgsz), dtype=torch.uint8, device=a.device)
        for s in range(0, len(ids), 64):
            chunk = [read_image(train_split.image_path(r)) for r in train_split.images[s : s + 64]]
            x, _ = dfine.preprocess(chunk, a.imgsz)
            pixels[s : s + len(chunk)] = torch.from_numpy(np.rint(x * 255)).to(a.device, torch.uint8)
        labels = [
            {"class_labels": torch.from_numpy(c).to(a.device), "boxes": torch.from_numpy(b).to(a.device, torch.float32)}
            for c, b in (targets[i] for i in ids)
        ]
        data_seconds = time.perf_counter() - t0

        if a.resume:
            model = DFineForObjectDetection.from_pretrained(a.resume).to(a.device)
        else:
            config = dfine.demo_config(SHAPE_CLASSES)
            config.num_denoising = a.denoising
            model = DFineForObjectDetection(config).to(a.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
        optim_state = Path(a.resume).with_suffix(".optim.pt") if a.resume else None
        if optim_state is not None and optim_state.is_file():
            optimizer.load_state_dict(torch.load(optim_state, map_location=a.device))
            for g in optimizer.param_groups:
                g["lr"] = a.lr

        steps, losses, history, done_epochs = 0, [], [], 0
        t_train = time.perf_counter()

        def checkpoint(stats: dict) -> dict:
            """Weights, optimizer state and the record, each replaced whole: a run cut short can resume."""
            seconds = time.perf_counter() - t_train  # includes the evaluations so far
            history.append({"epoch": done_epochs, "step": steps, "seconds": round(seconds, 1), **stats})
            with atomic_dir(a.out) as tmp_out:
                model.save_pretrained(tmp_out)
            with atomic_path(Path(a.out).with_suffix(".optim.pt")) as tmp_optim:
                torch.save(optimizer.state_dict(), tmp_optim)
            record = {
                "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                "epochs_done": done_epochs,
                "steps": steps,
                "final_loss": float(np.mean(losses[-50:])) if losses else None,
                "data_seconds": round(data_seconds, 1),
                "train_seconds": round(seconds, 1),
                "total_steps": steps + sum(e["steps"] for e in earlier),
                "total_train_seconds": round(seconds + sum(e["train_seconds"] for e in earlier), 1),
                "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
                "gpu": torch.cuda.get_device_name(0) if str(a.device).startswith("cuda") else None,
                "history": history,
                "val": history[-1],
                "earlier_legs": earlier,
            }
            write_json(Path(a.out).with_suffix(".json"), record)
            print(
                f"epoch {done_epochs} step {steps} {record['train_seconds']} s: loss {record['final_loss']:.3f} "
                f"mAP50-95 {stats['map50_95']:.4f}",
                flush=True,
            )
            return record

        for _ in range(a.epochs):
            model.train()
            order = rng.permutation(len(ids))
            for start in range(0, len(ids), a.batch):
                pick = order[start : start + a.batch]
                x = pixels[torch.from_numpy(pick).to(a.device)].float().mul_(1 / 255)
                y = [dict(labels[i]) for i in pick]
                flip = rng.random(len(pick)) < a.flip
                if flip.any():
                    f = torch.from_numpy(flip).to(a.device)
                    x = torch.where(f[:, None, None, None], x.flip(-1), x)
                    for j in np.flatnonzero(flip):
                        b = y[j]["boxes"].clone()
                        b[:, 0] = 1 - b[:, 0]
                        y[j]["boxes"] = b
                elapsed = time.perf_counter() - t_train
                for g in optimizer.param_groups:
                    g["lr"] = a.lr * lr_factor(steps, elapsed, a)
                loss = model(pixel_values=x, labels=y).loss
                if not torch.isfinite(loss):
                    raise PlanforgeError(f"{a.out}: the loss became {float(loss)} at step {steps}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                optimizer.step()
                steps += 1
                losses.append(float(loss.detach()))
            done_epochs += 1
            out_of_time = time.perf_counter() - t_train > a.time_hours * 3600
            last = out_of_time or done_epochs == a.epochs
            if last or (a.eval_every and done_epochs % a.eval_every == 0):
                record = checkpoint(evaluate(model, val_split, a.imgsz, a.device))
            if out_of_time:
                break
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("weights/dfine-demo"), help="save_pretrained directory")
    p.add_argument("--resume", type=Path, help="continue from a directory this script wrote (weights, optimizer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--epochs", type=int, default=100, help="at least 1")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--flip", type=float, default=0.5, help="probability of a horizontal flip per image")
    p.add_argument("--device", default="cuda" if shutil.which("nvidia-smi") else "cpu")
    p.add_argument("--time-hours", type=float, default=1.0, help="training time budget; stops after the epoch past it")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate (and save) every N epochs; 0: at the end only")
    p.add_argument("--denoising", type=int, default=100, help="denoising queries (a resumed run keeps its own)")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.batch < 1 or a.time_hours <= 0:
        raise PlanforgeError("--epochs and --batch must be at least 1 and --time-hours above 0")
    if a.resume and not (a.resume.is_dir() and a.resume.with_suffix(".json").is_file()):
        raise PlanforgeError(
            f"--resume {a.resume}: not a directory this script wrote (needs {a.resume}.json beside it)"
        )
    r = train(a)
    print(
        f"{a.out}: {r['epochs_done']} epochs, {r['steps']} steps in {r['train_seconds']} s "
        f"(total {r['total_steps']} steps, {r['total_train_seconds']} s), val mAP50-95 {r['val']['map50_95']:.4f}"
    )


if __name__ == "__main__":
    run_cli(main)
