"""Precisions and calibration methods: each name is parsed once, here, into what it means.

A precision name is what configs and file names say (`fp16`, `int8_minmax`, TensorRT's `best`).
Everything else — runners, the plan, engine settings, the summary — asks the parsed `Precision`
instead of looking at the string.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.core.io import PlanforgeError
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
    fallback: bool = False  # int8_<method>_fb: the QDQ model with the blocks that cost the gate kept in float

    @property
    def is_float(self) -> bool:
        return self.kind in ("fp32", "fp16", "bf16") and not self.mixed

    @property
    def int8_engine(self) -> bool:
        """A TensorRT engine that runs INT8 layers (needs a QDQ model or a calibration cache)."""
        return self.kind == "int8" and self.calibration is None and not self.weight_only

    @property
    def onnx_variant(self) -> str:
        """The ONNX file an ONNX-reading backend runs: floats run fp32.onnx (the provider casts), QDQ its own
        (for the u8s8 scheme; `qdq_variant` names it for another)."""
        return self.name if self.calibration else "fp32"

    @property
    def plain(self) -> str:
        """The INT8 precision a fallback variant starts from (int8_minmax_fb → int8_minmax); itself otherwise."""
        return f"int8_{self.calibration}" if self.fallback else self.name

    def qdq_variant(self, scheme: str) -> str:
        """The QDQ ONNX variant this precision runs under an INT8 scheme: int8_minmax, int8_minmax_u8u8_fb, …"""
        if not self.calibration:
            raise ValueError(f"{self.name} has no QDQ model")
        suffix = INT8_SCHEMES[scheme].suffix
        return f"int8_{self.calibration}{suffix}{'_fb' if self.fallback else ''}"


@dataclass(frozen=True)
class Int8Scheme:
    """Which integer types a QDQ model's activations and weights use (the CPU's instruction set picks it)."""

    name: str
    weight_type: str  # QuantType of the weights: qint8 (u8s8) or quint8 (u8u8)
    suffix: str  # in the QDQ variant's file name: "" for u8s8 (also what TensorRT reads), "_u8u8"
    label: str


INT8_SCHEMES: Registry[Int8Scheme] = Registry("INT8 scheme")
for _s in (
    Int8Scheme("u8s8", "qint8", "", "U8S8"),
    Int8Scheme("u8u8", "quint8", "_u8u8", "U8U8"),
):
    INT8_SCHEMES.register(_s.name, _s)


@dataclass(frozen=True)
class QdqVariant:
    """What a QDQ ONNX variant's name means: its calibration, scheme and whether it is the fallback model."""

    name: str
    calibration: str
    scheme: str
    fallback: bool

    @property
    def plain(self) -> str:
        """The variant the fallback starts from (int8_minmax_u8u8_fb → int8_minmax_u8u8)."""
        return self.name.removesuffix("_fb")

    @property
    def precision(self) -> str:
        return f"int8_{self.calibration}{'_fb' if self.fallback else ''}"


def qdq_variants(fallback: bool | None = None) -> list[str]:
    """Every QDQ variant name (for the rules' wildcards): only plain or only fallback ones when asked."""
    return [
        PRECISIONS[p].qdq_variant(s)
        for p in PRECISIONS
        if PRECISIONS[p].calibration and (fallback is None or PRECISIONS[p].fallback == fallback)
        for s in INT8_SCHEMES
    ]


def parse_variant(name: str) -> QdqVariant:
    """The meaning of a QDQ variant name, or a one-line error listing the known names."""
    for p in PRECISIONS.values():
        for s in INT8_SCHEMES if p.calibration else ():
            if p.qdq_variant(s) == name:
                return QdqVariant(name, p.calibration, s, p.fallback)
    raise PlanforgeError(f"unknown QDQ variant {name!r}; known: {qdq_variants()}")


PRECISIONS: Registry[Precision] = Registry("precision")
for _p in (
    Precision("fp32", "fp32"),
    Precision("fp16", "fp16"),
    Precision("bf16", "bf16"),
    Precision("int8", "int8"),  # TensorRT: explicit (QDQ) or implicit (cache), per target
    Precision("best", "int8", mixed=True),
    *(Precision(f"int8_{m}", "int8", calibration=m) for m in CALIBRATION_METHODS),
    # the automatic float-fallback variant of an int8_<method> row that misses the gate (rules/quantize.smk)
    *(Precision(f"int8_{m}_fb", "int8", calibration=m, fallback=True) for m in CALIBRATION_METHODS),
    Precision("int8_weight", "int8", weight_only=True),  # torchao Int8WeightOnlyConfig: int8 weights, float compute
    Precision("int4_weight", "int4", weight_only=True),  # torchao Int4WeightOnlyConfig: int4 weights, bf16 compute
):
    PRECISIONS.register(_p.name, _p)


def parse(name: str) -> Precision:
    """The parsed precision, or a one-line error listing the known names."""
    return PRECISIONS[name]
