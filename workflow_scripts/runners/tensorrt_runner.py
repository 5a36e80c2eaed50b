"""TensorRT runner: a serialized engine (.plan) run through the TensorRT 10 Python API.

Device buffers are torch CUDA tensors; `infer` enqueues `execute_async_v3` on one stream (or
replays a CUDA graph of it with `backend_options.tensorrt.cuda_graph: true`), records CUDA events
around it and synchronises. An engine is refused before it is deserialized when its sidecar names
another GPU or TensorRT version than this machine's.

An engine has one optimisation profile (see engines.engine_settings): batches smaller than its
minimum are padded, larger ones are split into chunks of its maximum, so the accuracy loop can run
any batch on the engine built for the target's largest batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import Precision
from workflow_scripts.runners import Runner
from workflow_scripts.tensorrt import engines


@dataclass
class Chunk:
    """One execution: its valid rows, its (padded) input and its output buffers, maybe a CUDA graph."""

    rows: int
    inputs: Any
    outputs: dict[str, Any]
    graph: Any = None
    events: tuple[Any, Any] | None = None
    shape: tuple[int, ...] = field(default=())


class TensorrtRunner(Runner):
    backend = "tensorrt"

    def __init__(
        self,
        model: str | Path,
        precision: Precision | str,
        device: str = "cuda",
        threads: int | None = None,
        options: dict | None = None,
    ) -> None:
        super().__init__(model, precision, device, threads, options)
        self.path = Path(model)
        # Refuse a foreign engine before touching CUDA: the message names both machines and the fix.
        self.meta = engines.check_engine(self.path, engines.machine_identity())
        import tensorrt as trt
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise PlanforgeError(f"{self.path}: TensorRT needs a CUDA device; this target's device is {device!r}")
        self.trt, self.torch = trt, torch
        self.device = torch.device(device)
        torch.cuda.set_device(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)  # must outlive the runtime and the engine
        self.runtime = trt.Runtime(self.logger)
        dla = self.meta["settings"].get("dla_core")
        if dla is not None:
            self.runtime.DLA_core = int(dla)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise PlanforgeError(
                f"{self.path}: TensorRT cannot deserialize it; rebuild: {engines.rebuild_command(model)}"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        self.input_name = next(n for n in names if modes[n] == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.stream = torch.cuda.Stream(self.device)
        self.cuda_graph = bool(self.options["cuda_graph"])
        self.device_times_ms = []
        self._bound: Chunk | None = None

    def _torch_dtype(self, name: str) -> Any:
        np_dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
        return self.torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype

    def _bind(self, chunk: Chunk) -> None:
        if self._bound is chunk:
            return
        self.context.set_input_shape(self.input_name, chunk.shape)
        self.context.set_tensor_address(self.input_name, chunk.inputs.data_ptr())
        for name, buf in chunk.outputs.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        self._bound = chunk

    def _chunk(self, rows: np.ndarray) -> Chunk:
        torch = self.torch
        n = len(rows)
        padded = max(n, self.min_batch)
        if padded > n:  # the profile's minimum is larger than this batch: pad with zeros, drop them after
            rows = np.concatenate([rows, np.zeros((padded - n, *rows.shape[1:]), rows.dtype)])
        host = torch.from_numpy(np.ascontiguousarray(rows)).to(self._torch_dtype(self.input_name))
        with torch.cuda.stream(self.stream):  # copies and buffers ordered on the stream TensorRT runs on
            inputs = host.to(self.device)
            self.context.set_input_shape(self.input_name, tuple(inputs.shape))
            outputs = {
                name: torch.empty(
                    tuple(self.context.get_tensor_shape(name)), dtype=self._torch_dtype(name), device=self.device
                )
                for name in self.output_names
            }
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        chunk = Chunk(n, inputs, outputs, events=events, shape=tuple(inputs.shape))
        self._bound = None
        self._bind(chunk)
        # One plain run first: TensorRT applies deferred shape work there, and a graph must not capture it.
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        if self.cuda_graph:
            chunk.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(chunk.graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
        return chunk

    def prepare(self, batch: np.ndarray) -> list[Chunk]:
        batch = np.asarray(batch, dtype=np.float32)
        return [self._chunk(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]

    def infer(self, prepared: list[Chunk]) -> list[Chunk]:
        for chunk in prepared:
            start, end = chunk.events
            if chunk.graph is None:
                self._bind(chunk)
            start.record(self.stream)
            if chunk.graph is not None:
                chunk.graph.replay()
            else:
                self.context.execute_async_v3(self.stream.cuda_stream)
            end.record(self.stream)
        self.stream.synchronize()
        self.device_times_ms.append(sum(c.events[0].elapsed_time(c.events[1]) for c in prepared))
        return prepared

    def to_numpy(self, outputs: list[Chunk]) -> list[np.ndarray]:
        return [
            np.concatenate([c.outputs[name][: c.rows].float().cpu().numpy() for c in outputs])
            for name in self.output_names
        ]

    def versions(self) -> dict[str, str]:
        return {
            "tensorrt": self.trt.__version__,
            "engine": str(self.path),
            "engine_builder": str(self.meta.get("builder")),
            "engine_profile": f"{self.min_batch}..{self.max_batch}",
            "cuda_graph": str(self.cuda_graph),
            **({"dla_layers": _placement(self.meta["dla_layers"])} if self.meta.get("dla_layers") else {}),
        }


def _placement(layers: dict) -> str:
    """'DLA 2, GPU 6 (build log)' from the sidecar's dla_layers."""
    if layers.get("dla") is None:
        return f"unknown ({layers.get('reason')})"
    return f"DLA {layers['dla']}, GPU {layers['gpu']} ({layers['source']})"
