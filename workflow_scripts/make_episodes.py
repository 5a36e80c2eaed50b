"""Make one split of an episodes dataset (the vla task): artifacts/data/<dataset>/episodes_<split>.json
(the index: settings, prompts, objects, the arrays' sha256) and episodes_<split>.npz (images, state,
prompt token ids and mask, noise). Deterministic: the same settings give the same arrays."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, run_cli
from workflow_scripts.tasks.vla import make_episodes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--settings", required=True, help="the dataset's config entry (kind episodes), as JSON")
    p.add_argument("--out", type=Path, required=True, help="the dataset folder")
    p.add_argument("--split", choices=("train", "val", "calib"), default="val")
    a = p.parse_args(argv)
    settings = json.loads(a.settings)
    if settings.get("kind") != "episodes":
        raise PlanforgeError(f"dataset kind {settings.get('kind')!r}: make_episodes makes kind 'episodes'")
    if a.split not in settings.get("splits", {}):
        raise PlanforgeError(f"--split {a.split}: not in the settings' splits {sorted(settings.get('splits', {}))}")
    index = make_episodes(a.out, settings, a.split)
    print(f"{a.out}: {index['count']} {a.split} episodes, arrays sha256 {index['arrays_sha256'][:12]}")


if __name__ == "__main__":
    run_cli(main)
