"""Precisions and calibration methods: each name is parsed once, here, into what it means.

A precision name is what configs and file names say (`fp16`, `int8_minmax`, TensorRT's `best`).
Everything else — runners, the plan, engine settings, the summary — asks the parsed `Precision`
instead of looking at the string.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.core.registry import Registry

KINDS = ("fp32", "fp16", "bf16", "int8", "int4")  # numeric kinds


@dataclass(frozen=True)
class CalibrationMethod:
    """A static INT8 calibration method: how activation ranges are found from the calib split."""

    name: str
    settings: tuple[str, ...]  # quantize.calibration keys that change its ranges (the rest do not)
    ort_method: str  # onnxruntime.quantization.CalibrationMethod member
    trt_algorithm: str  # the algorithm name in a TensorRT calibration cache header
    extra_options: tuple[str, ...] = ()  # settings passed to ORT's calibrator as extra options


CALIBRATION_METHODS: Registry[CalibrationMethod] = Registry("calibration method")
for _m in (
    CalibrationMethod("minmax", ("images",), "MinMax", "MinMaxCalibration"),
    CalibrationMethod("entropy", ("images", "num_bins"), "Entropy", "EntropyCalibration2", ("num_bins",)),
    CalibrationMethod(
        "percentile",
        ("images", "num_bins", "percentile"),
        "Percentile",
        "EntropyCalibration2",
        ("num_bins", "percentile"),
    ),
):
    CALIBRATION_METHODS.register(_m.name, _m)


@dataclass(frozen=True)
class Precision:
    """What a precision name means."""

    name: str
    kind: str  # one of KINDS: the narrowest numeric type it computes in
    calibration: str | None = None  # int8_<method>: a QDQ model from that static calibration
    weight_only: bool = False  # weights stored narrow, activations in float
    mixed: bool = False  # TensorRT `best`: the builder picks int8, fp16 or fp32 per layer

    @property
    def is_float(self) -> bool:
        return self.kind in ("fp32", "fp16", "bf16") and not self.mixed

    @property
    def int8_engine(self) -> bool:
        """A TensorRT engine that runs INT8 layers (needs a QDQ model or a calibration cache)."""
        return self.kind == "int8" and self.calibration is None and not self.weight_only

    @property
    def onnx_variant(self) -> str:
        """The ONNX file an ONNX-reading backend runs: floats run fp32.onnx (the provider casts), QDQ its own."""
        return self.name if self.calibration else "fp32"


PRECISIONS: Registry[Precision] = Registry("precision")
for _p in (
    Precision("fp32", "fp32"),
    Precision("fp16", "fp16"),
    Precision("bf16", "bf16"),
    Precision("int8", "int8"),  # TensorRT: explicit (QDQ) or implicit (cache), per target
    Precision("best", "int8", mixed=True),
    *(Precision(f"int8_{m}", "int8", calibration=m) for m in CALIBRATION_METHODS),
    Precision("int8_weight", "int8", weight_only=True),  # torchao Int8WeightOnlyConfig: int8 weights, float compute
    Precision("int4_weight", "int4", weight_only=True),  # torchao Int4WeightOnlyConfig: int4 weights, bf16 compute
):
    PRECISIONS.register(_p.name, _p)


def parse(name: str) -> Precision:
    """The parsed precision, or a one-line error listing the known names."""
    return PRECISIONS[name]
