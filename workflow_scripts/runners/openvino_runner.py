"""OpenVINO runner (CPU): the `openvino` runtime reads the ONNX file directly.

FP32 runs fp32.onnx with inference precision pinned to f32 (OpenVINO would otherwise pick
bf16 on CPUs that have it). INT8 runs the same QDQ file ONNX Runtime runs (int8_<method>.onnx):
OpenVINO's low-precision transformations turn its Quantize/Dequantize pairs into INT8 kernels.
Options from the target: `performance_hint` (LATENCY default, or THROUGHPUT), `num_streams`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import Precision
from workflow_scripts.runners import Runner, by_name


class OpenVinoRunner(Runner):
    """Compiles an ONNX file for OpenVINO's CPU plugin and runs it with one infer request."""

    backend = "openvino"

    def __init__(
        self,
        model: str | Path,
        precision: Precision | str,
        device: str = "cpu",
        threads: int | None = None,
        options: dict | None = None,
    ) -> None:
        super().__init__(model, precision, device, threads, options)
        if device != "cpu":
            raise PlanforgeError(f"openvino backend runs on the CPU only, the target asks for {device!r}")
        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": self.options["performance_hint"],
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if self.options["num_streams"] is not None:
            config["NUM_STREAMS"] = str(self.options["num_streams"])
        try:
            self.compiled = core.compile_model(core.read_model(str(model)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long messages
            raise PlanforgeError(
                f"{model}: OpenVINO cannot compile it ({str(exc).strip().splitlines()[0][:200]})"
            ) from None
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)
        self.path = Path(model)  # the ONNX file (a family reads what it needs from it: Pi0's geometry)
        # a named-input model (Pi0) is fed by name, each input in the type the graph declares
        self.input_types = {i.get_any_name(): i.get_element_type().to_dtype() for i in self.compiled.inputs}

    def prepare(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        if isinstance(batch, dict):
            return by_name(batch, self.input_types, self.path)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def infer(self, prepared: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = prepared if isinstance(prepared, dict) else {0: prepared}
        result = self.request.infer(feed)  # synchronous: returns when the outputs are ready
        return [result[o] for o in self.outputs]

    def to_numpy(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.array(o, dtype=np.float32) for o in outputs]  # a copy: the request reuses its buffers

    def versions(self) -> dict[str, str]:
        return {"openvino": ov.__version__, "device": "CPU"}
