"""Check that a checkpoint loads, then copy it into artifacts/ with an info JSON beside it.

A checkpoint that is not one file (a save_pretrained directory, a Hugging Face id, an architecture
name) is saved by its family as one file that loads offline (`fam.save_checkpoint`).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from workflow_scripts.core.io import atomic_path, run_cli, write_json
from workflow_scripts.models import get_family, is_architecture


def prepare_checkpoint(family: str, src: Path, out: Path, info: Path) -> dict:
    """Load `src` with its family (one clear error if it is missing or corrupt), copy it, describe it."""
    fam = get_family(family)
    architecture = is_architecture(str(src))
    model = fam.load_torch(src)
    with atomic_path(out) as tmp:
        if architecture:  # random weights from a seeded architecture: useful for latency, not accuracy
            fam.save_checkpoint(fam.build_architecture(str(src)), tmp)
        elif Path(src).is_file():
            shutil.copyfile(src, tmp)
        else:  # a directory or a hub id (D-FINE): one file the family reads back offline
            fam.save_checkpoint(model, tmp)
        record = {
            "source": str(src),
            "family": family,
            "random_weights": architecture,
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
    a = p.parse_args(argv)
    r = prepare_checkpoint(a.family, a.src, a.out, a.info)
    print(f"{a.out}: {r['parameters']:,} parameters, {len(r['class_names'])} classes, sha256 {r['sha256'][:12]}")


if __name__ == "__main__":
    run_cli(main)
