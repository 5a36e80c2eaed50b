"""COCO val2017: download the two official archives once (checked by MD5), then cut a reproducible subset.

`download` is the only step that needs a network. `build` reads the archives from
`artifacts/data/coco/downloads/` and writes a split in the layout every other step reads
(`instances_<split>.json` + `images/<split>/`), keeping COCO's own category ids and names (all 80
classes), so the accuracy loop maps model classes to categories by name as for the synthetic set.

The subset: val2017's image ids in a seeded random order; the val split takes the first
`splits.val` of them, the calib split the next `splits.calib` (never a val image).
"""

from __future__ import annotations

import argparse
import json
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from workflow_scripts.core.io import PlanforgeError, atomic_dir, atomic_path, file_digest, run_cli

BASE_URL = "http://images.cocodataset.org"
DOWNLOADS = Path("artifacts/data/coco/downloads")
# name → (path under BASE_URL, MD5, size in bytes): the checksums cocodataset.org's archives have
ARCHIVES = {
    "annotations_trainval2017.zip": (
        "annotations/annotations_trainval2017.zip",
        "f4bbac642086de4f52a3fdda2de5fa2c",
        252907541,
    ),
    "val2017.zip": ("zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", 815585330),
}
ANNOTATIONS_MEMBER = "annotations/instances_val2017.json"
# images in ANNOTATIONS_MEMBER of the archive with the MD5 above (config.py checks the splits against it)
VAL2017_IMAGES = 5000
IMAGES_PREFIX = "val2017/"


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def _where_to_put(name: str, out: Path, base_url: str) -> str:
    return f"download {base_url}/{ARCHIVES[name][0]} and put it at {out}"


def download(name: str, out: Path, base_url: str = BASE_URL, md5: str | None = None, timeout: float = 60) -> str:
    """Fetch one archive to `out` (via a temporary file) and check its MD5; return the MD5."""
    if name not in ARCHIVES:
        raise PlanforgeError(f"{name}: not a COCO archive this workflow uses; one of {sorted(ARCHIVES)}")
    expected = md5 or ARCHIVES[name][1]
    url = f"{base_url}/{ARCHIVES[name][0]}"
    with atomic_path(out) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PlanforgeError(
                f"cannot download {url} ({reason}); without a network, {_where_to_put(name, out, base_url)}"
            ) from None
        got = md5sum(tmp)
        if got != expected:
            raise PlanforgeError(f"{url}: MD5 {got} is not {expected}; the download is damaged, run again")
    return got


def check_archive(path: Path, md5: str | None = None) -> None:
    """An archive a user put in place must be the official one."""
    expected = md5 or ARCHIVES[path.name][1]
    if not path.is_file():
        raise PlanforgeError(f"{path}: not found; {_where_to_put(path.name, path, BASE_URL)}")
    got = md5sum(path)
    if got != expected:
        raise PlanforgeError(f"{path}: MD5 {got} is not {expected}; replace it with the official archive")


ULTRALYTICS_RELEASE = "https://github.com/ultralytics/assets/releases/download/v8.3.0"


def download_weights(name: str, out: Path) -> None:
    """An ultralytics release checkpoint (`yolov8n.pt`) to `out`, fetched by ultralytics' own downloader."""
    import os
    import tempfile

    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "planforge-ultralytics"))
    from ultralytics.utils.downloads import attempt_download_asset

    with tempfile.TemporaryDirectory(prefix="planforge-weights-") as tmp, atomic_path(out) as tmp_out:
        try:
            got = Path(attempt_download_asset(str(Path(tmp) / name)))
            if not got.is_file():
                raise FileNotFoundError(name)
        except Exception as exc:  # offline: ultralytics raises ConnectionError, FileNotFoundError, ...
            raise PlanforgeError(
                f"cannot download {name} ({exc.__class__.__name__}); without a network, download "
                f"{ULTRALYTICS_RELEASE}/{name} and put it at {out}"
            ) from None
        shutil.move(str(got), tmp_out)


def subset_ids(image_ids: list[int], seed: int, val: int, calib: int) -> dict[str, list[int]]:
    """The reproducible split: seeded order of the sorted ids, val first, calib next (disjoint)."""
    ids = sorted(image_ids)
    if val + calib > len(ids):
        raise PlanforgeError(f"splits.val + splits.calib = {val + calib} > the {len(ids)} images of val2017")
    order = np.random.default_rng(seed).permutation(len(ids))
    picked = [ids[i] for i in order[: val + calib]]
    return {"val": sorted(picked[:val]), "calib": sorted(picked[val:])}


def build(
    downloads: Path, out: Path, split: str, seed: int, val: int, calib: int, checksums: dict[str, str] | None = None
) -> int:
    """Write `out/instances_<split>.json` and `out/images/<split>/` from the two archives; return the image count."""
    checksums = checksums or {}
    ann_zip, img_zip = downloads / "annotations_trainval2017.zip", downloads / "val2017.zip"
    for z in (ann_zip, img_zip):
        check_archive(z, checksums.get(z.name))
    with zipfile.ZipFile(ann_zip) as z:
        coco = json.loads(z.read(ANNOTATIONS_MEMBER))
    if len(coco["categories"]) < 1:
        raise PlanforgeError(f"{ann_zip}: {ANNOTATIONS_MEMBER} has no categories")
    wanted = set(subset_ids([im["id"] for im in coco["images"]], seed, val, calib)[split])
    images = [im for im in coco["images"] if im["id"] in wanted]
    record = {
        "info": {
            **coco.get("info", {}),
            "planforge_subset": {"split": split, "seed": seed, "val": val, "calib": calib},
        },
        "licenses": coco.get("licenses", []),
        "images": images,
        "annotations": [a for a in coco["annotations"] if a["image_id"] in wanted],
        "categories": coco["categories"],  # all of them, COCO ids and names
    }
    ann_out = out / f"instances_{split}.json"
    with atomic_dir(out / "images" / split) as tmp, atomic_path(ann_out) as tmp_ann, zipfile.ZipFile(img_zip) as z:
        for im in images:
            data = z.read(IMAGES_PREFIX + im["file_name"])
            (tmp / im["file_name"]).write_bytes(data)
        tmp_ann.write_text(json.dumps(record))
    return len(images)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch one archive (the only networked step)")
    d.add_argument("--name", required=True, choices=sorted(ARCHIVES))
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--base-url", default=BASE_URL)
    w = sub.add_parser("weights", help="fetch an ultralytics release checkpoint (networked)")
    w.add_argument("--name", required=True)
    w.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("build", help="cut one split of the subset from the archives")
    b.add_argument("--downloads", type=Path, default=DOWNLOADS)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--split", required=True, choices=("val", "calib"))
    b.add_argument("--settings", required=True, help="the dataset's config as JSON (seed, splits)")
    a = p.parse_args(argv)
    if a.cmd == "download":
        print(f"{a.out}: MD5 {download(a.name, a.out, a.base_url)} ok")
        return
    if a.cmd == "weights":
        download_weights(a.name, a.out)
        print(f"{a.out}: downloaded")
        return
    s = json.loads(a.settings)
    splits = s.get("splits", {})
    n = build(
        a.downloads, a.out, a.split, int(s.get("seed", 0)), int(splits.get("val", 500)), int(splits.get("calib", 0))
    )
    print(f"{a.out}: {a.split} split of {n} COCO val2017 images")


if __name__ == "__main__":
    run_cli(main)
