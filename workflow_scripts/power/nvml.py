"""NVML power sampler (nvidia-ml-py): power readings on a thread, plus the GPU's total-energy counter.

Energy comes from `nvmlDeviceGetTotalEnergyConsumption` (mJ since driver load, Volta and newer)
where the GPU has it; otherwise from integrating the sampled power over time.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.power import Sampler


def _nvml():
    try:
        import pynvml
    except ImportError:
        raise PlanforgeError("power: nvml needs the nvidia-ml-py package (pip install nvidia-ml-py)") from None
    return pynvml


class NvmlSampler(Sampler):
    """Samples board power every `interval_s` while the timed loop runs."""

    name = "nvml"

    def __init__(self, device: str = "cuda:0", interval_s: float = 0.01) -> None:
        self.nvml = _nvml()
        try:
            self.nvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses per cause
            raise PlanforgeError(f"power: nvml cannot start ({exc}); is the NVIDIA driver loaded?") from None
        index = int(device.split(":")[1]) if ":" in device else 0
        self.handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (seconds, watts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = self.t1 = 0.0
        self.e0 = self.e1 = None

    def _energy_mj(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # not supported on this GPU
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            watts = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            self.samples.append((time.perf_counter(), watts))
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self.e0 = self._energy_mj()
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.t1 = time.perf_counter()
        self.e1 = self._energy_mj()
        self._stop.set()
        if self._thread:
            self._thread.join()

    def result(self, inferences: int) -> dict[str, Any]:
        return energy_result(self.name, self.samples, self.t0, self.t1, self.e0, self.e1, inferences)


def energy_result(
    name: str,
    samples: list[tuple[float, float]],
    t0: float,
    t1: float,
    e0_mj: float | None,
    e1_mj: float | None,
    inferences: int,
) -> dict[str, Any]:
    """Mean power, energy (counter if present, else trapezoid over samples), per inference and per joule."""
    seconds = t1 - t0
    watts = [w for _, w in samples]
    mean_w = sum(watts) / len(watts) if watts else None
    if e0_mj is not None and e1_mj is not None and e1_mj > e0_mj:
        energy, source = (e1_mj - e0_mj) / 1000.0, "total_energy_counter"
    elif len(samples) >= 2:
        energy = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(samples, samples[1:]))
        source = "integrated_samples"
    else:
        energy, source = None, "none"
    return {
        "sampler": name,
        "samples": len(samples),
        "seconds": round(seconds, 4),
        "mean_power_w": round(mean_w, 3) if mean_w is not None else None,
        "max_power_w": round(max(watts), 3) if watts else None,
        "energy_j": round(energy, 4) if energy is not None else None,
        "energy_source": source,
        "energy_per_inference_j": round(energy / inferences, 6) if energy and inferences else None,
        "inferences_per_joule": round(inferences / energy, 3) if energy else None,
    }


def make_sampler(device: str = "cuda:0", **_: object) -> Sampler:
    return NvmlSampler(device if device.startswith("cuda") else "cuda:0")
