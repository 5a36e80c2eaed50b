"""PyTorch eager runner (FP32; FP16 on CUDA)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workflow_scripts.io import PlanforgeError
from workflow_scripts.runners import Runner


class TorchRunner(Runner):
    """Runs a torch.nn.Module that a model family loaded; `output_fn` picks its outputs."""

    backend = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        precision: str,
        device: str = "cpu",
        threads: int | None = None,
        options: dict | None = None,
        output_fn=None,
    ) -> None:
        super().__init__(model, precision, device, threads, options)
        if threads:
            torch.set_num_threads(int(threads))
        self.torch_device = torch.device(device)
        if precision == "fp16" and self.torch_device.type == "cpu":
            raise PlanforgeError("torch fp16 needs a CUDA device; remove fp16 from this CPU target's torch precisions")
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
        self.model = model.to(self.torch_device, self.dtype).eval()
        self.output_fn = output_fn or (lambda raw: raw)

    def prepare(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).to(self.torch_device, self.dtype)

    @torch.inference_mode()
    def infer(self, prepared: torch.Tensor) -> Any:
        out = self.output_fn(self.model(prepared))
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)
        return out

    def to_numpy(self, outputs: Any) -> list[np.ndarray]:
        outs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        return [o.detach().float().cpu().numpy() for o in outs]

    def versions(self) -> dict[str, str]:
        v = {"torch": torch.__version__, "torch_threads": str(torch.get_num_threads())}
        if self.torch_device.type == "cuda":
            v["cuda"] = str(torch.version.cuda)
        return v
