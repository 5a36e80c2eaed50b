"""CPU instruction sets, as far as INT8 cares: whether ONNX Runtime's u8s8 kernels saturate there.

On x86 without VNNI (AVX2, AVX-512 without VNNI, SSE) ONNX Runtime multiplies uint8 activations by int8
weights with VPMADDUBSW, which adds pairs of products into int16 and saturates; ONNX Runtime's and
OpenVINO's quantization docs warn of it, and dfine-demo lost 46 % of its mAP that way on an AVX2 EPYC
(DESIGN.md). VNNI and AMX accumulate in int32; ARM's kernels (with or without dotprod) widen first, and
GPUs do not run these kernels at all. A target's `cpu_isa` names one entry; unset, the plan reads the
machine it runs on (`local_isa`), or `dotprod` for a Jetson. The entry's `int8_scheme` is what the INT8
plan uses: `u8s8` where the kernels are exact, `u8u8` (weights as uint8 too, no VPMADDUBSW) where they
saturate; the measured alternative `reduce_range` kept less of dfine-demo's mAP (0.940 against 0.948).
"""

from __future__ import annotations

import functools
import json
import platform
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.core.registry import Registry


@dataclass(frozen=True)
class Isa:
    """An instruction-set class a CPU target declares (targets.<t>.cpu_isa) or the plan detects."""

    name: str
    arch: str  # x86_64 or aarch64
    flags: tuple[str, ...]  # /proc/cpuinfo flags that all mark it (the first matching entry wins)
    u8s8_saturates: bool  # ONNX Runtime's u8s8 integer kernels add products in int16 (VPMADDUBSW)
    label: str  # how the summary names it

    @property
    def int8_scheme(self) -> str:
        """The INT8 weight/activation scheme the plan quantizes for (core.precisions.INT8_SCHEMES)."""
        return "u8u8" if self.u8s8_saturates else "u8s8"


ISAS: Registry[Isa] = Registry("CPU instruction set")
for _isa in (
    Isa("amx", "x86_64", ("amx_int8",), False, "AMX"),
    Isa("avx512_vnni", "x86_64", ("avx512_vnni",), False, "AVX-512 VNNI"),
    Isa("avx_vnni", "x86_64", ("avx_vnni",), False, "AVX-VNNI"),
    Isa("avx512", "x86_64", ("avx512bw",), True, "AVX-512 without VNNI"),
    Isa("avx2", "x86_64", ("avx2",), True, "AVX2 without VNNI"),
    Isa("sse", "x86_64", (), True, "SSE without VNNI"),
    Isa("dotprod", "aarch64", ("asimddp",), False, "ARM dotprod"),
    Isa("arm64", "aarch64", (), False, "ARM without dotprod"),
):
    ISAS.register(_isa.name, _isa)

JETSON_ISA = "dotprod"  # every Orin's Cortex-A78AE has the dot-product extension


def isa_from_flags(arch: str, flags: set[str]) -> str:
    """The first entry of `arch` whose flags are all present."""
    arch = "aarch64" if arch in ("aarch64", "arm64") else "x86_64"
    for name, isa in ISAS.items():
        if isa.arch == arch and set(isa.flags) <= flags:
            return name
    raise AssertionError(f"no instruction set entry for {arch}")  # each arch ends with a flagless entry


@functools.cache
def local_isa() -> str:
    """The instruction set of the machine this runs on, from /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return isa_from_flags(platform.machine(), flags)


def int8_record(artifact: str | Path) -> dict | None:
    """The INT8 plan a QDQ model was made for (its sidecar JSON's `int8`: the ISA and the choice), for the bench
    and accuracy records of the rows that run it; None for any other artifact."""
    artifact = Path(artifact)
    sidecar = artifact.with_suffix(".json")
    if artifact.suffix != ".onnx" or not sidecar.is_file():
        return None
    return json.loads(sidecar.read_text()).get("int8")
