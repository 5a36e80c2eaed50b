"""results/plots/{target}_*.png: latency vs batch per backend, accuracy vs latency, and (targets with a
power sampler) latency vs power, for one target."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from workflow_scripts.core.io import run_cli, save_figure
from workflow_scripts.core.results import load_tables, merged

PLOT_KINDS = (
    "latency_vs_batch",
    "accuracy_vs_latency",
    "latency_vs_power",
    "serving_throughput_vs_p99",
)  # the last: workflow_scripts/serving/plot.py


def plot_target(target: str, bench: pd.DataFrame, merged: pd.DataFrame, latency_png: Path, accuracy_png: Path) -> None:
    """Latency vs batch per backend, and the task's accuracy metric vs batch-1 latency, for one target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, backend, precision), g in bench.groupby(["model", "backend", "precision"]):
        g = g.sort_values("batch")
        ax.plot(g["batch"], g["p50_ms"], marker="o", label=f"{model} {backend} {precision}")
        ax.fill_between(g["batch"], g["p50_ms"], g["p99_ms"], alpha=0.15)
    ax.set_xscale("log", base=2)
    if not bench.empty:
        sizes = sorted(bench["batch"].unique())
        ax.set_xticks(sizes, [str(int(b)) for b in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("model latency per batch, ms (p50; band to p99)")
    ax.set_title(f"{target}: latency vs batch")
    ax.grid(True, alpha=0.3)
    if not bench.empty:
        ax.legend(fontsize=8)
    save_figure(fig, latency_png)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = merged[(merged["batch"] == 1) & merged["score"].notna()] if not merged.empty else merged
    if pts.empty:
        ax.text(0.5, 0.5, "no accuracy measured on this target", ha="center", va="center", transform=ax.transAxes)
    for _, r in pts.iterrows():
        colour = "tab:green" if r["gate_passed"] else "tab:red"
        ax.scatter(r["p50_ms"], r["score"], color=colour, s=40)
        ax.annotate(
            f"{r['model']} {r['backend']} {r['precision']}",
            (r["p50_ms"], r["score"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.margins(x=0.25, y=0.2)
    ax.set_xlabel("batch-1 model latency, ms (p50)")
    labels = sorted(set(pts["metric_label"])) if not pts.empty else []
    ax.set_ylabel(" / ".join(labels) or "accuracy (the task's metric)")
    ax.set_title(f"{target}: accuracy vs latency (green: passes the gate)")
    ax.grid(True, alpha=0.3)
    save_figure(fig, accuracy_png)


def plot_power(target: str, bench: pd.DataFrame, png: Path) -> None:
    """Model latency (p50) against mean power during the timed loop, one point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = bench[bench["power_w"].notna()] if "power_w" in bench and not bench.empty else bench.iloc[0:0]
    for (model, backend, precision), g in pts.groupby(["model", "backend", "precision"]):
        g = g.sort_values("batch")
        ax.plot(g["power_w"], g["p50_ms"], marker="o", label=f"{model} {backend} {precision}")
        for _, r in g.iterrows():
            ax.annotate(
                f"b{int(r['batch'])}",
                (r["power_w"], r["p50_ms"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    if pts.empty:
        ax.text(0.5, 0.5, "no power measured on this target", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("mean power during the timed loop, W (sampler's total rails)")
    ax.set_ylabel("model latency per batch, ms (p50)")
    ax.set_title(f"{target}: latency vs power")
    ax.grid(True, alpha=0.3)
    save_figure(fig, png)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--bench", type=Path, nargs="*", default=[])
    p.add_argument("--accuracy", type=Path, nargs="*", default=[])
    p.add_argument("--latency-png", type=Path)
    p.add_argument("--accuracy-png", type=Path)
    p.add_argument("--power-png", type=Path, help="latency vs power (targets with a power sampler)")
    a = p.parse_args(argv)
    if bool(a.latency_png) != bool(a.accuracy_png) or not (a.latency_png or a.power_png):
        p.error("give --latency-png with --accuracy-png, and/or --power-png")
    tb, _, joined = merged(*load_tables(a.bench, a.accuracy), a.target)
    if a.latency_png:
        plot_target(a.target, tb, joined, a.latency_png, a.accuracy_png)
        print(f"wrote {a.latency_png} and {a.accuracy_png}")
    if a.power_png:
        plot_power(a.target, tb, a.power_png)
        print(f"wrote {a.power_png}")


if __name__ == "__main__":
    run_cli(main)
