"""A test-only backend in one module: ONNX Runtime with only its basic graph optimisations.

It proves that a backend is one module plus one registry entry: with PLANFORGE_PLUGINS naming this
module, the config accepts `onnxruntime-basic`, the plan schedules its bench and accuracy jobs, and
they run through the same bench/accuracy steps as every other backend. (It also answers a real
question: what ONNX Runtime's extended and layout optimisations buy over constant folding alone.)
"""

from __future__ import annotations

from workflow_scripts.core.precisions import PRECISIONS
from workflow_scripts.runners import BACKENDS, BackendSpec
from workflow_scripts.runners.ort_runner import OrtRunner

NAME = "onnxruntime-basic"


class OrtBasicRunner(OrtRunner):
    """ONNX Runtime's CPU provider, graph optimisation level `basic` unless the target says otherwise."""

    backend = NAME


BACKENDS.register(
    NAME,
    BackendSpec(
        module=__name__,
        cls="OrtBasicRunner",
        artifact="onnx",
        precisions=("fp32", *(p for p in PRECISIONS if PRECISIONS[p].calibration)),
        requires=("onnxruntime",),
        devices=("cpu",),
        options={"graph_optimization": "basic", "providers": ["CPUExecutionProvider"]},
    ),
)
