"""Jetson power through jtop (jetson-stats): its service reads the INA3221 rails; this client samples `jtop.stats`.

An alternative to tegrastats where jetson-stats is installed and its service runs (`systemctl status jtop`):
no root needed, and the same rails. `jtop.stats` (jetson_stats' jtop/jtop.py, property `stats`) is a flat
dict: 'Power <RAIL>' per rail and 'Power TOT' (mW; the module's input rail VDD_IN where it has one, else the
sum of the rails), 'GPU' (load %), 'Temp <sensor>' (°C, -256 when the sensor is off), 'jetson_clocks'
('ON'/'OFF') and 'nvp model' (the nvpmodel mode's name). The power mode (`nvpmodel -q`) and the
jetson_clocks state (`jetson_clocks --show`) are recorded as with tegrastats.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.machine import power_mode
from workflow_scripts.power import Sampler, energy_summary, timed_window
from workflow_scripts.power.tegrastats import read_jetson_clocks

TOTAL = "Power TOT"
INSTALL = (
    "power: jtop needs jetson-stats for this job's Python (sudo pip3 install -U jetson-stats) and its service "
    "running (sudo systemctl restart jtop.service); or use power: tegrastats"
)


def parse_stats(stats: dict[str, Any]) -> dict[str, Any] | None:
    """One `jtop.stats` dict → total and per-rail power (mW), GPU load %, temperatures °C, the two board states."""
    if TOTAL not in stats:
        return None
    rails = {k[len("Power ") :]: float(v) for k, v in stats.items() if k.startswith("Power ") and k != TOTAL}
    temps = {k[len("Temp ") :]: float(v) for k, v in stats.items() if k.startswith("Temp ") and float(v) > -40}
    gpu = stats.get("GPU")
    return {
        "total_mw": float(stats[TOTAL]),
        "rails": rails,
        "gpu_load_pct": float(gpu) if isinstance(gpu, (int, float)) else None,
        "temperatures_c": temps,
        "jetson_clocks": stats.get("jetson_clocks"),
        "nvp_model": stats.get("nvp model"),
    }


def summarize(samples: list[dict], seconds: float, inferences: int) -> dict[str, Any]:
    """Mean total power over the window, energy, energy per inference, inferences per joule, rails and loads."""
    mean_w = sum(s["total_mw"] for s in samples) / len(samples) / 1e3 if samples else None
    rails = sorted({r for s in samples for r in s["rails"]})
    loads = [s["gpu_load_pct"] for s in samples if s["gpu_load_pct"] is not None]
    return {
        **energy_summary(mean_w, seconds, inferences, loads, [s["temperatures_c"] for s in samples], len(samples)),
        "total_rails": [TOTAL],
        "rails_mean_mw": {
            r: round(sum(s["rails"][r] for s in samples if r in s["rails"]) / sum(r in s["rails"] for s in samples), 1)
            for r in rails
        },
        "jtop_board": {k: samples[-1][k] for k in ("jetson_clocks", "nvp_model")} if samples else None,
    }


class JtopSampler(Sampler):
    """A jtop client on a thread beside the timed loop, one `jetson.stats` reading per service update."""

    name = "jtop"

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self.readings: list[tuple[float, dict]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread: threading.Thread | None = None
        self.t_start = self.t_stop = 0.0

    def _run(self) -> None:
        try:
            from jtop import jtop

            with jtop(interval=self.interval_ms / 1e3) as jetson:
                while not self._stop.is_set() and jetson.ok():
                    self.readings.append((time.monotonic(), dict(jetson.stats)))
                    self._ready.set()
        except Exception as exc:  # jtop's JtopException when its service is down, and whatever it raises
            self.error = exc
        finally:
            self._ready.set()

    def start(self) -> None:
        import importlib.util

        if importlib.util.find_spec("jtop") is None:
            raise PlanforgeError(INSTALL)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._ready.wait(timeout=10 + self.interval_ms / 1e3)
        if self.error is not None or not self.readings:
            self.stop()
            raise PlanforgeError(f"{INSTALL} ({self.error or 'no reading within 10 s'})")
        self.t_start = time.monotonic()

    def stop(self) -> None:
        self.t_stop = time.monotonic()
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def result(self, inferences: int) -> dict[str, Any]:
        parsed = [(t, parse_stats(s)) for t, s in self.readings]
        window, short = timed_window(parsed, self.t_start, self.t_stop)
        note = "timed loop shorter than jtop's interval: one reading stands for the whole loop" if short else None
        if not any(p is not None for _, p in parsed):
            note = "jtop reported no 'Power TOT' (no INA3221 readable on this board?)"
        return {
            "sampler": self.name,
            "interval_ms": self.interval_ms,
            **summarize(window, self.t_stop - self.t_start, inferences),
            "power_mode": power_mode(),
            "jetson_clocks": read_jetson_clocks(),
            "note": note,
        }


def make_sampler(interval_ms: int = 200, **_: object) -> Sampler:
    return JtopSampler(interval_ms=interval_ms)
