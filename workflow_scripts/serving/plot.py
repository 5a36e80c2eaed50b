"""results/plots/{target}_serving_throughput_vs_p99.png: throughput vs p99 across concurrency, batching on vs off
(detection ensembles and vla models alike: one line per model, protocol and batching)."""

from __future__ import annotations

import argparse
from pathlib import Path

from workflow_scripts.core.io import read_json, run_cli, save_figure


def plot_serving(target: str, records: list[dict], out: Path) -> None:
    """One line per (model, protocol, batching), points labelled by concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rec in records:
        for protocol in sorted({r["protocol"] for r in rec["sweep"]}):
            for batching, style in (("on", "-o"), ("off", "--s")):
                rows = sorted(
                    (r for r in rec["sweep"] if r["protocol"] == protocol and r["batching"] == batching),
                    key=lambda r: r["concurrency"],
                )
                if not rows:
                    continue
                xs = [r["latency_ms"]["p99"] for r in rows]
                ys = [r["throughput_infer_per_s"] for r in rows]
                ax.plot(xs, ys, style, label=f"{rec['model']} {protocol}, dynamic batching {batching}")
                for r, x, y in zip(rows, xs, ys):
                    ax.annotate(str(r["concurrency"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("p99 latency per request, ms (perf_analyzer, end to end)")
    ax.set_ylabel("throughput, inferences/s")
    ax.set_title(f"{target}: Triton, throughput vs p99 (labels: concurrency)")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--serving", type=Path, nargs="+", required=True, help="results/{target}/serving/{model}.json")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    plot_serving(a.target, [read_json(f) for f in a.serving], a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    run_cli(main)
