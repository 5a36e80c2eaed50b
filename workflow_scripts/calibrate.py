"""Calibrate an FP32 ONNX model's activation ranges on the dataset's calibration split.

Writes the ranges in ONNX Runtime's format and a report (method, images, time). Every INT8
artifact comes from these ranges: `quantize` reads them for the QDQ model and `calib_cache`
turns them into the TensorRT calibration cache (`trtexec --calib`). Images come from the `calib` split
only, never from the validation images that mAP is measured on.

`entropy` is a real histogram run (`num_bins` 2048 by default): with ONNX Runtime's default
of 128 bins, the KL search has nothing to clip and the result equals MinMax.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.data import batches, load_images, load_split
from workflow_scripts.core.envinfo import library_versions
from workflow_scripts.core.io import PlanforgeError, atomic_path, run_cli, write_json
from workflow_scripts.core.precisions import CALIBRATION_METHODS
from workflow_scripts.models import get_family
from workflow_scripts.plan.settings import CalibrationSettings

CALIB_SPLIT = "calib"


def calibration_batches(family: str, dataset: Path, imgsz: int, images: int, batch: int = 8) -> list[np.ndarray]:
    """Preprocessed batches of the first `images` images of the dataset's calibration split."""
    split = load_split(dataset, CALIB_SPLIT)
    if len(split.images) < images:
        raise PlanforgeError(
            f"{split.annotations}: the calib split has {len(split.images)} images, quantize.calibration.images "
            f"asks for {images}; lower it or raise the dataset's splits.calib"
        )
    fam = get_family(family)
    loaded = [im for _, im in load_images(split, images)]
    return [fam.preprocess(chunk, imgsz)[0] for chunk in batches(loaded, batch)]


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, input_name: str, data: list[np.ndarray]) -> None:
        self.input_name = input_name
        self._it = iter(data)

    def get_next(self):
        nxt = next(self._it, None)
        return None if nxt is None else {self.input_name: nxt}


def calibrator_options(method: str, num_bins: int, percentile: float) -> dict:
    """create_calibrator's extra_options for a method (the histogram size is what makes entropy real)."""
    if method == "entropy":
        return {"num_bins": num_bins, "num_quantized_bins": 128}
    if method == "percentile":
        return {"num_bins": num_bins, "percentile": percentile, "symmetric": True}
    return {}


def calibrate_ranges(onnx_path: Path, data: list[np.ndarray], method: str, num_bins: int, percentile: float):
    """ONNX Runtime's TensorsData for `onnx_path` over `data`, by `method`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    enum = getattr(CalibrationMethod, CALIBRATION_METHODS[method].ort_method)
    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="planforge-calib-") as tmp:
        # ORT writes `<model>-inferred.onnx` beside the model it loads and deletes it again: two jobs
        # calibrating the same fp32.onnx at once would delete each other's file, so each works on a copy
        private = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_path, private)
        calibrator = create_calibrator(
            private,
            None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=enum,
            extra_options=calibrator_options(method, num_bins, percentile),
        )
        # one batch at a time: the calibrator keeps every intermediate output of a call in memory
        for b in data:
            calibrator.collect_data(_Reader(input_name, [b]))
        ranges = calibrator.compute_data()
        del calibrator
    return ranges


def calibrate(
    family: str,
    onnx_path: Path,
    dataset: Path,
    imgsz: int,
    method: str,
    images: int,
    num_bins: int,
    percentile: float,
    ranges_out: Path,
    report_out: Path,
) -> dict:
    """Calibrate once; write the ORT ranges and the report."""
    from onnxruntime.quantization import save_tensors_data

    CALIBRATION_METHODS[method]  # an unknown method is a one-line error naming the known ones
    t0 = time.perf_counter()
    data = calibration_batches(family, dataset, imgsz, images)
    ranges = calibrate_ranges(onnx_path, data, method, num_bins, percentile)
    seconds = time.perf_counter() - t0
    plain = {name: (float(np.min(td.range_value[0])), float(np.max(td.range_value[1]))) for name, td in ranges.items()}
    bad = [n for n, (lo, hi) in plain.items() if not (np.isfinite(lo) and np.isfinite(hi))]
    if bad:
        raise PlanforgeError(f"{onnx_path}: calibration gave non-finite ranges for {bad[:3]}; check the calib images")
    with atomic_path(ranges_out) as tmp:
        save_tensors_data(ranges, tmp)
    record = {
        "model": str(onnx_path),
        "method": method,
        "weights": "minmax (per channel), at quantization",
        "split": CALIB_SPLIT,
        "images": images,
        "imgsz": imgsz,
        "num_bins": num_bins if method != "minmax" else None,
        "percentile": percentile if method == "percentile" else None,
        "tensors": len(plain),
        "seconds": round(seconds, 2),
        "libraries": library_versions(("onnxruntime", "onnx")),
    }
    write_json(report_out, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True)
    p.add_argument("--onnx", type=Path, required=True, help="the FP32 ONNX model")
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder; its calib split is used")
    p.add_argument("--imgsz", type=int, required=True)
    p.add_argument("--method", required=True, choices=CALIBRATION_METHODS.names())
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.CalibrationSettings")
    p.add_argument("--ranges", type=Path, required=True, help="output: ONNX Runtime tensor ranges (JSON)")
    p.add_argument("--report", type=Path, required=True)
    a = p.parse_args(argv)
    s = CalibrationSettings.from_json(a.settings)
    r = calibrate(
        a.family,
        a.onnx,
        a.dataset,
        a.imgsz,
        a.method,
        s.images,
        s.num_bins,
        s.percentile,
        a.ranges,
        a.report,
    )
    print(f"{a.ranges}: {r['tensors']} tensors, {a.method} on {r['images']} calib images in {r['seconds']} s")


if __name__ == "__main__":
    run_cli(main)
