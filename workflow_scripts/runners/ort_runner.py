"""ONNX Runtime runner (CPU execution provider; others come from the target's options)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import Precision, parse
from workflow_scripts.core.runner_facts import RunnerFacts
from workflow_scripts.runners import BACKENDS, Runner, by_name

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
    so.graph_optimization_level = GRAPH_LEVELS[options["graph_optimization"]]
    so.log_severity_level = 3
    return so


ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
    "tensor(int32)": np.int32,
}


class OrtRunner(Runner):
    """Runs an ONNX file in an InferenceSession."""

    backend = "onnxruntime"

    def __init__(
        self,
        model: str | Path,
        precision: Precision | str,
        device: str = "cpu",
        threads: int | None = None,
        options: dict | None = None,
    ) -> None:
        super().__init__(model, precision, device, threads, options)
        self.path = Path(model)  # the ONNX file (a family reads what it needs from it: Pi0's geometry)
        self.session = self.open_session(model)
        self.input_name = self.session.get_inputs()[0].name
        # every input the graph kept, with its numpy type (a named-input model, Pi0, feeds them by name)
        self.input_types = {i.name: ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def open_session(self, path: str | Path, spinning: bool = True) -> ort.InferenceSession:
        """An InferenceSession of an ONNX file with this runner's providers and threads (the model's own, and the
        files that travel with it: SAMURAI's parts); one line naming the file if it does not load.

        `spinning=False`: the intra-op threads sleep between runs instead of spinning, for graphs run between
        host work in the same process (SAMURAI's parts around its torch glue: spinning threads take the cores
        from the glue, which made a tiny tracker's frame 10× slower on 2 cores)."""
        so = session_options(self.threads, self.options)
        if not spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(path), so, providers=self.options["providers"])
        except Exception as exc:  # ORT raises its own exception types for a damaged model
            raise PlanforgeError(
                f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]}); rerun the export"
            ) from None

    def stop_spinning(self) -> ort.InferenceSession:
        """Reopen this runner's own session with sleeping intra-op threads (`open_session(spinning=False)`) and
        return it: a tracker that runs the model between host work uses it instead of opening a second copy."""
        if not getattr(self, "sleeping", False):
            self.session = self.open_session(self.path, spinning=False)
            self.sleeping = True
        return self.session

    def open_parts(self, files: dict[str, Path]) -> dict[str, ort.InferenceSession]:
        """Sessions of the graphs a family runs between its own host work (SAMURAI's parts; `files`: name → path),
        each with sleeping intra-op threads; this runner's own file is its session reopened so (`stop_spinning`),
        not opened a second time."""
        own = [name for name, f in files.items() if Path(f) == self.path]
        sessions = {name: self.open_session(f, spinning=False) for name, f in files.items() if name not in own}
        sessions.update({name: self.stop_spinning() for name in own})
        return sessions

    def build_facts(self) -> RunnerFacts:
        """The ONNX file, its metadata, and `open_parts` for the graphs that travel with it."""
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        return replace(super().build_facts(), onnx=self.path, onnx_metadata=meta, open_parts=self.open_parts)

    def prepare(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        if isinstance(batch, dict):
            return by_name(batch, self.input_types, self.path)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def infer(self, prepared: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = prepared if isinstance(prepared, dict) else {self.input_name: prepared}
        return self.session.run(self.output_names, feed)

    def to_numpy(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": ort.__version__, "providers": ",".join(self.session.get_providers())}


def gpu_providers(precision: Precision | str, device: str, options: dict) -> list[tuple[str, dict]]:
    """ONNX Runtime execution providers, with their options, for a CUDA target (first one wins per node).

    `options["execution_providers"]` orders them (default: tensorrt, cuda, cpu). The TensorRT EP gets the
    precision's TensorRT flags (`Precision.tensorrt`: FP16 for fp16; FP16 and INT8 for the QDQ models, explicit
    quantization: the scales are in the graph), and an engine cache so its engines are built once per machine.
    """
    device_id = int(device.split(":")[1]) if ":" in device else 0
    options = {**BACKENDS["onnxruntime-gpu"].options, **options}
    order = options["execution_providers"]
    flags = parse(precision).tensorrt
    providers = []
    for name in order:
        if name == "tensorrt":
            trt_options = {
                "device_id": device_id,
                "trt_fp16_enable": flags.fp16,
                "trt_int8_enable": flags.int8,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": options["trt_engine_cache_path"],
                "trt_timing_cache_enable": True,
                "trt_max_workspace_size": int(options["workspace_mib"]) * 1024 * 1024,
            }
            if options["int8_calibration_table"]:  # ORT's own table, for a float model with implicit INT8
                trt_options["trt_int8_calibration_table_name"] = options["int8_calibration_table"]
                trt_options["trt_int8_use_native_calibration_table"] = False
            providers.append(("TensorrtExecutionProvider", trt_options))
        elif name == "cuda":
            providers.append(
                ("CUDAExecutionProvider", {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"})
            )
        elif name == "cpu":
            providers.append(("CPUExecutionProvider", {}))
        else:
            raise PlanforgeError(
                f"backend_options.onnxruntime-gpu.execution_providers: {name!r} is not one of ['tensorrt', 'cuda', 'cpu']"
            )
    return providers


class OrtGpuRunner(OrtRunner):
    """ONNX Runtime with the TensorRT and CUDA execution providers (needs the onnxruntime-gpu wheel)."""

    backend = "onnxruntime-gpu"

    def __init__(self, model, precision, device="cuda", threads=None, options=None) -> None:
        precision = parse(precision)
        providers = gpu_providers(precision, device, dict(options or {}))
        available = set(ort.get_available_providers())
        missing = [name for name, _ in providers if name not in available]
        if missing:
            raise PlanforgeError(
                f"onnxruntime-gpu: execution provider {missing[0]} is not available on this machine "
                f"(available: {sorted(available)}); install onnxruntime-gpu"
            )
        super().__init__(model, precision, device, threads, {**(options or {}), "providers": providers})
