"""Bad input stops the job with one line naming the file, and leaves no output behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_workflow_copy, snakemake
from workflow_scripts.plan.settings import AccuracySettings, BenchSettings, Stability


def _run_step(step: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"workflow_scripts.{step}", *args], capture_output=True, text=True, cwd=cwd
    )


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("planforge error:")]


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"PK\x03\x04 truncated zip"])
def test_a_corrupt_checkpoint_is_refused_at_planning_with_one_line(tmp_path, content):
    work = make_workflow_copy(tmp_path / "wf")
    (work / "ckpt" / "a.pt").write_bytes(content)
    proc = snakemake(work, "artifacts/checkpoints/a.pt", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "config key models.a.checkpoint" in line]
    assert len(lines) == 1 and "'ckpt/a.pt'" in lines[0] and "not a torch checkpoint" in lines[0], lines
    assert not (work / "logs/checkpoints/a.log").exists()  # no job ran
    assert not (work / "artifacts/checkpoints").exists()


def test_a_checkpoint_damaged_past_its_header_fails_its_job_with_one_line_and_no_output(tmp_path):
    """A file that looks like a torch pickle (legacy layout, not looked into at planning) fails when loaded."""
    work = make_workflow_copy(tmp_path / "wf")
    (work / "ckpt" / "a.pt").write_bytes(b"\x80\x02 then garbage")
    proc = snakemake(work, "artifacts/checkpoints/a.pt", check=False)
    assert proc.returncode != 0
    log = (work / "logs/checkpoints/a.log").read_text().strip().splitlines()
    assert len([line for line in log if line.startswith("planforge error:")]) == 1
    assert "ckpt/a.pt: not a loadable YOLO checkpoint" in log[-1]
    assert "Traceback" not in "\n".join(log)
    assert not (work / "artifacts/checkpoints/a.pt").exists()
    assert not (work / "artifacts/checkpoints/a.json").exists()
    assert not list((work / "artifacts/checkpoints").glob(".*"))  # no temp files either


def test_a_missing_checkpoint_is_named_before_any_job_runs(tmp_path):
    work = make_workflow_copy(tmp_path / "wf")
    (work / "ckpt" / "b.pt").unlink()
    proc = snakemake(work, "-n", check=False)
    assert proc.returncode != 0
    assert "ckpt/b.pt" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def _prepared_once(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint and a two-image dataset prepared by the real steps, once per module."""
    from tests.conftest import DEMO_CHECKPOINT

    tmp_path = tmp_path_factory.mktemp("prepared")
    ds = tmp_path / "ds"
    assert (
        _run_step(
            "make_dataset",
            "--out",
            str(ds),
            "--settings",
            json.dumps(
                {"kind": "synthetic", "seed": 1, "splits": {"train": 0, "val": 2, "calib": 0}, "image_size": [96, 128]}
            ),
        ).returncode
        == 0
    )
    info = tmp_path / "ckpt.json"
    ckpt = tmp_path / "ckpt.pt"
    proc = _run_step(
        "prepare_checkpoint", "--family", "yolo", "--src", str(DEMO_CHECKPOINT), "--out", str(ckpt), "--info", str(info)
    )
    assert proc.returncode == 0, proc.stderr
    return {"dataset": ds, "ckpt": ckpt, "info": info}


@pytest.fixture
def prepared(_prepared_once, tmp_path) -> dict[str, Path]:
    """A private copy of the prepared checkpoint and dataset, for a test to break."""
    copy = {}
    (tmp_path / "prepared").mkdir()
    for key, path in _prepared_once.items():
        copy[key] = tmp_path / "prepared" / path.name
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, copy[key])
    return copy


TARGET = {"device": "cpu", "threads": 1, "backend_options": {}, "power": "none", "gpu": None}
STABILITY = Stability(max_cv=0.25, max_p99_over_p50=2.0, attempts=1)


def _accuracy(p: dict[str, Path], out: Path) -> subprocess.CompletedProcess:
    settings = AccuracySettings(
        **TARGET,
        imgsz=128,
        batch=2,
        max_images=None,
        conf=0.001,
        iou=0.7,
        max_det=100,
        gate=0.95,
        error_tolerance=0.01,
        strict=False,
    )
    return _run_step(
        "accuracy",
        "--model",
        "m",
        "--family",
        "yolo",
        "--artifact",
        str(p["ckpt"]),
        "--checkpoint-info",
        str(p["info"]),
        "--backend",
        "torch",
        "--precision",
        "fp32",
        "--dataset",
        str(p["dataset"]),
        "--target",
        "cpu",
        "--settings",
        settings.to_json(),
        "--out",
        str(out),
    )


def test_the_accuracy_step_works_on_good_input(prepared, tmp_path):
    out = tmp_path / "acc.json"
    proc = _accuracy(prepared, out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["images"] == 2


def test_an_unreadable_image_stops_the_job_with_one_line_and_no_output(prepared, tmp_path):
    image = next((prepared["dataset"] / "images" / "val").glob("*.jpg"))
    image.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "acc.json"
    proc = _accuracy(prepared, out)
    assert proc.returncode == 1
    assert (
        _error_lines(proc)
        == [f"planforge error: {image}: unreadable image (UnidentifiedImageError); replace or remove it"]
        or image.name in _error_lines(proc)[0]
    )
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".acc.json*"))


def test_an_empty_dataset_stops_the_job_with_one_line_and_no_output(prepared, tmp_path):
    ann = prepared["dataset"] / "instances_val.json"
    coco = json.loads(ann.read_text())
    ann.write_text(json.dumps({**coco, "images": [], "annotations": []}))
    out = tmp_path / "acc.json"
    proc = _accuracy(prepared, out)
    assert proc.returncode == 1
    assert _error_lines(proc) == [
        f"planforge error: {ann}: the val split has no images; raise its size in the dataset config"
    ]
    assert not out.exists()


def test_a_corrupt_onnx_model_stops_the_bench_with_one_line(prepared, tmp_path):
    onnx = tmp_path / "fp32.onnx"
    onnx.write_bytes(b"\x08\x07garbage")
    out = tmp_path / "bench.json"
    settings = BenchSettings(**TARGET, imgsz=128, warmup=1, iterations=2, min_seconds=0, conf=0.25, stability=STABILITY)
    proc = _run_step(
        "bench",
        "--model",
        "m",
        "--family",
        "yolo",
        "--artifact",
        str(onnx),
        "--backend",
        "onnxruntime",
        "--precision",
        "fp32",
        "--batch",
        "1",
        "--dataset",
        str(prepared["dataset"]),
        "--target",
        "cpu",
        "--settings",
        settings.to_json(),
        "--out",
        str(out),
    )
    assert proc.returncode == 1
    lines = _error_lines(proc)
    assert len(lines) == 1 and f"{onnx}: ONNX Runtime cannot load it" in lines[0]
    assert not out.exists()
