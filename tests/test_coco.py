"""COCO val2017 subset: the loaders run on a tiny fake COCO folder laid out like the real download
(the two official archive names, `annotations/instances_val2017.json` and `val2017/*.jpg` inside),
built here from the synthetic generator; the downloader runs against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_workflow_copy, planned_outputs
from workflow_scripts import coco
from workflow_scripts.core.data import load_split, read_image
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.make_dataset import make_dataset


@pytest.fixture(scope="module")
def fake_coco_downloads(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """downloads/ with a fake annotations_trainval2017.zip and val2017.zip, and their MD5s."""
    root = tmp_path_factory.mktemp("fake_coco")
    synth = root / "synthetic"
    make_dataset(
        synth,
        {"kind": "synthetic", "seed": 7, "splits": {"train": 0, "val": 12, "calib": 0}, "image_size": [64, 96]},
        "val",
    )
    ann = json.loads((synth / "instances_val.json").read_text())
    remap = {im["id"]: 1000 + 7 * i for i, im in enumerate(ann["images"])}
    for im in ann["images"]:
        im["id"] = remap[im["id"]]
    for a in ann["annotations"]:
        a["image_id"] = remap[a["image_id"]]
    downloads = root / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "annotations_trainval2017.zip", "w") as z:
        z.writestr("annotations/instances_val2017.json", json.dumps(ann))
    with zipfile.ZipFile(downloads / "val2017.zip", "w") as z:
        for im in ann["images"]:
            z.write(synth / "images" / "val" / im["file_name"], "val2017/" + im["file_name"])
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in downloads.iterdir()}
    return downloads, md5


def test_fake_coco_subset_has_the_layout_every_step_reads(fake_coco_downloads, tmp_path):
    downloads, md5 = fake_coco_downloads
    out = tmp_path / "coco"
    assert coco.build(downloads, out, "val", seed=0, val=5, calib=3, checksums=md5) == 5
    assert coco.build(downloads, out, "calib", seed=0, val=5, calib=3, checksums=md5) == 3
    val, calib = load_split(out, "val"), load_split(out, "calib")
    val_ids, calib_ids = {r["id"] for r in val.images}, {r["id"] for r in calib.images}
    assert len(val_ids) == 5 and len(calib_ids) == 3 and not val_ids & calib_ids
    for split in (val, calib):
        for rec in split.images:
            assert read_image(split.image_path(rec)).shape[:2] == (rec["height"], rec["width"])
    full = json.loads(zipfile.ZipFile(downloads / "annotations_trainval2017.zip").read(coco.ANNOTATIONS_MEMBER))
    written = json.loads((out / "instances_val.json").read_text())
    assert written["categories"] == full["categories"]  # every class with its COCO id, not only those present
    assert {a["image_id"] for a in written["annotations"]} <= val_ids
    assert [a for a in full["annotations"] if a["image_id"] in val_ids] == written["annotations"]
    # reproducible: the same seed gives the same subset, another seed another one
    assert coco.subset_ids(sorted(val_ids | calib_ids | {1, 2, 3}), 0, 2, 1) == coco.subset_ids(
        sorted(val_ids | calib_ids | {1, 2, 3}), 0, 2, 1
    )
    assert coco.subset_ids(list(range(100)), 0, 10, 0) != coco.subset_ids(list(range(100)), 1, 10, 0)


def test_a_damaged_or_missing_archive_is_one_line_naming_it(fake_coco_downloads, tmp_path):
    downloads, md5 = fake_coco_downloads
    with pytest.raises(PlanforgeError, match=r"val2017\.zip: MD5 .* is not 442b8da7639aecaf257c1dceb8ba8c80"):
        coco.build(
            downloads,
            tmp_path / "c",
            "val",
            0,
            2,
            0,
            checksums={"annotations_trainval2017.zip": md5["annotations_trainval2017.zip"]},
        )
    with pytest.raises(
        PlanforgeError, match=r"not found; download http://images.cocodataset.org/zips/val2017.zip and put it at"
    ):
        coco.check_archive(tmp_path / "val2017.zip")
    with pytest.raises(PlanforgeError, match=r"splits.val \+ splits.calib = 20 > the 12 images"):
        coco.build(downloads, tmp_path / "c", "val", 0, 15, 5, checksums=md5)
    assert not (tmp_path / "c" / "instances_val.json").exists()


@pytest.fixture
def http_server(fake_coco_downloads):
    """A local HTTP server with the fake archives at the paths cocodataset.org uses."""
    downloads, _ = fake_coco_downloads
    site = downloads.parent / "site"
    if not site.exists():
        for name, (path, _, _) in coco.ARCHIVES.items():
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(downloads / name, site / path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_the_md5_and_writes_nothing_on_failure(http_server, fake_coco_downloads, tmp_path):
    _, md5 = fake_coco_downloads
    out = tmp_path / "downloads" / "val2017.zip"
    out.parent.mkdir()
    assert coco.download("val2017.zip", out, http_server, md5=md5["val2017.zip"]) == md5["val2017.zip"]
    assert hashlib.md5(out.read_bytes()).hexdigest() == md5["val2017.zip"]
    bad = tmp_path / "downloads" / "annotations_trainval2017.zip"
    with pytest.raises(PlanforgeError, match="is not f4bbac642086de4f52a3fdda2de5fa2c; the download is damaged"):
        coco.download("annotations_trainval2017.zip", bad, http_server)  # the fake is not the official archive
    assert not bad.exists()


def test_without_a_network_the_error_says_what_to_download_and_where(tmp_path):
    out = tmp_path / "artifacts/data/coco/downloads/annotations_trainval2017.zip"
    out.parent.mkdir(parents=True)
    with pytest.raises(PlanforgeError) as err:
        coco.download("annotations_trainval2017.zip", out, "http://127.0.0.1:9", timeout=5)
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(
        f"download http://127.0.0.1:9/annotations/annotations_trainval2017.zip and put it at {out}"
    )
    assert not out.exists()


def test_coco_config_plans_the_downloads_then_the_same_steps_as_the_default(tmp_path):
    config = yaml.safe_load((REPO / "config" / "coco.yaml").read_text())
    work = make_workflow_copy(tmp_path / "wf", config)
    planned = planned_outputs(work, "results/summary.md")
    assert {
        "artifacts/data/coco/downloads/annotations_trainval2017.zip",
        "artifacts/data/coco/downloads/val2017.zip",
        "artifacts/weights/yolov8n.pt",
        "artifacts/data/coco/instances_val.json",
        "artifacts/checkpoints/dfine-x.pt",
        "artifacts/onnx/dfine-x/fp32.onnx",
        "results/cpu/accuracy/dfine-x/onnxruntime_fp32.json",
        "results/cpu/accuracy/yolov8n/torch_fp32.json",
    } <= planned
    assert config["models"]["dfine-x"]["checkpoint"] == "ustc-community/dfine-xlarge-coco"
    assert config["datasets"]["coco"]["splits"]["val"] == 500
