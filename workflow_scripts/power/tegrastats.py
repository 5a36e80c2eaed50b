"""Jetson power: `tegrastats --interval N` runs beside the timed loop; its lines give per-rail power.

Rails by module (instant/average mW per line):
- AGX Orin: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0 (no board-input rail: the total is their sum)
- Orin NX / Orin Nano: VDD_IN (module input), VDD_CPU_GPU_CV and VDD_SOC (parts of VDD_IN: the total
  is VDD_IN alone, never the sum)
plus GPU load and frequency (GR3D_FREQ) and temperatures (name@valueC). The power mode (nvpmodel)
and whether jetson_clocks pinned the clocks are recorded with every result.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from typing import Any

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.machine import power_mode
from workflow_scripts.power import Sampler, energy_summary, timed_window

AGX_ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
ORIN_NX_NANO_RAILS = ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC")
# "<RAIL> <inst>mW/<avg>mW" (JetPack 5/6); some releases add "/<max>mW"; older ones print "<RAIL> <inst>/<avg>".
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW/(\d+)mW(?:/(\d+)mW)?")
_RAIL_NO_UNIT = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)/(\d+)(?=\s|$)")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"(?<![\w%])([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CLOCKS = re.compile(r"^(\S+?):?\s.*?MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", re.M)


def parse_line(line: str) -> dict[str, Any] | None:
    """One tegrastats line → rails (instant/average mW), GR3D load %, GR3D MHz, temperatures °C, RAM MB."""
    rails = {name: {"instant_mw": int(i), "average_mw": int(a)} for name, i, a, _ in _RAIL.findall(line)}
    if not rails:
        rails = {name: {"instant_mw": int(i), "average_mw": int(a)} for name, i, a in _RAIL_NO_UNIT.findall(line)}
    gr3d = _GR3D.search(line)
    ram = _RAM.search(line)
    if not (rails or gr3d or ram):
        return None
    temps = {name: float(v) for name, v in _TEMP.findall(line) if float(v) > -40}  # -256C: sensor off
    return {
        "rails": rails,
        "gr3d_load_pct": int(gr3d.group(1)) if gr3d else None,
        "gr3d_mhz": [int(f) for f in gr3d.group(2).split(",")] if gr3d and gr3d.group(2) else None,
        "temperatures_c": temps,
        "ram_used_mb": int(ram.group(1)) if ram else None,
    }


def total_rails(rails: dict) -> list[str]:
    """Rails whose sum is the module's power: VDD_IN where it exists (NX/Nano), else the AGX Orin rails."""
    if "VDD_IN" in rails:
        return ["VDD_IN"]
    agx = [r for r in AGX_ORIN_RAILS if r in rails]
    if agx:
        return agx
    return ["POM_5V_IN"] if "POM_5V_IN" in rails else sorted(rails)


def jetson_clocks_state(text: str) -> dict[str, Any]:
    """From `jetson_clocks --show`: whether CPU and GPU clocks are pinned (min = max), and GPU Hz."""
    rows = {name: (int(lo), int(hi), int(cur)) for name, lo, hi, cur in _CLOCKS.findall(text)}
    cpus = [v for k, v in rows.items() if re.fullmatch(r"cpu\d+", k)]
    gpu = rows.get("GPU")
    return {
        "cpu_locked": all(lo == hi for lo, hi, _ in cpus) if cpus else None,
        "gpu_locked": (gpu[0] == gpu[1]) if gpu else None,
        "gpu_current_hz": gpu[2] if gpu else None,
    }


def read_jetson_clocks() -> dict[str, Any]:
    exe = shutil.which("jetson_clocks")
    if exe is None:
        return {"state": "unknown", "reason": "jetson_clocks not found"}
    try:
        out = subprocess.run([exe, "--show"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"state": "unknown", "reason": str(exc)}
    if out.returncode != 0:
        return {"state": "unknown", "reason": (out.stderr.strip() or "needs root").splitlines()[0]}
    return jetson_clocks_state(out.stdout)


def summarize(samples: list[dict], seconds: float, inferences: int) -> dict[str, Any]:
    """Mean power per rail and in total over the window, energy, energy per inference, inferences per joule."""
    rails = sorted({r for s in samples for r in s["rails"]})
    mean_mw = {
        r: sum(s["rails"][r]["instant_mw"] for s in samples if r in s["rails"])
        / max(1, sum(r in s["rails"] for s in samples))
        for r in rails
    }
    used = total_rails(mean_mw) if mean_mw else []
    mean_w = sum(mean_mw[r] for r in used) / 1e3 if used else None
    loads = [s["gr3d_load_pct"] for s in samples if s["gr3d_load_pct"] is not None]
    return {
        **energy_summary(mean_w, seconds, inferences, loads, [s["temperatures_c"] for s in samples], len(samples)),
        "total_rails": used,
        "rails_mean_mw": {r: round(v, 1) for r, v in mean_mw.items()},
    }


class TegrastatsSampler(Sampler):
    """Runs tegrastats (or $PLANFORGE_TEGRASTATS, e.g. 'sudo -n tegrastats') beside the timed loop."""

    name = "tegrastats"

    def __init__(self, interval_ms: int = 100, command: list[str] | None = None) -> None:
        self.interval_ms = interval_ms
        self.command = command or shlex.split(os.environ.get("PLANFORGE_TEGRASTATS", "tegrastats"))
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen | None = None
        self.t_start = self.t_stop = 0.0

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def start(self) -> None:
        if shutil.which(self.command[0]) is None:
            raise PlanforgeError(
                f"{self.command[0]}: not found; power: tegrastats needs a Jetson (or PLANFORGE_TEGRASTATS)"
            )
        self.proc = subprocess.Popen(
            [*self.command, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 5 + self.interval_ms / 1e3
        while not self.lines and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # the loop starts once tegrastats is printing
        if not self.lines:
            self.stop()
            raise PlanforgeError(f"{' '.join(self.command)}: printed nothing; check that it runs on this machine")
        self.t_start = time.monotonic()

    def stop(self) -> None:
        self.t_stop = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "reader", None) is not None:
            self.reader.join(timeout=5)

    def result(self, inferences: int) -> dict[str, Any]:
        window, short = timed_window([(t, parse_line(ln)) for t, ln in self.lines], self.t_start, self.t_stop)
        note = (
            "timed loop shorter than the tegrastats interval: one reading stands for the whole loop" if short else None
        )
        if window and not any(s["rails"] for s in window):
            note = "tegrastats printed no power rails (JetPack prints them for root: set PLANFORGE_TEGRASTATS)"
        return {
            "sampler": self.name,
            "interval_ms": self.interval_ms,
            **summarize(window, self.t_stop - self.t_start, inferences),
            "power_mode": power_mode(),
            "jetson_clocks": read_jetson_clocks(),
            "note": note,
        }


def make_sampler(interval_ms: int = 100, **_: object) -> Sampler:
    return TegrastatsSampler(interval_ms=interval_ms)
