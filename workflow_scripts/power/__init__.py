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


def timed_window(readings: list[tuple[float, Any]], t_start: float, t_stop: float) -> tuple[list, bool]:
    """The parsed readings (time, reading or None) taken during the timed loop; for a loop shorter than one
    interval, the first reading after it started stands for it (the flag says so)."""
    window = [r for t, r in readings if r is not None and t_start <= t <= t_stop]
    if window:
        return window, False
    return [r for t, r in readings if r is not None and t >= t_start][:1], True


def energy_summary(
    mean_w: float | None, seconds: float, inferences: int, loads: list[float], temperatures: list[dict], samples: int
) -> dict[str, Any]:
    """What every Jetson sampler reports from its mean power over the window: energy, energy per inference,
    inferences per joule, mean GPU load, the hottest reading per sensor."""
    energy = mean_w * seconds if mean_w is not None else None
    temps: dict[str, float] = {}
    for reading in temperatures:
        for k, v in reading.items():
            temps[k] = max(temps.get(k, v), v)
    return {
        "mean_power_w": round(mean_w, 4) if mean_w is not None else None,
        "energy_j": round(energy, 4) if energy is not None else None,
        "energy_per_inference_j": energy / inferences if energy and inferences else None,
        "inferences_per_joule": inferences / energy if energy else None,
        "gr3d_load_pct_mean": round(sum(loads) / len(loads), 1) if loads else None,
        "temperatures_max_c": temps,
        "samples": samples,
        "window_s": round(seconds, 4),
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
    module = importlib.import_module(SAMPLERS[name].module)
    return module.make_sampler(**kwargs)


load_plugins()  # last: a plugin module imports the names above
