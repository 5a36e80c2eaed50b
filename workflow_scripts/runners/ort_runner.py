"""ONNX Runtime runner (CPU execution provider; others come from the target's options)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from workflow_scripts.io import PlanforgeError
from workflow_scripts.runners import Runner

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int | None, options: dict) -> ort.SessionOptions:
    """SessionOptions from the target's settings (threads, graph optimisation level)."""
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = GRAPH_LEVELS[options.get("graph_optimization", "all")]
    so.log_severity_level = 3
    return so


class OrtRunner(Runner):
    """Runs an ONNX file in an InferenceSession."""

    backend = "onnxruntime"

    def __init__(
        self,
        model: str | Path,
        precision: str,
        device: str = "cpu",
        threads: int | None = None,
        options: dict | None = None,
    ) -> None:
        super().__init__(model, precision, device, threads, options)
        providers = self.options.get("providers", ["CPUExecutionProvider"])
        try:
            self.session = ort.InferenceSession(str(model), session_options(threads, self.options), providers=providers)
        except Exception as exc:  # ORT raises its own exception types for a damaged model
            raise PlanforgeError(
                f"{model}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]}); rerun the export"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(batch, dtype=np.float32)

    def infer(self, prepared: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: prepared})

    def to_numpy(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": ort.__version__, "providers": ",".join(self.session.get_providers())}
