"""Precisions and calibration methods: each name is parsed once, here, into what it means.

A precision name is what configs and file names say (`fp16`, `int8_minmax`, TensorRT's `best`).
Everything else — runners, the plan, engine settings, the summary — asks the parsed `Precision`
instead of looking at the string: no other module compares a precision name
(tests/test_architecture.py checks it). The runners receive the `Precision` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.registry import Registry

KINDS = ("fp32", "fp16", "bf16", "int8", "int4")  # numeric kinds
REFERENCE = "fp32"  # the precision every other is compared with (speed ratios, the float baseline)
# the float type a torch runner computes in, per kind (weight-only kinds: the activations' type)
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "float32", "int4": "bfloat16"}


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
class TensorrtFlags:
    """What TensorRT enables for a precision, for both builders: `BuilderFlag` members for the Python API (and ONNX
    Runtime's TensorRT execution provider), and the trtexec flags that mean the same."""

    builder: tuple[str, ...]  # tensorrt.BuilderFlag members, set in this order
    trtexec: tuple[str, ...]

    @property
    def fp16(self) -> bool:
        return "FP16" in self.builder

    @property
    def int8(self) -> bool:
        """INT8 layers: from the QDQ model's scales, or from a calibration cache where the engine reads one."""
        return "INT8" in self.builder


_FP16_INT8 = TensorrtFlags(("FP16", "INT8"), ("--fp16", "--int8"))
# The one table of TensorRT flags (precision name → flags). A QDQ model (int8_<method>) runs with FP16 and INT8 on:
# the scales in the graph fix the INT8 layers, the rest may take FP16 (ONNX Runtime's TensorRT provider).
TENSORRT_FLAGS: dict[str, TensorrtFlags] = {
    "fp32": TensorrtFlags((), ()),
    "fp16": TensorrtFlags(("FP16",), ("--fp16",)),
    "int8": TensorrtFlags(("INT8",), ("--int8",)),
    "best": TensorrtFlags(("FP16", "INT8"), ("--best",)),  # trtexec's --best: every precision the builder has
}


@dataclass(frozen=True)
class Precision:
    """What a precision name means."""

    name: str
    kind: str  # one of KINDS: the narrowest numeric type it computes in
    calibration: str | None = None  # int8_<method>: a QDQ model from that static calibration
    weight_only: bool = False  # weights stored narrow, activations in float
    mixed: bool = False  # TensorRT `best`: the builder picks int8, fp16 or fp32 per layer
    fallback: bool = False  # int8_<method>_fb: the QDQ model with the blocks that cost the gate kept in float

    def __str__(self) -> str:
        return self.name

    @property
    def is_float(self) -> bool:
        return self.kind in ("fp32", "fp16", "bf16") and not self.mixed

    @property
    def int8_engine(self) -> bool:
        """A TensorRT engine that runs INT8 layers (needs a QDQ model or a calibration cache)."""
        return self.kind == "int8" and self.calibration is None and not self.weight_only

    @property
    def is_fp32(self) -> bool:
        """FP32 itself: the export's own numbers (also `REFERENCE`, what every other precision is compared with)."""
        return self.name == "fp32"

    @property
    def is_int8(self) -> bool:
        """Computes in INT8 somewhere: a QDQ model, an INT8 TensorRT engine, `best`, or INT8 weight-only."""
        return self.kind == "int8"

    @property
    def weight_bits(self) -> int | None:
        """A weight-only precision's weight width (8 or 4 bits); None for any other."""
        return int(self.kind.removeprefix("int")) if self.weight_only else None

    @property
    def torch_dtype(self) -> str:
        """The `torch` dtype name a torch module runs in (a weight-only precision: the activations' float type)."""
        return TORCH_DTYPES[self.kind]

    @property
    def tensorrt(self) -> TensorrtFlags:
        """The TensorRT flags (`TENSORRT_FLAGS`; a QDQ model's: FP16 and INT8), or a one-line error."""
        if self.calibration:
            return _FP16_INT8
        if self.name not in TENSORRT_FLAGS:
            raise PlanforgeError(f"precision {self.name!r}: TensorRT does not build it; one of {list(TENSORRT_FLAGS)}")
        return TENSORRT_FLAGS[self.name]

    @property
    def onnx_variant(self) -> str:
        """The ONNX file an ONNX-reading backend runs: floats run fp32.onnx (the provider casts), QDQ its own
        (for the u8s8 scheme; `qdq_variant` names it for another)."""
        return self.name if self.calibration else "fp32"

    @property
    def fallback_variant(self) -> str:
        """The float-fallback precision of a QDQ precision (int8_minmax → int8_minmax_fb)."""
        if not self.calibration:
            raise ValueError(f"{self.name} has no QDQ model, so no fallback variant")
        return f"int8_{self.calibration}_fb"

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
TENSORRT_SCHEME = "u8s8"  # the QDQ variant an explicit-INT8 TensorRT engine is built from


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


def parse(name: str | Precision) -> Precision:
    """The parsed precision (a `Precision` passes through as it is), or a one-line error listing the known names."""
    return name if isinstance(name, Precision) else PRECISIONS[name]


def calibrated(method: str) -> Precision:
    """The QDQ precision of a calibration method (minmax → int8_minmax)."""
    return PRECISIONS[f"int8_{CALIBRATION_METHODS[method].name}"]


def known(name: str) -> Precision | None:
    """The parsed precision, or None for a name the registry lacks (a row from a plugin's backend)."""
    return PRECISIONS[name] if name in PRECISIONS else None


def is_int8_name(name: str) -> bool:
    """Whether a results row's precision computes in INT8: the registry says, else its name starts with int8."""
    p = known(name)
    return p.is_int8 if p else name.startswith("int8")
