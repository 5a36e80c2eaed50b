"""Check that a checkpoint loads, then copy it into artifacts/ with an info JSON beside it.

A checkpoint that is not one file (a save_pretrained directory, a Hugging Face id, an architecture
name) is saved by its family as one file that loads offline (`fam.save_checkpoint`). Model settings
(`--model-settings`, the family's keys of the model's config entry, e.g. D-FINE's num_queries) are
applied by the family (`fam.apply_settings`) and saved with the weights: every later step reads them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, atomic_path, run_cli, write_json
from workflow_scripts.models import FAMILIES, get_family, is_architecture


def prepare_checkpoint(family: str, src: Path, out: Path, info: Path, settings: dict | None = None) -> dict:
    """Load `src` with its family (one clear error if it is missing or corrupt), apply `settings`, save, describe."""
    fam = get_family(family)
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = sorted(set(settings) - set(FAMILIES[family].settings))
    if unknown:
        raise PlanforgeError(
            f"--model-settings: {unknown[0]!r} is not a {family} setting {list(FAMILIES[family].settings)}"
        )
    architecture = is_architecture(str(src))
    model = fam.load_torch(src)
    with atomic_path(out) as tmp:
        if settings:  # the checkpoint as it will run: its own weights, the settings in its config
            model = fam.apply_settings(model, settings)
            fam.save_checkpoint(model, tmp)
        elif architecture:  # random weights from a seeded architecture: useful for latency, not accuracy
            fam.save_checkpoint(fam.build_architecture(str(src)), tmp)
        elif Path(src).is_file():
            shutil.copyfile(src, tmp)
        else:  # a directory or a hub id (D-FINE): one file the family reads back offline
            fam.save_checkpoint(model, tmp)
        record = {
            "source": str(src),
            "family": family,
            "random_weights": architecture,
            "settings": settings,
            "sha256": hashlib.sha256(tmp.read_bytes()).hexdigest(),
            "size_bytes": tmp.stat().st_size,
            "class_names": fam.class_names(model),
            "parameters": int(sum(p.numel() for p in model.parameters())),
        }
    write_json(info, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--family", required=True)
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--info", type=Path, required=True)
    p.add_argument("--model-settings", default="{}", help="JSON: the family's settings from the model's config entry")
    a = p.parse_args(argv)
    try:
        settings = json.loads(a.model_settings)
    except json.JSONDecodeError as exc:
        raise PlanforgeError(f"--model-settings: not JSON ({exc})") from None
    r = prepare_checkpoint(a.family, a.src, a.out, a.info, settings)
    print(f"{a.out}: {r['parameters']:,} parameters, {len(r['class_names'])} classes, sha256 {r['sha256'][:12]}")


if __name__ == "__main__":
    run_cli(main)
