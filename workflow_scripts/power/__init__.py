"""Power samplers: run beside a timed loop and report energy. They know nothing of models."""

from __future__ import annotations

import importlib
from typing import Any

SAMPLERS = {
    "none": "workflow_scripts.power.none",
    "nvml": "workflow_scripts.power.nvml",
    "tegrastats": "workflow_scripts.power.tegrastats",
}


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
    module = importlib.import_module(SAMPLERS[name])
    return module.make_sampler(**kwargs)
