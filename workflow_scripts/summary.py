"""results/summary.md and results/plots/: one table per target, the fastest configuration that passes
the accuracy gate, the environment, and the plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from workflow_scripts.io import atomic_path, read_json, run_cli

PLOT_KINDS = ("latency_vs_batch", "accuracy_vs_latency")


def load_tables(bench_files: list[Path], accuracy_files: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bench rows (one per model/backend/precision/batch) and accuracy rows, as DataFrames."""
    bench = []
    for f in bench_files:
        r = read_json(f)
        bench.append(
            {
                "target": r["target"],
                "model": r["model"],
                "backend": r["backend"],
                "precision": r["precision"],
                "batch": r["batch"],
                "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"],
                "mean_ms": r["latency_ms"]["mean"],
                "throughput": r["throughput_items_per_s"],
                "pre_ms": r["preprocess_ms"]["p50"],
                "post_ms": r["postprocess_ms"]["p50"],
                "energy_j": (r.get("power") or {}).get("energy_per_inference_j"),
                "file": str(f),
                "device": r["environment"].get("gpu") or r["environment"].get("cpu"),
                "libraries": r["environment"].get("libraries", {}),
                "runner": r.get("runner", {}),
                "git_commit": r["environment"].get("git_commit"),
                "timestamp": r["environment"].get("timestamp"),
                "iterations": r["iterations"],
                "warmup": r["warmup"],
                "threads": r.get("threads"),
            }
        )
    acc = []
    for f in accuracy_files:
        r = read_json(f)
        acc.append(
            {
                "target": r["target"],
                "model": r["model"],
                "backend": r["backend"],
                "precision": r["precision"],
                "map50_95": r["map50_95"],
                "map50": r["map50"],
                "ap_small": r.get("ap_small"),
                "ap_medium": r.get("ap_medium"),
                "ap_large": r.get("ap_large"),
                "images": r["images"],
                "ratio": r.get("ratio_to_baseline"),
                "gate_passed": r.get("gate", {}).get("passed"),
                "baseline": f"{r['baseline']['backend']} {r['baseline']['precision']}" if r.get("baseline") else None,
            }
        )
    bench_cols = ["target", "model", "backend", "precision", "batch"]
    acc_cols = ["target", "model", "backend", "precision"]
    b = pd.DataFrame(bench, columns=None if bench else bench_cols)
    a = pd.DataFrame(acc, columns=None if acc else acc_cols)
    return b, a


def _fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _gate(passed) -> str:
    if passed is None or (isinstance(passed, float) and pd.isna(passed)):
        return "—"
    return "pass" if passed else "**FAIL**"


def markdown_table(df: pd.DataFrame, columns: dict[str, tuple[str, int]]) -> str:
    header = "| " + " | ".join(title for title, _ in columns.values()) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    rows = []
    for _, row in df.iterrows():
        cells = []
        for key, (_, digits) in columns.items():
            cells.append(_gate(row[key]) if key == "gate_passed" else _fmt(row[key], digits))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def fastest_passing(merged: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None]:
    """Lowest batch-1 p50 and highest throughput among configurations whose accuracy passes the gate."""
    ok = merged[merged["gate_passed"] == True]  # noqa: E712 (NaN-safe comparison)
    if ok.empty:
        return None, None
    b1 = ok[ok["batch"] == 1]
    lowest = b1.loc[b1["p50_ms"].idxmin()] if not b1.empty else None
    best = ok.loc[ok["throughput"].idxmax()]
    return lowest, best


def _label(row: pd.Series) -> str:
    return f"{row['model']} {row['backend']} {row['precision']} b{int(row['batch'])}"


def plot_target(target: str, bench: pd.DataFrame, merged: pd.DataFrame, latency_png: Path, accuracy_png: Path) -> None:
    """Latency vs batch per backend, and mAP50-95 vs batch-1 latency, for one target."""
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
    _save(fig, latency_png)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = merged[(merged["batch"] == 1) & merged["map50_95"].notna()] if not merged.empty else merged
    for _, r in pts.iterrows():
        colour = "tab:green" if r["gate_passed"] else "tab:red"
        ax.scatter(r["p50_ms"], r["map50_95"], color=colour, s=40)
        ax.annotate(
            f"{r['model']} {r['backend']} {r['precision']}",
            (r["p50_ms"], r["map50_95"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.margins(x=0.25, y=0.2)
    ax.set_xlabel("batch-1 model latency, ms (p50)")
    ax.set_ylabel("mAP50-95 (pycocotools)")
    ax.set_title(f"{target}: accuracy vs latency (green: passes the gate)")
    ax.grid(True, alpha=0.3)
    _save(fig, accuracy_png)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def render(
    bench: pd.DataFrame,
    acc: pd.DataFrame,
    unavailable: list[str],
    gate: float,
    baseline: str,
    plots: dict[str, Path],
    out: Path,
) -> str:
    """The summary as markdown; plot links are relative to `out`."""
    lines = ["# planforge summary", ""]
    if not bench.empty:
        commits = sorted({c for c in bench["git_commit"] if c})
        lines += [
            f"Measured {bench['timestamp'].min()} … {bench['timestamp'].max()} (UTC) from git "
            f"{', '.join(commits) or 'unknown'}. Accuracy gate: mAP50-95 ≥ {gate:g} × the "
            f"{baseline.replace('_', ' ')} baseline of the same target.",
            "",
        ]
    targets = sorted(set(bench.get("target", pd.Series(dtype=str))) | set(acc.get("target", pd.Series(dtype=str))))
    for target in targets:
        tb = bench[bench["target"] == target] if not bench.empty else bench
        ta = acc[acc["target"] == target] if not acc.empty else acc
        merged = tb.merge(ta, on=["target", "model", "backend", "precision"], how="left") if not tb.empty else tb
        lines += [f"## Target `{target}`", ""]
        if not tb.empty:
            first = tb.iloc[0]
            libs = {**first["libraries"]}
            lib_text = ", ".join(f"{k} {v}" for k, v in libs.items() if v)
            lines += [
                f"Device: {first['device']}; threads {first['threads']}; {first['warmup']} warmup + "
                f"{first['iterations']} timed iterations per row. Libraries: {lib_text}.",
                "",
            ]
            merged = merged.sort_values(["model", "backend", "precision", "batch"])
            lines += [
                markdown_table(
                    merged,
                    {
                        "model": ("model", 0),
                        "backend": ("backend", 0),
                        "precision": ("precision", 0),
                        "batch": ("batch", 0),
                        "p50_ms": ("p50 ms", 2),
                        "p99_ms": ("p99 ms", 2),
                        "throughput": ("throughput img/s", 1),
                        "pre_ms": ("pre ms/batch", 2),
                        "post_ms": ("post ms/batch", 2),
                        "map50_95": ("mAP50-95", 4),
                        "ratio": ("ratio to baseline", 3),
                        "gate_passed": ("gate", 0),
                    },
                ),
                "",
            ]
            lowest, best = fastest_passing(merged)
            if lowest is None and best is None:
                lines += ["**No configuration passes the accuracy gate on this target.**", ""]
            else:
                if lowest is not None:
                    lines.append(
                        f"- Fastest at batch 1 that passes the gate: **{_label(lowest)}**, "
                        f"p50 {lowest['p50_ms']:.2f} ms, p99 {lowest['p99_ms']:.2f} ms, mAP50-95 "
                        f"{lowest['map50_95']:.4f}."
                    )
                if best is not None:
                    lines.append(
                        f"- Highest throughput that passes the gate: **{_label(best)}**, "
                        f"{best['throughput']:.1f} img/s (model only)."
                    )
                lines.append("")
        if not ta.empty:
            lines += [
                "Accuracy on the validation split:",
                "",
                markdown_table(
                    ta.sort_values(["model", "backend", "precision"]),
                    {
                        "model": ("model", 0),
                        "backend": ("backend", 0),
                        "precision": ("precision", 0),
                        "images": ("images", 0),
                        "map50_95": ("mAP50-95", 4),
                        "map50": ("mAP50", 4),
                        "ap_small": ("AP small", 4),
                        "ap_medium": ("AP medium", 4),
                        "ap_large": ("AP large", 4),
                        "baseline": ("baseline", 0),
                        "ratio": ("ratio", 3),
                        "gate_passed": ("gate", 0),
                    },
                ),
                "",
            ]
            failed = ta[ta["gate_passed"] == False]  # noqa: E712
            for _, r in failed.iterrows():
                lines.append(
                    f"> **ACCURACY GATE FAILED**: {r['model']} {r['backend']} {r['precision']} keeps "
                    f"{_fmt(r['ratio'], 3)} of the baseline's mAP50-95 (gate {gate:g})."
                )
            if not failed.empty:
                lines.append("")
        for kind in PLOT_KINDS:
            key = f"{target}_{kind}"
            if key in plots:
                rel = Path("plots") / plots[key].name if plots[key].parent.name == "plots" else plots[key]
                lines.append(f"- [{kind.replace('_', ' ')}]({rel.as_posix()})")
        lines.append("")
    lines += ["## Not available on this machine", ""]
    lines += [f"- {u}" for u in unavailable] or ["- every configured backend ran"]
    lines += [
        "",
        "## What the timers include",
        "",
        "- **p50/p99 ms, throughput**: the model alone on a batch already in the backend's memory and "
        "layout (GPU work synchronised); throughput = batch × iterations / summed model time.",
        "- **pre ms/batch**: letterbox + normalise of decoded images; **post ms/batch**: raw outputs to "
        "final detections (NMS), both timed separately and never inside the model timer.",
        "- Every number comes from the JSON files under `results/`; each records its warmup and iteration "
        "counts, device, library versions, git commit, config hash and timestamp.",
        "",
    ]
    return "\n".join(lines)


def summarise(
    bench_files: list[Path],
    accuracy_files: list[Path],
    unavailable: list[str],
    gate: float,
    baseline: str,
    out: Path,
    plot_files: list[Path],
) -> str:
    bench, acc = load_tables(bench_files, accuracy_files)
    plots = {}
    for p in plot_files:
        for kind in PLOT_KINDS:
            if p.stem.endswith("_" + kind):
                plots[p.stem] = p
    targets = {key[: -len(kind) - 1] for key in plots for kind in PLOT_KINDS if key.endswith(kind)}
    for target in sorted(targets):
        tb = bench[bench["target"] == target] if not bench.empty else bench
        ta = acc[acc["target"] == target] if not acc.empty else acc
        merged = tb.merge(ta, on=["target", "model", "backend", "precision"], how="left") if not tb.empty else tb
        plot_target(target, tb, merged, plots[f"{target}_latency_vs_batch"], plots[f"{target}_accuracy_vs_latency"])
    text = render(bench, acc, unavailable, gate, baseline, plots, out)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bench", type=Path, nargs="*", default=[])
    p.add_argument("--accuracy", type=Path, nargs="*", default=[])
    p.add_argument("--unavailable", default="[]", help="JSON list of lines for backends that cannot run here")
    p.add_argument("--gate", type=float, default=0.95)
    p.add_argument("--baseline", default="torch_fp32")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plots", type=Path, nargs="*", default=[])
    a = p.parse_args(argv)
    summarise(a.bench, a.accuracy, json.loads(a.unavailable), a.gate, a.baseline, a.out, a.plots)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    run_cli(main)
