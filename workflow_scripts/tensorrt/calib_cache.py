"""TensorRT INT8 calibration caches: the text files `trtexec --calib` and `IInt8Calibrator` read.

The format, as TensorRT writes it from `writeCalibrationCache`:

    TRT-100300-EntropyCalibration2
    images: 3c010204
    /model.0/conv/Conv_output_0: 3d8e2a5c

The header is `TRT-<getInferLibVersion()>-<algorithm>` (10.3.0 → 100300, 8.6.1 → 8601);
each further line is `<tensor name>: <scale>`, the scale being the big-endian IEEE-754
float32 of absmax / 127, as 8 hex digits. TensorRT takes the tensor's dynamic range as
[-127 × scale, 127 × scale]. ONNX Runtime's `write_calibration_table` writes a different
format (ORT's TensorRT EP format, `name absmax`), so this module writes it by hand.

A tensor whose calibrated range is [0, 0] (a constant such as a Clip bound 0.0) or not finite has no
usable scale, and is left out of the cache rather than written with scale 0 or inf: that is what
TensorRT's own calibrator does. It cannot make a scale for a uniformly zero tensor ("Tensor … is
uniformly zero", NVIDIA/TensorRT#1102), and for a tensor the cache does not name the builder warns
"Missing scale and zero-point for tensor …, expect fall back to non-int8 implementation for any layer
consuming or producing given tensor" (NVIDIA/TensorRT#3131), which is right for a constant. A scale of
0 instead breaks the build (NVIDIA/TensorRT#1826, #3020). The smallest positive scale would also be
exact for an all-zero tensor, but it claims a range nothing measured; leaving it out says so.
"""

from __future__ import annotations

import argparse
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, atomic_path, run_cli
from workflow_scripts.core.precisions import CALIBRATION_METHODS

# percentile ranges go under the entropy header: trtexec's own calibrator is an EntropyCalibrator2,
# and TensorRT ignores a cache whose header names another algorithm than the calibrator's
DEFAULT_TRT_VERSION = 100300  # TensorRT 10.3.0, as getInferLibVersion() reports it
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


def encode_scale(scale: float) -> str:
    """8 hex digits: the big-endian IEEE-754 float32 of `scale`."""
    return struct.pack(">f", scale).hex()


def decode_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def scale_from_range(lo: float, hi: float) -> float:
    """TensorRT's symmetric INT8 scale for an activation range: absmax / 127."""
    absmax = max(abs(float(lo)), abs(float(hi)))
    if not math.isfinite(absmax):
        raise ValueError(f"range [{lo}, {hi}] is not finite")
    return absmax / 127.0


def unusable_range(lo: float, hi: float) -> str | None:
    """Why a range gives no INT8 scale TensorRT can use (it is then left out of the cache), or None."""
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        return f"range [{lo}, {hi}] is not finite"
    if decode_scale(encode_scale(max(abs(float(lo)), abs(float(hi))) / 127.0)) <= 0.0:  # also one float32 rounds to 0
        return f"range [{lo}, {hi}] is zero (a constant or an all-zero tensor)"
    return None


@dataclass
class CalibrationCache:
    """Per-tensor INT8 scales plus the header TensorRT checks (library version, algorithm)."""

    algorithm: str  # EntropyCalibration2 or MinMaxCalibration
    version: int = DEFAULT_TRT_VERSION
    scales: dict[str, float] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # tensor → why it has no scale (not written)

    @classmethod
    def from_ranges(
        cls, ranges: dict[str, tuple[float, float]], method: str, version: int = DEFAULT_TRT_VERSION
    ) -> CalibrationCache:
        """A cache from activation ranges (tensor → (min, max)) calibrated by `method` (minmax/entropy/percentile).

        Zero and non-finite ranges are left out (`left_out` says which and why), as TensorRT's calibrator does."""
        algorithm = CALIBRATION_METHODS[method].trt_algorithm  # an unknown method is a one-line error
        cache = cls(algorithm, version)
        for name, (lo, hi) in ranges.items():
            why = unusable_range(lo, hi)
            if why:
                cache.left_out[name] = why
            else:
                cache.scales[name] = scale_from_range(lo, hi)
        return cache

    def bad_scales(self) -> dict[str, float]:
        """Scales TensorRT cannot use: zero, negative or not finite (none in a cache this module writes)."""
        return {n: s for n, s in self.scales.items() if not (math.isfinite(s) and s > 0.0)}

    def dumps(self) -> str:
        bad = self.bad_scales()
        if bad:
            name, scale = next(iter(bad.items()))
            raise PlanforgeError(f"calibration cache: tensor {name!r} has scale {scale}; leave it out instead")
        lines = [f"TRT-{self.version}-{self.algorithm}"]
        lines += [f"{name}: {encode_scale(scale)}" for name, scale in self.scales.items()]
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(self.dumps())

    @classmethod
    def parse(cls, text: str, source: str = "<cache>") -> CalibrationCache:
        lines = text.splitlines()
        m = _HEADER.match(lines[0].strip()) if lines else None
        if not m:
            raise PlanforgeError(
                f"{source}: not a TensorRT calibration cache (first line must be TRT-<version>-<algo>)"
            )
        cache = cls(m.group(2), int(m.group(1)))
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            entry = _LINE.match(line.rstrip())
            if not entry:
                raise PlanforgeError(f"{source}:{n}: expected `<tensor>: <8 hex digits>`, got {line[:60]!r}")
            cache.scales[entry.group(1)] = decode_scale(entry.group(2))
        return cache

    @classmethod
    def read(cls, path: str | Path) -> CalibrationCache:
        p = Path(path)
        try:
            return cls.parse(p.read_text(), str(p))
        except OSError as exc:
            raise PlanforgeError(f"{p}: cannot read calibration cache ({exc.strerror})") from None

    def dynamic_range(self, name: str) -> tuple[float, float]:
        """The [-absmax, absmax] TensorRT derives from a tensor's scale."""
        r = self.scales[name] * 127.0
        return -r, r


def read_ort_ranges(path: str | Path) -> dict[str, tuple[float, float]]:
    """tensor → (min, max) from ONNX Runtime's calibration ranges JSON (`save_tensors_data`)."""
    import numpy as np
    from onnxruntime.quantization import load_tensors_data

    p = Path(path)
    try:
        data = load_tensors_data(p)
    except (OSError, ValueError, KeyError) as exc:
        raise PlanforgeError(f"{p}: not an ONNX Runtime calibration ranges file ({exc}); rerun calibrate") from None
    return {name: (float(np.min(td.range_value[0])), float(np.max(td.range_value[1]))) for name, td in data.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranges", type=Path, required=True, help="ONNX Runtime ranges JSON written by calibrate")
    p.add_argument("--method", required=True, choices=CALIBRATION_METHODS.names())
    p.add_argument("--trt-version", type=int, default=DEFAULT_TRT_VERSION, help="e.g. 100300 for TensorRT 10.3.0")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    cache = CalibrationCache.from_ranges(read_ort_ranges(a.ranges), a.method, a.trt_version)
    cache.write(a.out)
    for name, why in cache.left_out.items():
        print(f"{name}: left out ({why}); TensorRT runs the layers that read it in float")
    print(
        f"{a.out}: TRT-{cache.version}-{cache.algorithm}, {len(cache.scales)} tensors, {len(cache.left_out)} left out"
    )


if __name__ == "__main__":
    run_cli(main)
