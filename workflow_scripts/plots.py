"""results/plots/{target}_*.png: latency vs batch per backend, accuracy vs latency, and (targets with a
power sampler) latency vs power, for one target."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from workflow_scripts.core.io import run_cli, save_figure
from workflow_scripts.core.pareto import pareto_front
from workflow_scripts.core.results import load_tables, merged
from workflow_scripts.tasks import TASKS

PLOT_KINDS = (
    "latency_vs_batch",
    "accuracy_vs_latency",
    "latency_vs_power",
    "serving_throughput_vs_p99",
)  # the last: workflow_scripts/serving/plot.py


MARKERS = "osD^v<>ph*"


def _styles(keys: list) -> dict:
    """A colour per (backend, precision) and a marker per model, the same in both of a target's plots."""
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10")
    runs = sorted({(b, p) for _, b, p in keys})
    models = sorted({m for m, _, _ in keys})
    return {
        k: {"color": colours(runs.index(k[1:]) % 10), "marker": MARKERS[models.index(k[0]) % len(MARKERS)]}
        for k in keys
    }


def _plain_log_axes(ax, batches) -> None:
    """Batch sizes as ticks (1, 2, 4, 8…) and plain numbers, never powers, on log axes."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_locator(FixedLocator(sorted(batches)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def plot_latency(target: str, bench: pd.DataFrame, png: Path) -> None:
    """Model latency per batch (log–log, band to p99) and per image (p50 / batch) against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (per_batch, per_image) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    groups = list(bench.groupby(["model", "backend", "precision"])) if not bench.empty else []
    style = _styles([k for k, _ in groups])
    for key, g in groups:
        g = g.sort_values("batch")
        label = " ".join(key)
        per_batch.plot(g["batch"], g["p50_ms"], label=label, **style[key])
        per_batch.fill_between(g["batch"], g["p50_ms"], g["p99_ms"], color=style[key]["color"], alpha=0.12)
        per_image.plot(g["batch"], g["p50_ms"] / g["batch"], **style[key])
    for ax in (per_batch, per_image):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
        if groups:
            _plain_log_axes(ax, bench["batch"].unique())
    per_batch.set_ylabel("model latency per batch, ms (p50; band to p99)")
    per_batch.set_title("per batch (log–log: slope 1 = no gain from batching)", fontsize=10)
    per_image.set_ylabel("model latency per image, ms (p50 / batch)")
    per_image.set_title("per image (lower is better)", fontsize=10)
    fig.suptitle(f"{target}: latency vs batch")
    if groups:
        fig.legend(loc="outside right center", fontsize=8, title="model backend precision", title_fontsize=8)
    else:
        per_batch.text(
            0.5, 0.5, "nothing timed on this target", ha="center", va="center", transform=per_batch.transAxes
        )
    save_figure(fig, png)


def _unstable_rows(pts: pd.DataFrame) -> pd.Series:
    """Rows whose bench JSON says "stable": false (never on a Pareto front)."""
    return pts["stable"] == False if "stable" in pts else pd.Series(False, index=pts.index)  # noqa: E712


def _axis_label(task: str | None, pts: pd.DataFrame) -> tuple[str, bool]:
    """The y label of one task's panel (its metric and direction) and whether higher is better."""
    spec = TASKS[task] if task in TASKS else None
    higher = spec.higher_is_better if spec else True
    given = sorted(set(pts["metric_label"].dropna())) if "metric_label" in pts else []
    label = spec.metric_label if spec else (given or ["accuracy (the task's metric)"])[0]
    return f"{label} ({'higher' if higher else 'lower'} is better {'↑' if higher else '↓'})", higher


def plot_accuracy(target: str, merged: pd.DataFrame, png: Path) -> None:
    """Each task's accuracy metric against batch-1 latency, one panel per task (metrics of different tasks do
    not compare): one point per configuration, and the task's Pareto front (the most accurate configuration
    within each latency, in the metric's own direction) as a step line. Unstable rows (†) are drawn hollow and
    left off the front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = merged[(merged["batch"] == 1) & merged["score"].notna()] if not merged.empty else merged
    tasks = sorted(set(pts["task"].dropna())) if "task" in pts and not pts.empty else []
    groups = [(t, pts[pts["task"] == t]) for t in tasks] or [(None, pts)]
    fig, axes = plt.subplots(
        1, len(groups), figsize=(4.6 * len(groups) + 4.5, 4.8), layout="constrained", squeeze=False
    )
    style = _styles([(r["model"], r["backend"], r["precision"]) for _, r in pts.iterrows()])
    for ax, (task, rows) in zip(axes[0], groups):
        if rows.empty:
            ax.text(0.5, 0.5, "no accuracy measured on this target", ha="center", va="center", transform=ax.transAxes)
        unstable = _unstable_rows(rows)
        for i, r in rows.sort_values(["model", "backend", "precision"]).iterrows():
            key = (r["model"], r["backend"], r["precision"])
            passed = r["gate_passed"] == True  # noqa: E712 (NaN: no gate)
            note = ("" if passed else " (FAILS the gate)") + (" († unstable)" if unstable[i] else "")
            ax.scatter(
                r["p50_ms"],
                r["score"],
                s=60,
                color="none" if unstable[i] else style[key]["color"],
                marker=style[key]["marker"],
                edgecolors=(style[key]["color"] if unstable[i] else "black") if passed else "red",
                linewidths=0.6 if passed and not unstable[i] else 2,
                zorder=3,
                label=" ".join(key) + note,
            )
        ylabel, higher = _axis_label(task, rows)
        front = pareto_front(rows[~unstable], higher_is_better=higher)
        if not front.empty:
            right = rows["p50_ms"].max() * 1.15
            xs = [*front["p50_ms"], right]
            ys = [*front["score"], front["score"].iloc[-1]]
            ax.step(xs, ys, where="post", color="black", lw=1.2, ls="--", zorder=2, label="Pareto front")
            ax.scatter(front["p50_ms"], front["score"], s=190, facecolors="none", edgecolors="black", lw=1, zorder=2)
        ax.margins(x=0.08, y=0.12)
        ax.set_xlabel("batch-1 model latency, ms (p50)")
        ax.set_ylabel(ylabel)
        ax.set_title(task or "accuracy", fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{target}: accuracy vs latency per task (left is faster; ringed: on that task's Pareto front)")
    if not pts.empty:
        handles, labels = {}, []
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in handles:
                    handles[lab] = h
                    labels.append(lab)
        fig.legend(
            [handles[lab] for lab in labels],
            labels,
            loc="outside right center",
            fontsize=8,
            title="model backend precision",
            title_fontsize=8,
        )
    save_figure(fig, png)


def plot_target(target: str, bench: pd.DataFrame, merged: pd.DataFrame, latency_png: Path, accuracy_png: Path) -> None:
    """Latency vs batch per backend, and the task's accuracy metric vs batch-1 latency, for one target."""
    plot_latency(target, bench, latency_png)
    plot_accuracy(target, merged, accuracy_png)


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
    tb, _, joined = merged(*load_tables(a.bench, a.accuracy, TASKS), a.target)
    if a.latency_png:
        plot_target(a.target, tb, joined, a.latency_png, a.accuracy_png)
        print(f"wrote {a.latency_png} and {a.accuracy_png}")
    if a.power_png:
        plot_power(a.target, tb, a.power_png)
        print(f"wrote {a.power_png}")


if __name__ == "__main__":
    run_cli(main)
