"""Power samplers: run beside a timed loop and report energy. They know nothing of models."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from workflow_scripts.core.registry import Registry, load_plugins


@dataclass(frozen=True)
class SamplerSpec:
    module: str  # provides make_sampler(**kwargs) -> Sampler
    reads: str  # what it measures, for the summary and the docs


SAMPLERS: Registry[SamplerSpec] = Registry("power sampler")
SAMPLERS.register("none", SamplerSpec("workflow_scripts.power.none", "nothing (no energy figures)"))
SAMPLERS.register("nvml", SamplerSpec("workflow_scripts.power.nvml", "GPU board power through NVML"))
SAMPLERS.register("tegrastats", SamplerSpec("workflow_scripts.power.tegrastats", "Jetson rails through tegrastats"))
SAMPLERS.register(
    "jtop", SamplerSpec("workflow_scripts.power.jtop_stats", "Jetson rails through jtop (jetson-stats, its service)")
)


class Sampler:
    """Start before the timed loop, stop after it; `result` gives mean power and energy or None."""

    name = "none"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def result(self, inferences: int) -> dict[str, Any]:
        """Energy per inference and mean power; None values where nothing was measured."""
        return {
            "sampler": self.name,
            "mean_power_w": None,
            "energy_j": None,
            "energy_per_inference_j": None,
            "inferences_per_joule": None,
        }


def get_sampler(name: str, **kwargs: Any) -> Sampler:
    """Sampler `name` (see SAMPLERS)."""
    module = importlib.import_module(SAMPLERS[name].module)
    return module.make_sampler(**kwargs)


load_plugins()  # last: a plugin module imports the names above
