"""Quantize an FP32 ONNX model to INT8 QDQ from calibrated activation ranges.

Weights: per-channel MinMax, int8 (U8S8), or uint8 (U8U8) where the targets' CPUs have no VNNI and ONNX
Runtime's u8s8 kernels saturate (core/isa.py); the sidecar JSON names the instruction sets and the choice
(`int8.choice`, e.g. "AVX2 without VNNI: U8U8"). Activations: the ranges `calibrate` wrote
(minmax, entropy or percentile). Nodes the model family keeps in float (its readable
`QUANT_EXCLUDE` rule: for YOLO the box decode tail) and nodes the config lists under the
model's `keep_float` stay FP32, so the box outputs are never squeezed into 8 bits.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from workflow_scripts.core.envinfo import library_versions
from workflow_scripts.core.io import PlanforgeError, atomic_path, run_cli, write_json
from workflow_scripts.core.isa import ISAS
from workflow_scripts.core.precisions import CALIBRATION_METHODS, INT8_SCHEMES
from workflow_scripts.models import get_family
from workflow_scripts.plan.settings import QuantizeSettings


def excluded_nodes(family: str, model, keep_float: list[str], fallback: list[str] = ()) -> dict[str, list[str]]:
    """Nodes kept in float, by reason: the family's rule, the config's list (which must name real nodes) and the
    blocks a float-fallback search chose."""
    fam = get_family(family)
    names = {n.name for n in model.graph.node}
    unknown = [n for n in keep_float if n not in names and not any(x.startswith(n) for x in names)]
    if unknown:
        raise PlanforgeError(
            f"config key models.<model>.keep_float: {unknown[0]!r} is no node (or node-name prefix) of the model"
        )
    by_rule = fam.quant_exclude(model) if hasattr(fam, "quant_exclude") else {}
    config = sorted({x for x in names for k in keep_float if x == k or x.startswith(k)})
    chosen = sorted({x for x in names for k in fallback if x == k or x.startswith(k)})
    return {**by_rule, "config keep_float": config, **({"float fallback": chosen} if fallback else {})}


def int8_plan(isa: dict[str, str], scheme: str, reduce_range: bool, fallback: list[str] | None = None) -> dict:
    """The INT8 plan a QDQ model was made for, as the sidecar, accuracy JSON and summary name it."""
    isas = sorted(set(isa.values()))
    fix = INT8_SCHEMES[scheme].label + (" + reduce_range" if reduce_range else "")
    if fallback:
        fix += f" + float fallback of {len(fallback)} block{'s' if len(fallback) != 1 else ''}"
    where = ", ".join(ISAS[i].label for i in isas) or "no CPU target"
    return {
        "isa": isa,
        "u8s8_saturates": {i: ISAS[i].u8s8_saturates for i in isas},
        "scheme": scheme,
        "reduce_range": reduce_range,
        "fallback_blocks": list(fallback or []),
        "choice": f"{where}: {fix}",
    }


def quantize(
    family: str,
    fp32: Path,
    ranges: Path,
    method: str,
    out: Path,
    report: Path,
    keep_float: list[str],
    activation_type: str,
    per_channel: bool,
    reduce_range: bool,
    weight_type: str = "qint8",
    scheme: str = "u8s8",
    isa: dict[str, str] | None = None,
    fallback: list[str] | None = None,
) -> dict:
    """Write `out` (QDQ ONNX) from `fp32` and the ranges file; a report JSON beside it."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, load_tensors_data, quantize_static

    model = onnx.load(str(fp32))
    groups = excluded_nodes(family, model, keep_float, fallback or [])
    exclude = sorted({n for names in groups.values() for n in names})
    enum = getattr(CalibrationMethod, CALIBRATION_METHODS[method].ort_method)
    stored = load_tensors_data(ranges).calibration_method
    if stored != enum:
        raise PlanforgeError(f"{ranges}: ranges were calibrated with {stored}, not {method}; rerun calibrate")
    types = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
    act = types[activation_type]
    t0 = time.perf_counter()
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="planforge-quant-") as work:
        # a private copy: ORT writes and deletes `<model>-inferred.onnx` beside its input, which races
        # with another quantize job reading the same fp32.onnx
        private = Path(work) / "model.onnx"
        shutil.copyfile(fp32, private)
        quantize_static(
            str(private),
            str(tmp),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=act,
            weight_type=types[weight_type],
            nodes_to_exclude=exclude,
            calibrate_method=enum,
            calibration_cache_path=str(ranges),
        )
        qmodel = onnx.load(str(tmp))
        onnx.checker.check_model(qmodel)
        ops = [n.op_type for n in qmodel.graph.node]
    record = {
        "source": str(fp32),
        "ranges": str(ranges),
        "format": "QDQ",
        "activations": {"method": method, "type": activation_type},
        "weights": {"method": "minmax", "type": weight_type, "per_channel": per_channel, "reduce_range": reduce_range},
        "int8": int8_plan(isa or {}, scheme, reduce_range, fallback),
        "kept_float": {k: v for k, v in groups.items()},
        "kept_float_count": len(exclude),
        "quantize_linear_nodes": ops.count("QuantizeLinear"),
        "dequantize_linear_nodes": ops.count("DequantizeLinear"),
        "size_bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 2),
        "libraries": library_versions(("onnxruntime", "onnx")),
    }
    write_json(report, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True)
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--ranges", type=Path, required=True, help="ONNX Runtime tensor ranges written by calibrate")
    p.add_argument("--method", required=True, choices=CALIBRATION_METHODS.names())
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.QuantizeSettings")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    a = p.parse_args(argv)
    s = QuantizeSettings.from_json(a.settings)
    r = quantize(
        a.family,
        a.fp32,
        a.ranges,
        a.method,
        a.out,
        a.report,
        s.keep_float,
        s.activation_type,
        s.per_channel,
        s.reduce_range,
        s.weight_type,
        s.scheme,
        s.isa,
    )
    print(
        f"{a.out}: {r['int8']['choice']}; {r['quantize_linear_nodes']} QuantizeLinear, "
        f"{r['kept_float_count']} nodes kept in float"
    )


if __name__ == "__main__":
    run_cli(main)
