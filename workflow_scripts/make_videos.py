"""Make one split of a videos dataset (the tracking task): artifacts/data/<dataset>/videos_<split>.json
(the index: settings, each sequence's target and distractors, the arrays' sha256) and videos_<split>.npz
(frames, the target's boxes xywh, its visible fraction). Deterministic: the same settings give the same bytes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, run_cli
from workflow_scripts.tasks.tracking import make_videos


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--settings", required=True, help="the dataset's config entry (kind videos), as JSON")
    p.add_argument("--out", type=Path, required=True, help="the dataset folder")
    p.add_argument("--split", choices=("train", "val", "calib"), default="val")
    a = p.parse_args(argv)
    try:
        settings = json.loads(a.settings)
    except json.JSONDecodeError as exc:
        raise PlanforgeError(f"--settings: not JSON ({exc})") from None
    if settings.get("kind") != "videos":
        raise PlanforgeError(f"dataset kind {settings.get('kind')!r}: make_videos makes kind 'videos'")
    if a.split not in settings.get("splits", {}):
        raise PlanforgeError(f"--split {a.split}: not in the settings' splits {sorted(settings.get('splits', {}))}")
    index = make_videos(a.out, settings, a.split)
    print(
        f"{a.out}: {index['count']} {a.split} sequences × {index['frames']} frames at {index['frame_size']} px, "
        f"arrays sha256 {index['arrays_sha256'][:12]}"
    )


if __name__ == "__main__":
    run_cli(main)
