"""Contention on the rows trtexec times (workflow_scripts/tensorrt/trtexec_timing.py): trtexec's own CPU time is the
bench's (a child it waits for), and another process on the GPU disturbs the run (NVML's lists; a fake NVML here,
with the fake trtexec: this machine has neither a GPU nor TensorRT)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_jetson import REAL_TRTEXEC, _fake_trtexec
from tests.test_stability import FakeNvml
from workflow_scripts.core.load import GpuProbe, LoadProbe
from workflow_scripts.plan.settings import Stability
from workflow_scripts.tensorrt import trtexec_timing

SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6:\n    pass\n"


def test_a_childs_cpu_time_is_the_probes_own_only_when_it_counts_children():
    for children, own in ((True, True), (False, False)):
        probe = LoadProbe(children=children).start()
        subprocess.run([sys.executable, "-c", SPIN], check=True)  # 0.6 CPU-s in a child this process waits for
        load = probe.stop()
        assert (load["self_cpu_s"] >= 0.55) is own, load


def _engine(tmp_path):
    engine = tmp_path / "fp16_b1.plan"
    engine.write_text("FAKE TensorRT engine written by tests/fakes/trtexec.py\n")
    sidecar = {"builder": "trtexec", "dla_layers": None}
    sidecar["settings"] = {"gpu": "Fake GPU", "tensorrt_version": "10.3.0", "input": "images", "dla_core": None}
    engine.with_suffix(".json").write_text(json.dumps(sidecar))
    return engine


def test_fake_trtexec_fake_nvml_another_gpu_process_disturbs_the_run_and_the_bench_waits(tmp_path, monkeypatch):
    exe = _fake_trtexec(tmp_path / "bin")
    monkeypatch.setenv("FAKE_TRTEXEC_FIXTURES", str(REAL_TRTEXEC))
    monkeypatch.setenv("PLANFORGE_GPU_NAME", "Fake GPU")
    # NVML's lists: pid 4242 on the device at run 1's start and stop and the first quiet-wait read, then nobody
    # (this process never opens the GPU, and trtexec has ended before each stop's read)
    nvml = FakeNvml([[(4242, 512)]] * 3 + [[]])
    probes = []

    def fake_probe(device, on_gpu=True):
        probes.append(GpuProbe(device, nvml=nvml, on_gpu=on_gpu))
        return probes[-1]

    monkeypatch.setattr(trtexec_timing, "GpuProbe", fake_probe)
    # spread and CPU contention never decide here: the GPU's lists do
    limits = Stability(max_cv=100.0, max_p99_over_p50=100.0, attempts=3, max_other_cpus=1000.0, quiet_wait_s=5)
    t = trtexec_timing.time_engine(
        str(exe), _engine(tmp_path), 1, 160, 10, 50, 0.0, {}, "none", "cuda", limits,
        identity={"gpu": "Fake GPU", "tensorrt_version": "10.3.0"},
    )  # fmt: skip
    first, second = t["stability"]["attempts"]
    assert not first["stable"] and first["contended"]
    assert first["reason"] == "another process used the GPU (1 other process on the device: pid 4242, 512 MiB)"
    assert first["quiet_wait"]["quiet"] and first["quiet_wait"]["windows"] == 2  # the first window still saw it
    assert second["stable"] and second["load"]["gpu"]["other_count"] == 0
    assert t["stable"] and t["stability"]["reported_attempt"] == 2 and t["load"] == second["load"]
    assert t["stability"]["criteria"]["quiet_wait_s"] == 5 and probes[0].on_gpu is False
