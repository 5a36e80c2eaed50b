"""A bad config never destroys what a run cannot remake.

Snakemake removes a job's old outputs before the job runs, so a config problem found by the job comes too late:
the good artifact is already gone. Each bad config here is run for real (`snakemake`, not `-n`) against a built
tree; the run must stop at planning with one line naming the config key, and every file under artifacts/ and
results/ must keep its bytes and its mtime.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_built, make_workflow_copy, snakemake, write_config

CONFIG = {
    "datasets": {
        "tiny": {
            "kind": "synthetic",
            "seed": 3,
            "splits": {"train": 0, "val": 2, "calib": 2},
            "image_size": [96, 160],
            "max_objects": 3,
        }
    },
    "models": {"a": {"family": "yolo", "checkpoint": "ckpt/a.pt", "dataset": "tiny", "imgsz": 160}},
    "export": {"check_images": 1},
    "quantize": {"calibration": {"images": 2}},
    "targets": {
        "cpu": {"device": "cpu", "threads": 1, "backends": {"onnxruntime": ["fp32", "int8_minmax"]}, "batch_sizes": [1]}
    },
    "bench": {"warmup": 1, "iterations": 3},
    "accuracy": {"batch": 2},
}
# what the tree holds: the prepared checkpoint, the dataset, the ONNX export and the calibration ranges
BUILT = ("artifacts/checkpoints/a.pt", "artifacts/calib/a/minmax.ranges.json")


def _set(path: str, value):
    def change(cfg: dict) -> None:
        *keys, last = path.split(".")
        node = cfg
        for k in keys:
            node = node.setdefault(k, {})
        node[last] = value

    return change


# (name, config change, the config key the one line names, what else the line says)
BAD_CONFIGS = [
    (
        "calibration images above the calib split",
        _set("quantize.calibration.images", 3),
        "quantize.calibration.images",
        "calib split",
    ),
    (
        "a D-FINE save_pretrained folder as a yolo checkpoint",
        _set("models.a.checkpoint", "ckpt/dfine-demo"),
        "models.a.checkpoint",
        "model_type 'd_fine'",
    ),
    (
        "a samurai .pt as a yolo checkpoint",
        _set("models.a.checkpoint", "ckpt/samurai-demo.pt"),
        "models.a.checkpoint",
        "samurai checkpoint",
    ),
    ("a yolo .pt for a dfine model", _set("models.a.family", "dfine"), "models.a.checkpoint", "yolo checkpoint"),
    (
        "an architecture name its family does not have",
        lambda c: c["models"]["a"].update(family="dfine", checkpoint="dfine-huge.yaml"),
        "models.a.checkpoint",
        "not a dfine architecture",
    ),
    (
        "a missing checkpoint path",
        _set("models.a.checkpoint", "ckpt/missing.pt"),
        "models.a.checkpoint",
        "no such file",
    ),
    (
        "a damaged checkpoint file (truncated zip)",
        _set("models.a.checkpoint", "ckpt/damaged.pt"),
        "models.a.checkpoint",
        "damaged",
    ),
    (
        "a checkpoint that is not a torch file",
        _set("models.a.checkpoint", "ckpt/a.json"),
        "models.a.checkpoint",
        "not a torch checkpoint",
    ),
    (
        "dataset image_size first above second",
        _set("datasets.tiny.image_size", [160, 96]),
        "datasets.tiny.image_size",
        "must not exceed",
    ),
    (
        "serving.preferred_batch_sizes above serving.max_batch_size",
        _set("serving.preferred_batch_sizes", [16]),
        "serving.preferred_batch_sizes",
        "max_batch_size",
    ),
    ("a D-FINE setting on a yolo model", _set("models.a.num_queries", 50), "models.a.num_queries", "no num_queries"),
]


def _state(work: Path) -> dict[str, tuple[int, str]]:
    """(mtime in ns, sha256) of every file under artifacts/ and results/."""
    return {
        str(p.relative_to(work)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for top in ("artifacts", "results")
        for p in sorted((work / top).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The smallest tree with the artifacts a bad config puts at risk: a prepared checkpoint, a dataset, an ONNX
    export and its calibration ranges (the real jobs, on 2 calib images)."""
    work = make_workflow_copy(tmp_path_factory.mktemp("safety") / "wf", CONFIG)
    shutil.copytree(REPO / "weights" / "dfine-demo", work / "ckpt" / "dfine-demo")
    shutil.copy2(REPO / "weights" / "samurai-demo.pt", work / "ckpt" / "samurai-demo.pt")
    (work / "ckpt" / "damaged.pt").write_bytes((work / "ckpt" / "a.pt").read_bytes()[:4096])
    (work / "ckpt" / "a.json").write_text("{}")
    snakemake(work, *BUILT)
    return work


def test_the_built_tree_is_up_to_date(built):
    """The good config plans no job: a bad config's failure below is its own, not a rerun's."""
    proc = snakemake(built, "-n", *BUILT)
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name,change,key,says", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_a_bad_config_stops_at_planning_and_changes_no_artifact(built, tmp_path, name, change, key, says):
    built = copy_built(built, tmp_path / "wf")  # mtimes kept: each config meets the tree as the good run left it
    before = _state(built)
    assert any(p.startswith("artifacts/calib/a/") for p in before) and "artifacts/checkpoints/a.pt" in before
    config = copy.deepcopy(CONFIG)
    change(config)
    write_config(built, config)
    proc = snakemake(built, *BUILT, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{name}: the run went ahead:\n{text[-2000:]}"
    lines = [line for line in text.splitlines() if f"config key {key}" in line]
    assert len(lines) == 1, f"{name}: expected one line naming {key}:\n{text[-2000:]}"
    assert says in lines[0], lines[0]
    assert "Traceback" not in text
    assert _state(built) == before, f"{name}: an artifact changed"


def test_the_list_of_bad_configs(capsys):
    """The configs this module runs (printed with -s; the closing note of issue 25 lists them)."""
    with capsys.disabled():
        print("\nbad configs checked against a built tree:")
        for name, _, key, _ in BAD_CONFIGS:
            print(f"  - {name} ({key})")
    assert len({b[0] for b in BAD_CONFIGS}) == len(BAD_CONFIGS)


# -- the same checks without a tree: what each decides from the config and the checkpoint's own files ------------


def _validate(config: dict) -> None:
    from workflow_scripts.config import validate

    validate(config)


def _config(**model) -> dict:
    config = copy.deepcopy(CONFIG)
    config["models"]["a"].update(model)
    return config


def test_calibration_images_are_checked_only_where_a_model_is_calibrated():
    from workflow_scripts.core.io import PlanforgeError

    config = _config(checkpoint=str(REPO / "weights/yolo-demo.pt"))
    config["quantize"]["calibration"]["images"] = 3
    with pytest.raises(PlanforgeError, match=r"quantize.calibration.images: 3 is more than the 2 images"):
        _validate(config)
    config["targets"]["cpu"]["backends"]["onnxruntime"] = ["fp32"]  # nothing calibrates: the split is not read
    _validate(config)


def _dfine_folder(root: Path, **config) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "d_fine", "num_queries": 300, **config}))
    (root / "model.safetensors").write_bytes(b"")
    return root


def test_num_queries_on_a_dfine_folder_that_learned_its_queries_is_refused(tmp_path):
    from workflow_scripts.core.io import PlanforgeError

    learned = _dfine_folder(tmp_path / "learned", learn_initial_query=True)
    with pytest.raises(PlanforgeError, match=r"models.a.num_queries: .* learned its 300 initial queries"):
        _validate(_config(family="dfine", checkpoint=str(learned), num_queries=100))
    _validate(_config(family="dfine", checkpoint=str(learned), num_queries=300))
    plain = _dfine_folder(tmp_path / "plain", learn_initial_query=False)
    _validate(_config(family="dfine", checkpoint=str(plain), num_queries=100))


def test_a_dfine_folder_without_weights_or_of_another_model_type_is_refused(tmp_path):
    from workflow_scripts.core.io import PlanforgeError

    empty = _dfine_folder(tmp_path / "empty")
    (empty / "model.safetensors").unlink()
    with pytest.raises(PlanforgeError, match=r"models.a.checkpoint: .* no model.safetensors"):
        _validate(_config(family="dfine", checkpoint=str(empty)))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "rt_detr"}))
    with pytest.raises(PlanforgeError, match=r"model_type 'rt_detr', not 'd_fine'"):
        _validate(_config(family="dfine", checkpoint=str(other)))


@pytest.mark.parametrize(
    "family,checkpoint",
    [
        ("yolo", "weights/yolo-demo.pt"),
        ("dfine", "weights/dfine-demo"),
        ("samurai", "weights/samurai-demo.pt"),
        ("dfine", "dfine-demo.yaml"),
        ("pi0", "pi0-tiny.yaml"),
        ("samurai", "samurai-tiny.yaml"),
        ("yolo", "yolov8n.yaml"),
    ],
)
def test_every_checkpoint_the_repository_ships_or_names_is_taken_by_its_family(family, checkpoint):
    from workflow_scripts.models import checkpoint_problem

    path = REPO / checkpoint
    assert checkpoint_problem(family, str(path) if path.exists() else checkpoint, downloads=False) is None
