"""trtexec's own numbers: read `--exportTimes` and `--exportProfile` JSON into the bench JSON's units.

Formats, as written by TensorRT's samples/common/sampleReporting.cpp (exportJSONTrace and
Profiler::exportJSONProfile):
- times: a list of one object per timed inference with startEnqMs, endEnqMs, startH2dMs, endH2dMs,
  startComputeMs, endComputeMs, startD2hMs, endD2hMs, h2dMs, computeMs, d2hMs, latencyMs
- profile: a list whose first object is {"count": <iterations>}, then one per layer with name,
  timeMs (total), averageMs, medianMs, percentage

Run on a machine with TensorRT, e.g.
`trtexec --loadEngine=E.plan --exportTimes=times.json --exportProfile=profile.json --separateProfileRun`,
then `python -m workflow_scripts.tensorrt.trtexec_report --times times.json --profile profile.json --out E.trtexec.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workflow_scripts.core.io import PlanforgeError, run_cli, write_json
from workflow_scripts.core.metrics import latency_stats

TIME_KEYS = ("startEnqMs", "endEnqMs", "startComputeMs", "endComputeMs", "computeMs", "latencyMs")


def _load(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanforgeError(f"{path}: cannot read trtexec JSON ({exc})") from None


def parse_times(data: list[dict], source: str = "times") -> dict[str, Any]:
    """Latency (host view: H2D + compute + D2H), GPU compute, enqueue and copy times, in ms."""
    if not isinstance(data, list) or not data:
        raise PlanforgeError(f"{source}: expected a non-empty list of inference records (trtexec --exportTimes)")
    missing = [k for k in TIME_KEYS if k not in data[0]]
    if missing:
        raise PlanforgeError(f"{source}: not trtexec --exportTimes output (missing {', '.join(missing)})")
    span_ms = max(r["endComputeMs"] for r in data) - min(r["startComputeMs"] for r in data)
    return {
        "inferences": len(data),
        "latency_ms": latency_stats([r["latencyMs"] / 1e3 for r in data]),
        "gpu_compute_ms": latency_stats([r["computeMs"] / 1e3 for r in data]),
        "enqueue_ms": latency_stats([(r["endEnqMs"] - r["startEnqMs"]) / 1e3 for r in data]),
        "h2d_ms_mean": round(sum(r.get("h2dMs", 0.0) for r in data) / len(data), 4),
        "d2h_ms_mean": round(sum(r.get("d2hMs", 0.0) for r in data) / len(data), 4),
        "throughput_qps": round(len(data) / (span_ms / 1e3), 3) if span_ms > 0 else None,
    }


def parse_profile(data: list[dict], source: str = "profile", top: int = 10) -> dict[str, Any]:
    """Per-layer times: iteration count, total of the layer averages, the slowest `top` layers."""
    if not isinstance(data, list) or not data or "count" not in data[0]:
        raise PlanforgeError(f"{source}: not trtexec --exportProfile output (first record must hold 'count')")
    layers = [r for r in data[1:] if "name" in r]
    for r in layers:
        if not {"averageMs", "percentage"} <= set(r):
            raise PlanforgeError(f"{source}: layer {r.get('name')!r} lacks averageMs/percentage")
    slowest = sorted(layers, key=lambda r: r["averageMs"], reverse=True)[:top]
    return {
        "iterations": data[0]["count"],
        "layers": len(layers),
        "sum_of_layer_averages_ms": round(sum(r["averageMs"] for r in layers), 4),
        "slowest_layers": [
            {
                "name": r["name"],
                "average_ms": r["averageMs"],
                "median_ms": r.get("medianMs"),
                "percent": r["percentage"],
            }
            for r in slowest
        ],
    }


def report(times: Path | None, profile: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"source": "trtexec"}
    if times:
        out["times"] = parse_times(_load(times), str(times))
    if profile:
        out["profile"] = parse_profile(_load(profile), str(profile))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--times", type=Path, help="trtexec --exportTimes JSON")
    p.add_argument("--profile", type=Path, help="trtexec --exportProfile JSON")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if not (a.times or a.profile):
        raise PlanforgeError("give --times and/or --profile")
    write_json(a.out, report(a.times, a.profile))


if __name__ == "__main__":
    run_cli(main)
