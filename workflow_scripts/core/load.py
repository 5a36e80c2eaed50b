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
- `usable_busy_cpu_s`: the same, summed over the `cpuN` lines of the usable CPUs only (equal to the machine's
  where this process may run everywhere);
- `self_cpu_s`: CPU-seconds this process used meanwhile, every thread, user + system (`os.times()`); with
  `LoadProbe(children=True)`, also its children that ended meanwhile (trtexec, which the bench waits for);
- `other_cpu_s`: `usable_busy_cpu_s - self_cpu_s`, floored at 0: CPU time other processes (and the
  hypervisor's steal) took on the CPUs this process may run on while the loop ran. Resolution: one clock tick
  (`clock_tick_s`, usually 10 ms) per CPU, so on a loop of a fraction of a second it is coarse;
- `other_cpus_busy`: `other_cpu_s / wall_s`, the average number of those CPUs other work kept busy. Near 0 is
  a quiet machine; a good share of `cpus_usable` means the timed loop competed for its cores (the bench's
  verdict: `contention_verdict`, limit `bench.stability.max_other_cpus` × `cpus_usable`).

`wait_for_quiet` polls the same counters, with nothing of the bench running, until other processes leave
the CPUs (bounded); `GpuProbe` asks NVML which other processes used the GPU during the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

PROC_STAT = Path("/proc/stat")
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system [idle iowait] irq softirq steal (guest is inside user)


def _busy(values: list[str]) -> int:
    ints = [int(v) for v in values]
    return sum(ints[i] for i in BUSY_FIELDS if i < len(ints))


def busy_ticks(cpus: set[int] | None = None, stat: Path = PROC_STAT) -> tuple[int | None, int | None]:
    """Busy clock ticks since boot: (all CPUs, the CPUs in `cpus`); the second is the first where `cpus` is None
    or a CPU of it has no line. (None, None) where /proc/stat cannot be read."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None, None
    total, per_cpu = None, {}
    for line in lines:
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        if parts[0] == "cpu":
            total = _busy(parts[1:])
        elif parts[0][3:].isdigit():
            per_cpu[int(parts[0][3:])] = _busy(parts[1:])
    if cpus is None or not cpus <= set(per_cpu):
        return total, total
    return total, sum(per_cpu[c] for c in cpus)


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 3)
    except (OSError, AttributeError):
        return None


def _self_cpu(children: bool = False) -> float:
    t = os.times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def usable_cpus() -> set[int] | None:
    """The CPUs this process may run on (None where the platform cannot say)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _tick_s() -> float | None:
    try:
        return 1.0 / os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return None


class LoadProbe:
    """Samples the load average, /proc/stat and this process's CPU time at start and at stop."""

    def __init__(self, stat: Path = PROC_STAT, children: bool = False) -> None:
        self.stat = stat
        self.children = children  # a child timed to its end (trtexec) is this process's own work

    def start(self) -> LoadProbe:
        self.cpus = usable_cpus()
        self.load_before = _loadavg()
        self.ticks = busy_ticks(self.cpus, self.stat)
        self.self_cpu = _self_cpu(self.children)
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        self_cpu = _self_cpu(self.children) - self.self_cpu
        ticks = busy_ticks(self.cpus, self.stat)
        tick_s = _tick_s()

        def seconds(i: int) -> float | None:
            if ticks[i] is None or self.ticks[i] is None or not tick_s:
                return None
            return (ticks[i] - self.ticks[i]) * tick_s

        busy, usable_busy = seconds(0), seconds(1)
        other = max(0.0, usable_busy - self_cpu) if usable_busy is not None else None
        return {
            "loadavg_1min_before": self.load_before,
            "loadavg_1min_after": _loadavg(),
            "cpus": os.cpu_count(),
            "cpus_usable": len(self.cpus) if self.cpus is not None else None,
            "wall_s": round(wall, 4),
            "machine_busy_cpu_s": round(busy, 3) if busy is not None else None,
            "usable_busy_cpu_s": round(usable_busy, 3) if usable_busy is not None else None,
            "self_cpu_s": round(self_cpu, 3),
            "other_cpu_s": round(other, 3) if other is not None else None,
            "other_cpus_busy": round(other / wall, 3) if other is not None and wall > 0 else None,
            "clock_tick_s": tick_s,
        }


def cpu_limit(load: dict, max_other_cpus: float) -> float | None:
    """How many CPUs other processes may keep busy during a loop: `max_other_cpus` (a fraction) of the CPUs
    the bench may use (`cpus_usable`, else `cpus`); None where neither is known."""
    cpus = load.get("cpus_usable") or load.get("cpus")
    return max_other_cpus * cpus if cpus else None


def contention_verdict(load: dict, max_other_cpus: float) -> dict:
    """Whether other processes took the bench's CPUs (or its GPU) during a timed loop.

    disturbed: `other_cpus_busy` > `max_other_cpus` × the usable CPUs, or another process used the GPU
    (`load["gpu"]["others"]`, from GpuProbe); reason: the figures ("other processes used 1.17 of 2 CPUs
    (limit 0.50)"), None when quiet; score: other_cpus_busy / its limit (> 1 is disturbed; 2 where only the
    GPU was shared). A load without the figures (no /proc/stat) is not disturbed: nothing says it was.
    """
    reasons, score = [], 0.0
    other, cpus = load.get("other_cpus_busy"), load.get("cpus_usable") or load.get("cpus")
    limit = cpu_limit(load, max_other_cpus)
    if other is not None and limit is not None:
        score = other / limit if limit > 0 else (float("inf") if other > 0 else 0.0)
        if other > limit:
            reasons.append(f"other processes used {other:.2f} of {cpus} CPUs (limit {limit:.2f})")
    gpu = load.get("gpu") or {}
    if gpu.get("others"):
        reasons.append(f"another process used the GPU ({gpu['reason']})")
        score = max(score, 2.0)
    return {"disturbed": bool(reasons), "reason": "; ".join(reasons) or None, "score": round(score, 4)}


def loop_verdict(spread: dict, contention: dict) -> dict:
    """One timed loop's verdict: its spread's (core.metrics.stability_verdict) and its contention's
    (contention_verdict). Stable when neither is disturbed; the reason names each that is; the score
    is the worse of the two (<= 1 is stable)."""
    reasons = [r for r in (spread["reason"], contention["reason"]) if r]
    return {
        **spread,
        "stable": spread["stable"] and not contention["disturbed"],
        "reason": "; ".join(reasons) or None,
        "score": max(spread["score"], contention["score"]),
        "contended": contention["disturbed"],
        "slow_host": contention.get("slow_host", False),
    }


def wait_for_quiet(
    max_other_cpus: float,
    timeout_s: float,
    window_s: float = 0.5,
    gpu: GpuProbe | None = None,
    stat: Path = PROC_STAT,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Poll /proc/stat in windows of `window_s` (and the GPU's process list, where `gpu` is given) until one
    window sees other processes keep at most `max_other_cpus` of the usable CPUs busy and no other process on
    the GPU, or `timeout_s` has passed. Returns {"quiet", "waited_s", "windows", "other_cpus_busy" (the last
    window's), "limit_cpus"}."""
    t0 = time.perf_counter()
    windows, last = 0, None
    quiet = False
    while True:
        probe = LoadProbe(stat).start()
        sleep(window_s)
        load = probe.stop()
        windows += 1
        if gpu is not None:
            load["gpu"] = gpu.others_now()
        v = contention_verdict(load, max_other_cpus)
        last = load.get("other_cpus_busy")
        if not v["disturbed"]:
            quiet = True
            break
        if time.perf_counter() - t0 + window_s > timeout_s:
            break
    return {
        "quiet": quiet,
        "waited_s": round(time.perf_counter() - t0, 3),
        "windows": windows,
        "other_cpus_busy": last,
        "limit_cpus": cpu_limit(load, max_other_cpus),
    }


class GpuProbe:
    """Which other processes used this process's GPU during a timed loop, from NVML (nvidia-ml-py).

    A process counts when it is on the device's running-process lists (compute and graphics) at the loop's
    start or stop; where NVML also keeps per-process utilization samples (`nvmlDeviceGetProcessUtilization`),
    a listed process whose SM utilization stayed 0 during the loop (a context held open, idle) does not.
    Inside a PID namespace NVML lists the host's PIDs, so this process is not found by its own PID: then every
    listed process but one (this one) counts as another. `nvml` is the pynvml module (tests pass a fake).
    """

    def __init__(self, device: str, nvml=None, pid: int | None = None, on_gpu: bool = True) -> None:
        self.pid = os.getpid() if pid is None else pid
        # False: this process never uses the GPU itself (it times trtexec, which has ended before the lists are
        # read at stop), so every process listed is another
        self.on_gpu = on_gpu
        self.problem = None
        self.nvml = nvml
        if self.nvml is None:
            try:
                import pynvml

                self.nvml = pynvml
            except ImportError:
                self.problem = "pynvml (nvidia-ml-py) is not importable: other GPU processes not checked"
                return
        try:
            self.nvml.nvmlInit()
            self.handle = self._handle(device)
        except Exception as exc:  # noqa: BLE001 - NVMLError subclasses per cause; the bench still runs
            self.problem = f"NVML: {exc}: other GPU processes not checked"

    def _handle(self, device: str):
        """The NVML handle of a torch device ('cuda', 'cuda:1'), through CUDA_VISIBLE_DEVICES' mapping."""
        index = int(device.split(":")[1]) if ":" in device else 0
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if index < len(visible):
            name = visible[index]
            if name.isdigit():
                return self.nvml.nvmlDeviceGetHandleByIndex(int(name))
            return self.nvml.nvmlDeviceGetHandleByUUID(name)
        return self.nvml.nvmlDeviceGetHandleByIndex(index)

    def _listed(self) -> dict[int, float | None]:
        """{pid: used GPU MiB (None where NVML does not say)} of the processes on the device now."""
        out: dict[int, float | None] = {}
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for p in getattr(self.nvml, fn)(self.handle):
                mem = getattr(p, "usedGpuMemory", None)
                out[int(p.pid)] = round(mem / 2**20, 1) if mem is not None else None
        return out

    def _active_since(self, timestamp_us: int) -> set[int] | None:
        """PIDs with SM utilization above 0 in NVML's samples since `timestamp_us`; None where it keeps none."""
        try:
            samples = self.nvml.nvmlDeviceGetProcessUtilization(self.handle, timestamp_us)
        except Exception:  # noqa: BLE001 - not supported, or no samples: fall back to the process lists
            return None
        return {int(s.pid) for s in samples if getattr(s, "smUtil", 0) > 0}

    def start(self) -> GpuProbe:
        self.t0_us = int(time.time() * 1e6)
        self.before = self._listed() if self.problem is None else {}
        return self

    def _others(self, listed: dict[int, float | None], active: set[int] | None) -> dict:
        if self.problem is not None:
            return {"checked": False, "others": [], "other_count": 0, "reason": self.problem}
        pids = sorted(p for p in listed if active is None or p in active)  # with samples: ran kernels meanwhile
        own_seen = self.pid in listed
        if own_seen or not self.on_gpu:
            others = [p for p in pids if p != self.pid]
            count = len(others)
        else:  # PIDs of another namespace: this process is one of them, which one cannot be told
            others = pids if len(pids) > 1 else []
            count = max(0, len(pids) - 1)
        rows = [{"pid": p, "used_gpu_mib": listed[p]} for p in others]
        reason = None
        if count:
            named = "; ".join(
                f"pid {r['pid']}" + (f", {r['used_gpu_mib']:g} MiB" if r["used_gpu_mib"] is not None else "")
                for r in rows
            )
            if own_seen or not self.on_gpu:
                reason = f"{count} other process{'es' * (count != 1)} on the device: {named}"
            else:
                reason = (
                    f"{len(pids)} processes on the device, this one among them (PIDs of another namespace): {named}"
                )
        return {
            "checked": True,
            "others": rows,
            "other_count": count,
            "own_pid_listed": own_seen,
            "utilization_samples": active is not None,
            "reason": reason,
        }

    def stop(self) -> dict:
        """{"checked", "others": [{"pid", "used_gpu_mib"}], "other_count", "own_pid_listed",
        "utilization_samples", "reason"} over the loop."""
        if self.problem is not None:
            return self._others({}, None)
        listed = {**self.before, **self._listed()}
        return self._others(listed, self._active_since(self.t0_us))

    def others_now(self) -> dict:
        """The same, of this moment's process lists (no utilization window): for wait_for_quiet."""
        if self.problem is not None:
            return self._others({}, None)
        return self._others(self._listed(), None)
