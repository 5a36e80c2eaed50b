"""What a runner tells a family that drives its model itself (a tracker runs the model between host work, frame by
frame): how the runner holds the model and how it runs it. The runner builds it (`Runner.facts`), the task passes it
on, the family reads it; runners and families never import each other, and the family never asks which runner it
has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow_scripts.core.precisions import PRECISIONS, REFERENCE, Precision


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so a family may cache what it builds per runner
class RunnerFacts:
    backend: str
    precision: Precision = PRECISIONS[REFERENCE]  # the runner's parsed precision
    device: str = "cpu"
    # a torch module's runner: the module cast and placed, its compute dtype, and how the runner runs it
    module: Any = None
    dtype: Any = None  # torch.dtype
    mode: str | None = None  # eager | cudagraph | compile | compile-graph; None: the runner holds no torch module
    compile_mode: str | None = None
    compile_backend: str | None = None
    inductor_options: dict | None = None
    # an ONNX runner: the file it runs, that file's metadata (custom_metadata_map), and, where the runner runs graphs
    # a family keeps beside it (SAMURAI's parts), `open_parts(files)` → {name: session} with the runner's
    # providers and threads (None: the runner runs no such graphs)
    onnx: Path | None = None
    onnx_metadata: dict[str, str] = field(default_factory=dict)
    open_parts: Callable[[dict[str, Path]], dict[str, Any]] | None = None
    options: dict = field(default_factory=dict)  # the backend's options (targets.<t>.backend_options.<backend>)

    @classmethod
    def eager(cls, module) -> RunnerFacts:
        """A loaded torch module run as it is (a training script's or a test's model, not a runner's)."""
        p = next(module.parameters())
        return cls(backend="torch", device=str(p.device), module=module, dtype=p.dtype, mode="eager")
