"""A test-only backend: the real ONNX Runtime runner, with a disturbance planted in its first timed calls.

$PLANFORGE_TEST_DISTURBED_CALLS=N: of the first N `timed_infer` calls, every fourth sleeps
$PLANFORGE_TEST_DISTURBED_FACTOR (default 50) times its own inference time on top of it, as if another
process had taken the core: p99/p50 near FACTOR + 1 on a fast machine or a slow one. Warm-up calls (`infer`) are never disturbed. tests/test_stability.py uses it to see a
disturbed timed loop measured again, through the real bench step.

$PLANFORGE_TEST_HOG_SECONDS=S: the first timed call starts one busy process per CPU, each spinning for S seconds:
real contention from other processes during the first timed loop only (the model's own calls are not slowed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from workflow_scripts.runners import BACKENDS, BackendSpec
from workflow_scripts.runners.ort_runner import OrtRunner

NAME = "onnxruntime-disturbed"


class DisturbedOrtRunner(OrtRunner):
    backend = NAME
    calls = 0

    def timed_infer(self, prepared):
        n = DisturbedOrtRunner.calls
        DisturbedOrtRunner.calls += 1
        hog_s = float(os.environ.get("PLANFORGE_TEST_HOG_SECONDS", "0"))
        if n == 0 and hog_s > 0:
            spin = f"import time\nt = time.time()\nwhile time.time() - t < {hog_s}: pass"
            self.hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
        t0 = time.perf_counter()
        out = self.infer(prepared)
        if n < int(os.environ.get("PLANFORGE_TEST_DISTURBED_CALLS", "0")) and n % 4 == 0:
            time.sleep(float(os.environ.get("PLANFORGE_TEST_DISTURBED_FACTOR", "50")) * (time.perf_counter() - t0))
        return out, time.perf_counter() - t0


BACKENDS.register(
    NAME,
    BackendSpec(
        module=__name__,
        cls="DisturbedOrtRunner",
        artifact="onnx",
        precisions=("fp32",),
        requires=("onnxruntime",),
        devices=("cpu",),
        options={"graph_optimization": "all", "providers": ["CPUExecutionProvider"]},
    ),
)
