"""Train the small D-FINE of the embedded default (`dfine-demo.yaml`'s config) on the synthetic shapes.

Reproducible from its arguments: the dataset is regenerated from its seed, the model starts from
transformers' own initialisation under a fixed seed, and training is transformers' D-FINE loss
(Hungarian matching, focal/VFL, FGL and DDF terms) with AdamW. Writes a `save_pretrained` directory
(a checkpoint the pipeline loads: `checkpoint: weights/dfine-demo`) and a JSON beside it with the
arguments, the training time, the machine and the validation mAP from the workflow's own
accuracy loop (pycocotools).

Not run for the committed default (it ships random weights, `accuracy: false`): it wants a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from workflow_scripts.accuracy import category_map, coco_detections
from workflow_scripts.data import SHAPE_CLASSES, SyntheticSpec, load_split, make_synthetic_dataset, read_image
from workflow_scripts.io import atomic_dir, run_cli, write_json
from workflow_scripts.metrics import coco_evaluate
from workflow_scripts.models import dfine


def load_targets(split) -> dict[int, dict[str, np.ndarray]]:
    """Per image id: class indices and boxes as D-FINE's loss wants them (cxcywh, 0..1)."""
    index = {cid: i for i, cid in enumerate(split.categories)}
    anns = json.loads(split.annotations.read_text())["annotations"]
    sizes = {im["id"]: (im["width"], im["height"]) for im in split.images}
    out = {i: {"class_labels": [], "boxes": []} for i in sizes}
    for a in anns:
        w, h = sizes[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        out[a["image_id"]]["class_labels"].append(index[a["category_id"]])
        out[a["image_id"]]["boxes"].append([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
    return {
        i: {
            "class_labels": np.asarray(t["class_labels"], np.int64),
            "boxes": np.asarray(t["boxes"], np.float32).reshape(-1, 4),
        }
        for i, t in out.items()
    }


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


def train(
    out: Path,
    seed: int,
    train_images: int,
    val_images: int,
    imgsz: int,
    epochs: int,
    batch: int,
    lr: float,
    device: str,
    time_hours: float,
    denoising: int,
) -> dict:
    import torch
    from transformers import DFineForObjectDetection

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="planforge-dfine-train-") as tmp:
        data = Path(tmp) / "shapes"
        spec = SyntheticSpec(seed=seed, train=train_images, val=val_images, calib=0)
        make_synthetic_dataset(data, spec, progress=False, splits=("train", "val"))
        train_split, val_split = load_split(data, "train"), load_split(data, "val")
        targets = load_targets(train_split)
        images = {r["id"]: read_image(train_split.image_path(r)) for r in train_split.images}
        config = dfine.demo_config(SHAPE_CLASSES)
        config.num_denoising = denoising
        model = DFineForObjectDetection(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        ids = [r["id"] for r in train_split.images]
        steps, losses, done_epochs = 0, [], 0
        for _ in range(epochs):
            model.train()
            for start in range(0, len(ids), batch):
                chunk = [ids[i] for i in rng.permutation(len(ids))[start : start + batch]]
                x, _ = dfine.preprocess([images[i] for i in chunk], imgsz)
                labels = [{k: torch.from_numpy(v).to(device) for k, v in targets[i].items()} for i in chunk]
                loss = model(pixel_values=torch.from_numpy(x).to(device), labels=labels).loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                optimizer.step()
                steps += 1
                losses.append(float(loss.detach()))
            done_epochs += 1
            if time.perf_counter() - t0 > time_hours * 3600:
                break
        train_seconds = time.perf_counter() - t0
        stats = evaluate(model, val_split, imgsz, device)
        with atomic_dir(out) as tmp_out:
            model.save_pretrained(tmp_out)
    record = {
        "arguments": {
            "seed": seed,
            "train_images": train_images,
            "val_images": val_images,
            "imgsz": imgsz,
            "epochs": epochs,
            "batch": batch,
            "lr": lr,
            "device": device,
            "time_hours": time_hours,
            "denoising": denoising,
        },
        "epochs_done": done_epochs,
        "steps": steps,
        "final_loss": losses[-1] if losses else None,
        "train_seconds": round(train_seconds, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "val": stats,
    }
    write_json(out.with_suffix(".json"), record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("weights/dfine-demo"), help="save_pretrained directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--device", default="cuda" if shutil.which("nvidia-smi") else "cpu")
    p.add_argument("--time-hours", type=float, default=1.0, help="stop after the epoch that passes this")
    p.add_argument("--denoising", type=int, default=100, help="denoising queries during training")
    a = p.parse_args(argv)
    r = train(
        a.out,
        a.seed,
        a.train_images,
        a.val_images,
        a.imgsz,
        a.epochs,
        a.batch,
        a.lr,
        a.device,
        a.time_hours,
        a.denoising,
    )
    print(f"{a.out}: {r['epochs_done']} epochs in {r['train_seconds']} s, val mAP50-95 {r['val']['map50_95']:.4f}")


if __name__ == "__main__":
    run_cli(main)
