"""The machine's load around a timed loop: what else was running while a bench row was measured.

`LoadProbe.start()` before the loop and `.stop()` after it return one dict (every value None where the
platform cannot say):

- `loadavg_1min_before` / `loadavg_1min_after`: `os.getloadavg()[0]`, the kernel's 1-minute load average
  (runnable + uninterruptible tasks, exponentially smoothed: it lags a burst by tens of seconds);
- `cpus`: `os.cpu_count()`; `cpus_usable`: the CPUs this process may run on (`os.sched_getaffinity`);
- `wall_s`: wall-clock seconds between start and stop;
- `machine_busy_cpu_s`: CPU-seconds all CPUs of the kernel's `/proc/stat` spent busy between start and stop:
  the deltas of user + nice + system + irq + softirq + steal on its `cpu` line, divided by `SC_CLK_TCK`
  (idle and iowait are not busy; guest time is already inside user/nice). In a container this is the
  host's, not the cgroup's;
- `self_cpu_s`: CPU-seconds this process used meanwhile, every thread, user + system (`os.times()`);
- `other_cpu_s`: `machine_busy_cpu_s - self_cpu_s`, floored at 0: CPU time other processes (and the
  hypervisor's steal) took while the loop ran. Resolution: one clock tick (`clock_tick_s`, usually 10 ms)
  per CPU, so on a loop of a fraction of a second it is coarse;
- `other_cpus_busy`: `other_cpu_s / wall_s`, the average number of CPUs other work kept busy. Near 0 is a
  quiet machine; near `cpus - threads` or above, the timed loop competed for its cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system [idle iowait] irq softirq steal (guest is inside user)


def _busy_ticks() -> int | None:
    try:
        first = PROC_STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    return sum(values[i] for i in BUSY_FIELDS if i < len(values))


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 3)
    except (OSError, AttributeError):
        return None


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _usable_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class LoadProbe:
    """Samples the load average, /proc/stat and this process's CPU time at start and at stop."""

    def start(self) -> LoadProbe:
        self.load_before = _loadavg()
        self.ticks = _busy_ticks()
        self.self_cpu = _self_cpu()
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        self_cpu = _self_cpu() - self.self_cpu
        ticks = _busy_ticks()
        try:
            tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        except (AttributeError, ValueError, OSError):
            tick_s = None
        busy = (ticks - self.ticks) * tick_s if ticks is not None and self.ticks is not None and tick_s else None
        other = max(0.0, busy - self_cpu) if busy is not None else None
        return {
            "loadavg_1min_before": self.load_before,
            "loadavg_1min_after": _loadavg(),
            "cpus": os.cpu_count(),
            "cpus_usable": _usable_cpus(),
            "wall_s": round(wall, 4),
            "machine_busy_cpu_s": round(busy, 3) if busy is not None else None,
            "self_cpu_s": round(self_cpu, 3),
            "other_cpu_s": round(other, 3) if other is not None else None,
            "other_cpus_busy": round(other / wall, 3) if other is not None and wall > 0 else None,
            "clock_tick_s": tick_s,
        }
