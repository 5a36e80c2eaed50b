"""Train the embedded default's small YOLOv8 on the synthetic shapes dataset.

Reproducible from its arguments: the dataset is regenerated from its seed, training uses
ultralytics' own trainer with a fixed seed. Writes the checkpoint and a JSON beside it
with the arguments, the training time, the machine and the validation mAP.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from workflow_scripts.core.data import SHAPE_CLASSES, SyntheticSpec, load_split, make_synthetic_dataset
from workflow_scripts.core.io import atomic_path, run_cli, write_json


def coco_to_yolo_layout(dataset_dir: Path, yolo_dir: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """Lay a COCO-format dataset out as ultralytics expects (images/, labels/, data.yaml)."""
    import yaml

    for split in splits:
        coco = load_split(dataset_dir, split)
        (yolo_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (yolo_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
        names = list(coco.categories.values())
        targets = coco.normalized_targets()
        for img in coco.images:
            src = coco.image_path(img)
            dst = yolo_dir / "images" / split / img["file_name"]
            os.link(src, dst) if _same_fs(src, dst) else shutil.copy(src, dst)
            classes, boxes = targets[img["id"]]
            lines = [f"{c} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}" for c, (cx, cy, bw, bh) in zip(classes, boxes)]
            (yolo_dir / "labels" / split / (Path(img["file_name"]).stem + ".txt")).write_text("\n".join(lines) + "\n")
    data_yaml = yolo_dir / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump(
            {"path": str(yolo_dir), "train": "images/train", "val": "images/val", "names": dict(enumerate(names))}
        )
    )
    return data_yaml


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b.parent).st_dev


def train_demo(
    out: Path,
    spec: SyntheticSpec,
    imgsz: int,
    epochs: int,
    batch: int,
    time_hours: float | None,
    device: str,
    workers: int,
    workdir: Path | None = None,
) -> dict:
    """Generate the dataset, train yolov8n from scratch on it, copy best.pt to `out`, return the record."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    work = Path(workdir or tempfile.mkdtemp(prefix="planforge-train-"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "ultralytics-config"))
    from ultralytics import YOLO

    t0 = time.perf_counter()
    make_synthetic_dataset(work / "coco", spec)
    data_yaml = coco_to_yolo_layout(work / "coco", work / "yolo")
    t_data = time.perf_counter() - t0

    model = YOLO("yolov8n.yaml")
    t1 = time.perf_counter()
    model.train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        workers=workers,
        seed=spec.seed,
        deterministic=True,
        device=device,
        project=str(work / "runs"),
        name="demo",
        exist_ok=True,
        plots=False,
        pretrained=False,
        patience=1000,
        **({"time": time_hours} if time_hours else {}),
    )
    t_train = time.perf_counter() - t1
    best = Path(model.trainer.best)
    metrics = YOLO(str(best)).val(
        data=str(data_yaml),
        imgsz=imgsz,
        batch=batch,
        device=device,
        plots=False,
        project=str(work / "runs"),
        name="val",
        exist_ok=True,
    )
    with atomic_path(out) as tmp:
        shutil.copy(best, tmp)
    record = {
        "checkpoint": str(out),
        "classes": list(SHAPE_CLASSES),
        "dataset": spec.__dict__,
        "imgsz": imgsz,
        "epochs_requested": epochs,
        "epochs_run": int(model.trainer.epoch) + 1,
        "batch": batch,
        "time_hours_cap": time_hours,
        "device": device,
        "train_seconds": round(t_train, 1),
        "data_seconds": round(t_data, 1),
        "machine": _machine(device),
        "ultralytics_val": {"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50)},
    }
    write_json(out.with_suffix(".json"), record)
    return record


def _machine(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("weights/yolo-demo.pt"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--time-hours", type=float, default=None, help="ultralytics' wall-clock cap on training")
    p.add_argument("--device", default="0")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    spec = SyntheticSpec(seed=a.seed, train=a.train_images, val=a.val_images, calib=0)
    record = train_demo(a.out, spec, a.imgsz, a.epochs, a.batch, a.time_hours, a.device, a.workers, a.workdir)
    print(f"trained {a.out}: mAP50-95 {record['ultralytics_val']['map50_95']:.3f} in {record['train_seconds']} s")


if __name__ == "__main__":
    run_cli(main)
