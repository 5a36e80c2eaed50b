"""Make a dataset folder: images/<split>/ and instances_<split>.json for train, val and calib.

With `--split`, only that split is (re)made, so changing the calibration split's size rebuilds
the calibration images and nothing that depends on the validation images.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from workflow_scripts.core.data import SPLITS, SyntheticSpec, make_synthetic_dataset
from workflow_scripts.core.io import PlanforgeError, atomic_dir, atomic_path, run_cli


def synthetic_spec(settings: dict) -> SyntheticSpec:
    """SyntheticSpec from a dataset's config entry; keys it leaves out take the config's defaults (config.py)."""
    from workflow_scripts.config import DATASET_DEFAULTS

    s = {**DATASET_DEFAULTS, **settings}
    splits = {**DATASET_DEFAULTS["splits"], **settings.get("splits", {})}
    lo, hi = s["image_size"]
    if lo > hi:
        raise PlanforgeError(f"dataset image_size {lo}..{hi}: the first value must not exceed the second")
    return SyntheticSpec(
        seed=s["seed"],
        train=splits["train"],
        val=splits["val"],
        calib=splits["calib"],
        min_size=lo,
        max_size=hi,
        max_objects=s["max_objects"],
    )


def make_dataset(out: Path, settings: dict, split: str | None = None) -> dict[str, int]:
    """Build the dataset (or one split of it) in a temporary folder and move it into `out` only when complete."""
    if settings["kind"] != "synthetic":
        raise PlanforgeError(f"dataset kind {settings['kind']!r} is not one of ['synthetic']")
    spec = synthetic_spec(settings)
    if split is None:
        with atomic_dir(out) as tmp:
            return make_synthetic_dataset(tmp, spec)
    ann = out / f"instances_{split}.json"
    with atomic_dir(out / "images" / split) as tmp, atomic_path(ann) as tmp_ann:
        counts = make_synthetic_dataset(tmp, spec, progress=True, splits=(split,))
        shutil.move(str(tmp / f"instances_{split}.json"), tmp_ann)
        for item in (tmp / "images" / split).iterdir():
            item.rename(tmp / item.name)
        (tmp / "images" / split).rmdir()
        (tmp / "images").rmdir()
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--settings", required=True, help="the dataset's config entry, as JSON")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", choices=SPLITS, default=None, help="make only this split (default: all)")
    a = p.parse_args(argv)
    counts = make_dataset(a.out, json.loads(a.settings), a.split)
    print(f"{a.out}: " + ", ".join(f"{k} {v} images" for k, v in counts.items()))


if __name__ == "__main__":
    run_cli(main)
