"""Datasets: the deterministic synthetic shapes set, COCO-format loading and image reading."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from workflow_scripts.core.io import PlanforgeError

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
SPLITS = ("train", "val", "calib")


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the synthetic dataset; the same spec gives the same pixels."""

    seed: int = 0
    train: int = 1000
    val: int = 200
    calib: int = 128
    min_size: int = 256
    max_size: int = 416
    max_objects: int = 8
    min_object: int = 10
    max_object: int = 180
    max_overlap: float = 0.3


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = []
        for k in range(10):
            rr = 1.0 if k % 2 == 0 else 0.45
            a = angle + k * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    elif kind == "cross":
        w = 0.33
        base = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(x * ca - y * sa, x * sa + y * ca) for x, y in base]
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured background: low-frequency colour noise, stripes and pixel noise."""
    grid = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.float32)
    low = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(6, 40)
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    img = low + rng.uniform(5, 25) * stripes[..., None] + rng.normal(0, 8, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over the smaller box: keeps objects overlapping but never hidden."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def render_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[Image.Image, list[dict]]:
    """One image and its objects (class name and xyxy box), drawn from `rng`."""
    w = int(rng.integers(spec.min_size, spec.max_size + 1))
    h = int(rng.integers(spec.min_size, spec.max_size + 1))
    img = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(img)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        for _attempt in range(20):
            # log-uniform sizes so small, medium and large COCO areas all occur
            size = float(
                np.exp(rng.uniform(math.log(spec.min_object), math.log(min(spec.max_object, 0.8 * min(w, h)))))
            )
            r = size / 2
            cx = float(rng.uniform(r, w - r))
            cy = float(rng.uniform(r, h - r))
            kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            angle = float(rng.uniform(0, 2 * math.pi))
            if kind in ("triangle", "star", "cross"):
                pts = _polygon(kind, cx, cy, r, angle)
                xs, ys = zip(*pts)
                # rotated corners can poke out of the image; COCO boxes stay inside it
                box = (max(min(xs), 0.0), max(min(ys), 0.0), min(max(xs), float(w)), min(max(ys), float(h)))
            else:
                pts = []
                box = (cx - r, cy - r, cx + r, cy + r)
            if all(_overlap(box, o["box"]) <= spec.max_overlap for o in objects):
                break
        else:
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        outline = tuple(255 - c for c in colour)
        if kind == "circle":
            draw.ellipse(box, fill=colour, outline=outline)
        elif kind == "square":
            draw.rectangle(box, fill=colour, outline=outline)
        elif kind == "ring":
            draw.ellipse(box, outline=colour, width=max(2, int(r * 0.3)))
        else:
            draw.polygon(pts, fill=colour, outline=outline)
        objects.append({"name": kind, "box": box})
    return img, objects


def make_synthetic_dataset(
    out_dir: str | Path, spec: SyntheticSpec, progress: bool = True, splits: tuple[str, ...] = SPLITS
) -> dict[str, int]:
    """Write images/<split>/*.jpg and instances_<split>.json for `splits`; return image counts.

    Each split draws from its own random stream, so one split's size never changes another's pixels.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    counts = {}
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    for split in splits:
        split_index = SPLITS.index(split)
        n = getattr(spec, split)
        rng = np.random.default_rng([spec.seed, split_index])
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in tqdm(range(n), desc=f"synthetic {split}", disable=not progress, mininterval=2.0):
            img, objects = render_image(rng, spec)
            name = f"{split}_{i:06d}.jpg"
            img.save(out / "images" / split / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "width": img.width, "height": img.height})
            for obj in objects:
                x0, y0, x1, y1 = (round(v, 2) for v in obj["box"])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": cat_id[obj["name"]],
                        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                        "area": round((x1 - x0) * (y1 - y0), 2),
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": f"planforge synthetic shapes, seed {spec.seed}, {split} split"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (out / f"instances_{split}.json").write_text(json.dumps(coco))
        counts[split] = n
    return counts


@dataclass
class CocoSplit:
    """A COCO-format split: annotation file, image folder and category names by id."""

    annotations: Path
    image_dir: Path
    images: list[dict]
    categories: dict[int, str]

    def image_path(self, image: dict) -> Path:
        return self.image_dir / image["file_name"]

    def normalized_targets(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per image id: class indices (in `categories` order, int64) and boxes as cx, cy, w, h
        relative to the image (float64, N×4), in annotation order: what trainers take."""
        index = {cid: i for i, cid in enumerate(self.categories)}
        sizes = {im["id"]: (im["width"], im["height"]) for im in self.images}
        out: dict[int, tuple[list, list]] = {i: ([], []) for i in sizes}
        for a in json.loads(self.annotations.read_text())["annotations"]:
            if a["image_id"] not in sizes:
                continue
            w, h = sizes[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            out[a["image_id"]][0].append(index[a["category_id"]])
            out[a["image_id"]][1].append(((x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h))
        return {i: (np.asarray(c, np.int64), np.asarray(b, np.float64).reshape(-1, 4)) for i, (c, b) in out.items()}


def load_split(dataset_dir: str | Path, split: str) -> CocoSplit:
    """Open `<dataset_dir>/instances_<split>.json` and its `images/<split>/` folder."""
    root = Path(dataset_dir)
    ann = root / f"instances_{split}.json"
    if not ann.is_file():
        raise PlanforgeError(f"{ann}: annotation file not found; rerun the dataset rule")
    try:
        coco = json.loads(ann.read_text())
        images = coco["images"]
        categories = {int(c["id"]): c["name"] for c in coco["categories"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PlanforgeError(f"{ann}: not a COCO instances file ({exc})") from exc
    if not images:
        raise PlanforgeError(f"{ann}: the {split} split has no images; raise its size in the dataset config")
    return CocoSplit(ann, root / "images" / split, images, categories)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an HxWx3 uint8 RGB array; a one-line error names an unreadable file."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise PlanforgeError(f"{p}: image not found") from None
    except Exception as exc:  # decoders raise many types (ultralytics even hooks Image.open for HEIF)
        raise PlanforgeError(f"{p}: unreadable image ({exc.__class__.__name__}); replace or remove it") from None


def load_images(split: CocoSplit, limit: int | None = None) -> list[tuple[dict, np.ndarray]]:
    """(image record, RGB array) pairs for the first `limit` images of a split."""
    records = split.images[:limit] if limit else split.images
    return [(rec, read_image(split.image_path(rec))) for rec in records]


def batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
