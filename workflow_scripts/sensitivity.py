"""Per-block INT8 sensitivity: which blocks cost mAP when quantized, and which to keep in float.

For each block of the network (a top-level module such as `/model.8/`, and each branch of the
detection head), quantize the model with only that block kept in FP32 and measure mAP50-95 on
the validation split. Blocks whose float version recovers the most mAP are added to the float
list greedily until the INT8 model reaches `--target` × the FP32 mAP. The JSON lists every
measurement and the resulting `keep_float`, which goes into the model's config entry:

    models:
      yolo-demo:
        keep_float: ["/model.22/cv2.0/", ...]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from workflow_scripts.accuracy import default_settings, evaluate
from workflow_scripts.core.io import run_cli, write_json
from workflow_scripts.quantize import quantize


def blocks(onnx_path: Path) -> list[str]:
    """Node-name prefixes of the model's blocks: `/model.N/`, and the head's branches `/model.N/cvK.J/`."""
    import onnx

    names = [n.name for n in onnx.load(str(onnx_path)).graph.node]
    top = sorted({m.group(1) for n in names if (m := re.match(r"^(/model\.\d+/)", n))}, key=lambda p: int(p[7:-1]))
    head = top[-1] if top else ""
    branches = sorted({m.group(1) for n in names if (m := re.match(rf"^({re.escape(head)}cv\d\.\d+/)", n))})
    return [*top[:-1], *branches]


def sensitivity(
    family: str,
    fp32: Path,
    ranges: Path,
    method: str,
    dataset: Path,
    checkpoint_info: Path,
    imgsz: int,
    target: float,
    max_images: int | None,
    out: Path,
    quant: dict,
    threads: int | None = None,
) -> dict:
    """Measure every block's effect and choose the smallest greedy float list that reaches `target`."""

    def mAP(onnx_file: Path, backend: str = "onnxruntime", precision: str = "int8") -> float:
        s = default_settings(imgsz, threads=threads, max_images=max_images)
        r = evaluate("m", family, onnx_file, checkpoint_info, backend, precision, dataset, "cpu", s)
        return r["map50_95"]

    with tempfile.TemporaryDirectory(prefix="planforge-sens-") as tmp:

        def quantized_map(keep: list[str]) -> float:
            path = Path(tmp) / "q.onnx"
            quantize(family, fp32, ranges, method, path, Path(tmp) / "q.json", keep, **quant)
            return mAP(path)

        base = mAP(fp32, precision="fp32")
        before = quantized_map([])
        per_block = {}
        for b in blocks(fp32):
            per_block[b] = quantized_map([b])
            print(f"{b}: mAP50-95 {per_block[b]:.4f} (all INT8: {before:.4f}, FP32: {base:.4f})", flush=True)
        keep: list[str] = []
        after = before
        for b in sorted(per_block, key=per_block.get, reverse=True):
            if after >= target * base or per_block[b] <= before:
                break
            trial = quantized_map([*keep, b])
            if trial > after:
                keep, after = [*keep, b], trial
    record = {
        "fp32_map50_95": base,
        "method": method,
        "images": max_images,
        "target_ratio": target,
        "before": {"map50_95": before, "ratio": before / base},
        "per_block_kept_float": {b: {"map50_95": v, "ratio": v / base} for b, v in per_block.items()},
        "keep_float": keep,
        "after": {"map50_95": after, "ratio": after / base},
    }
    write_json(out, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True)
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--ranges", type=Path, required=True, help="artifacts/calib/<model>/<method>.ranges.json")
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--checkpoint-info", type=Path, required=True)
    p.add_argument("--imgsz", type=int, required=True)
    p.add_argument("--target", type=float, default=0.99, help="wanted INT8/FP32 mAP50-95 ratio")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--activation-type", default="quint8", choices=["quint8", "qint8"])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    quant = {"activation_type": a.activation_type, "per_channel": True, "reduce_range": False}
    r = sensitivity(
        a.family, a.fp32, a.ranges, a.method, a.dataset, a.checkpoint_info, a.imgsz, a.target,
        a.max_images, a.out, quant, a.threads,
    )  # fmt: skip
    print(f"{a.out}: ratio {r['before']['ratio']:.4f} → {r['after']['ratio']:.4f} with keep_float {r['keep_float']}")


if __name__ == "__main__":
    run_cli(main)
