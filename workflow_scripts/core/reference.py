"""How fast this machine runs right now: a fixed reference kernel timed beside each CPU bench loop.

Other processes inside the machine show in /proc/stat (`core.load`); a shared virtual machine can also be slowed
from outside it, by the host's other tenants on the same physical cores, caches and memory bandwidth, which nothing
inside the VM counts. A kernel whose work never changes measures that directly: when it runs slower than this
machine's best, so did the loop beside it (docs/measured/cpu/run_to_run/host_speed/: on the 2-core CI VM a
matrix product ran up to 1.39× slower at times, and a row's p50 followed it with correlation 0.91). It does not see
every swing: rows that moved 2× between passes had it within 1.07× of its best (docs/measured/cpu/run_to_run/);
core/repeatability.py compares each row with its last run for those.

The kernel: one ONNX Runtime session of a 384×384 float32 MatMul (MLAS's GEMM, the same thread pool and
vector units the rows use), on as many intra-op threads as the bench row, timed for `seconds` before and
after the loop; its median call is the reading. This machine's best is the fastest reading in a history file
(`PLANFORGE_REFERENCE_FILE`, default ~/.cache/planforge/reference.json) over the last `WINDOW_S`, per host,
CPU model, thread count and ONNX Runtime version; every reading is added to it. A loop whose reading is more
than `max_slowdown` above that best is disturbed (`reference_verdict`).
"""

from __future__ import annotations

import platform
import statistics
import time

from workflow_scripts.core.envinfo import cpu_name
from workflow_scripts.core.history import History, cache_file

SIZE = 384
WINDOW_S = 6 * 3600.0  # a best older than this no longer counts (a moved VM, a new host)
KERNEL = f"ONNX Runtime MatMul {SIZE}x{SIZE} float32 (MLAS GEMM), the row's intra-op threads, median call"


def reference_history(key: str) -> History:
    """This machine's readings of the kernel `key` (host, CPU model, threads, ONNX Runtime) of the last WINDOW_S."""
    return History(key, cache_file("reference.json", "PLANFORGE_REFERENCE_FILE"), WINDOW_S)


class ReferenceKernel:
    """The fixed workload. `read(seconds)` times it and returns the median call in ms."""

    def __init__(self, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        self.threads = max(1, int(threads))
        rng = np.random.default_rng(0)
        w = numpy_helper.from_array(rng.standard_normal((SIZE, SIZE)).astype(np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "reference",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SIZE, SIZE])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [SIZE, SIZE])],
            [w],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning into the row's loop
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.x = {"x": rng.standard_normal((SIZE, SIZE)).astype(np.float32)}
        self.key = f"{platform.node()}|{cpu_name()}|threads={self.threads}|onnxruntime={ort.__version__}"
        self.session.run(None, self.x)  # first call allocates

    def read(self, seconds: float = 0.2, min_calls: int = 5) -> float:
        times = []
        t0 = time.perf_counter()
        while len(times) < min_calls or time.perf_counter() - t0 < seconds:
            a = time.perf_counter()
            self.session.run(None, self.x)
            times.append(time.perf_counter() - a)
        return round(statistics.median(times) * 1e3, 4)


class ReferenceProbe:
    """Reads the kernel before and after a timed loop and compares the two with this machine's best."""

    def __init__(self, threads: int, seconds: float = 0.2, history: History | None = None) -> None:
        self.kernel = ReferenceKernel(threads)
        self.seconds = seconds
        self.history = history or reference_history(self.kernel.key)

    def start(self) -> ReferenceProbe:
        self.before = self.kernel.read(self.seconds)
        return self

    def stop(self) -> dict:
        time.sleep(0.05)  # let the row's worker threads stop spinning first
        after = self.kernel.read(self.seconds)
        return self._record([self.before, after])

    def now(self) -> dict:
        """One reading alone (the wait for the machine to run at its speed again)."""
        return self._record([self.kernel.read(self.seconds)])

    def wait_for_speed(self, max_slowdown: float, timeout_s: float) -> dict:
        """Read the kernel until it runs within `max_slowdown` of this machine's best, or `timeout_s` has
        passed: {"fast", "waited_s", "readings", "slowdown" (the last reading's)}."""
        t0, n, last = time.perf_counter(), 0, None
        while True:
            r = self.now()
            n, last = n + 1, r["slowdown"]
            if not reference_verdict(r, max_slowdown)["disturbed"]:
                return {"fast": True, "waited_s": round(time.perf_counter() - t0, 3), "readings": n, "slowdown": last}
            if time.perf_counter() - t0 + self.seconds > timeout_s:
                return {"fast": False, "waited_s": round(time.perf_counter() - t0, 3), "readings": n, "slowdown": last}
            time.sleep(0.3)  # between readings the machine is left alone

    def _record(self, readings: list[float]) -> dict:
        past = [v for _, v in self.history.entries()]
        best, n = (min(past) if past else None), len(past)
        self.history.add(*readings)
        best = min([best, *readings]) if best is not None else min(readings)
        ms = statistics.mean(readings)
        return {
            "kernel": KERNEL,
            "threads": self.kernel.threads,
            "readings_ms": readings,
            "ms": round(ms, 4),
            "best_ms": best,
            "best_of": n + len(readings),
            "slowdown": round(ms / best, 4) if best else None,
            "history": str(self.history.path),
        }


def reference_verdict(reference: dict | None, max_slowdown: float | None) -> dict:
    """disturbed: the kernel beside the loop ran more than `max_slowdown` (a fraction) slower than this
    machine's best; reason in figures; score: (slowdown - 1) / max_slowdown (> 1 is disturbed)."""
    if not reference or max_slowdown is None or reference.get("slowdown") is None:
        return {"disturbed": False, "reason": None, "score": 0.0}
    excess = reference["slowdown"] - 1.0
    score = excess / max_slowdown if max_slowdown > 0 else (float("inf") if excess > 0 else 0.0)
    if excess <= max_slowdown:
        return {"disturbed": False, "reason": None, "score": round(max(score, 0.0), 4)}
    return {
        "disturbed": True,
        "reason": f"a fixed reference kernel ran {reference['slowdown']:.2f}× slower than this machine's best "
        f"(limit {1 + max_slowdown:.2f}×): the host was busier than this VM's counters show",
        "score": round(score, 4),
    }
