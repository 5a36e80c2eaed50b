"""results/summary.md: one table per target, the fastest configuration that passes the accuracy gate,
the environment, what could not run here, and links to the plots."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from workflow_scripts.core.io import atomic_path, read_json, run_cli
from workflow_scripts.core.pareto import pareto_front
from workflow_scripts.core.precisions import PRECISIONS, REFERENCE, is_int8_name
from workflow_scripts.core.results import load_tables, merged
from workflow_scripts.plots import PLOT_KINDS
from workflow_scripts.serving.report import serving_lines
from workflow_scripts.tasks import TASKS


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


def _span(values) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _min_seconds_note(tb) -> str:
    seconds = float(tb["min_seconds"].max())
    return f" (at least {seconds:g} s of timed calls each)" if seconds else ""


def _metric_label(acc: pd.DataFrame) -> str:
    """The accuracy metric's name: the one task's label, or 'accuracy' where tasks differ."""
    labels = sorted(set(acc["metric_label"])) if not acc.empty and "metric_label" in acc else []
    return labels[0] if len(labels) == 1 else "accuracy"


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
    """Lowest batch-1 p50 and highest throughput among stable configurations that pass the accuracy gate."""
    return fastest(merged[merged["gate_passed"] == True])  # noqa: E712 (NaN-safe comparison)


def _unstable(rows: pd.DataFrame) -> pd.Series:
    """Rows whose JSON says "stable": false (older JSONs, without the key, are not marked)."""
    return rows["stable"] == False if "stable" in rows else pd.Series(False, index=rows.index)  # noqa: E712


def fastest(rows: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None]:
    """Lowest batch-1 p50 and highest throughput among `rows`, never an unstable one (None where none is left)."""
    ok = rows[~_unstable(rows)]
    b1 = ok[ok["batch"] == 1]
    lowest = b1.loc[b1["p50_ms"].idxmin()] if not b1.empty else None
    best = ok.loc[ok["throughput"].idxmax()] if not ok.empty else None
    return lowest, best


def _unstable_text(row: pd.Series) -> str:
    """A row and what disturbed it, in figures (its reported loop's reason; older JSONs: its spread)."""
    why = row.get("disturbance")
    if not isinstance(why, str):
        why = f"cv {_fmt(row['cv'])}, p99/p50 {_fmt(row['p99_over_p50'])}"
    return f"{_label(row)} (p50 {row['p50_ms']:.2f} ms, {why})"


def skipped_line(rows: pd.DataFrame, lowest: pd.Series | None, best: pd.Series | None) -> list[str]:
    """One line naming the unstable rows the picks above skipped (ones that would have won), or saying that
    no stable row exists among `rows` (the candidates) rather than picking one."""
    unstable = rows[_unstable(rows)]
    if unstable.empty:
        return []
    names = ", ".join(_unstable_text(r) for _, r in unstable.iterrows())
    if len(unstable) == len(rows):
        return [f"- **No stable row exists** among these candidates, so none is named fastest: {names} †."]
    u1 = unstable[unstable["batch"] == 1]
    faster = u1 if lowest is None else u1[u1["p50_ms"] < lowest["p50_ms"]]
    more = unstable if best is None else unstable[unstable["throughput"] > best["throughput"]]
    skipped = pd.concat([faster, more]).drop_duplicates(subset=["backend", "precision", "batch", "model"])
    if skipped.empty:
        return []
    texts = ", ".join(_unstable_text(r) for _, r in skipped.iterrows())
    return [f"- Skipped as unstable †, faster on paper but disturbed in every timed loop: {texts}."]


def _precision(name: str):
    """The parsed precision (core.precisions), or None for a name this checkout does not know."""
    return PRECISIONS[name] if name in PRECISIONS else None


def _cpu_flags(row: pd.Series) -> tuple[str, str]:
    """(the CPU's vector instruction sets, its INT8 dot-product ones) as the row's JSON recorded them."""
    flags = row.get("cpu_flags") if isinstance(row.get("cpu_flags"), str) else None
    int8 = row.get("cpu_int8") if isinstance(row.get("cpu_int8"), str) else ""
    return (flags or int8 or "not recorded").replace(",", ", "), int8.replace(",", ", ")


def _int8_reason(r: pd.Series, slower: bool) -> str:
    """Why an INT8 row is slower than FP32, where the instruction set can say: only for a slower row of integer
    kernels (a QDQ model) on a CPU. A faster row, GPU rows and weight-only INT8 get no reason."""
    p = _precision(str(r["precision"]))
    on_cpu = str(r.get("run_device") or "cpu").startswith("cpu")
    integer_kernels = p is None or (p.calibration is not None and not p.weight_only)
    if not slower or not on_cpu or not integer_kernels:
        return ""
    flags, int8 = _cpu_flags(r)
    if int8:
        return (
            f"; this CPU has INT8 dot-product instructions ({int8}), so the instruction set is not why; the "
            "Quantize/Dequantize work around the integer kernels outweighs what they save on this model"
        )
    return (
        f"; this CPU ({flags}) has no INT8 dot-product instructions (VNNI, AMX, ARM dotprod), so its INT8 kernels "
        "widen to 16 bits and the added Quantize/Dequantize work is not paid back"
    )


def int8_speed_notes(joined: pd.DataFrame) -> list[str]:
    """One line per INT8 row: its batch-matched speed against FP32 of the same backend, with the instruction-set
    reason only where INT8 measured slower; no ratio where either row is unstable (†)."""
    notes = []
    int8 = joined[[is_int8_name(str(n)) for n in joined["precision"]]]
    for _, r in int8.iterrows():
        fp32 = joined[
            (joined["model"] == r["model"])
            & (joined["backend"] == r["backend"])
            & (joined["precision"] == REFERENCE)
            & (joined["batch"] == r["batch"])
        ]
        if fp32.empty:
            continue
        f = fp32.iloc[0]
        pair = pd.DataFrame([r, f])
        if _unstable(pair).any():
            bad = pair[_unstable(pair)]
            which = "; ".join(_unstable_text(x) for _, x in bad.iterrows())
            notes.append(
                f"- INT8 {_label(r)}: no speed ratio to FP32: {which} † {'are' if len(bad) > 1 else 'is'} unstable, "
                "so the two do not compare; measure again on a quiet machine."
            )
            continue
        speedup = f["p50_ms"] / r["p50_ms"]
        slower = speedup < 1
        notes.append(
            f"- INT8 {_label(r)}: {speedup:.2f}× the speed of FP32 ({'slower' if slower else 'faster'}, measured: "
            f"p50 {r['p50_ms']:.2f} vs {f['p50_ms']:.2f} ms){_int8_reason(r, slower)}."
        )
    return notes


def int8_plan_lines(accuracy_files: list[Path]) -> dict[str, list[str]]:
    """target → one line per INT8 row naming the instruction set and the choice made (the QDQ sidecar's `int8`)."""
    out: dict[str, list[str]] = {}
    for p in accuracy_files:
        r = read_json(p)
        if r.get("int8"):  # the QDQ sidecar's INT8 plan
            verdict = "passes" if r["gate"]["passed"] else "FAILS"
            out.setdefault(r["target"], []).append(
                f"- INT8 plan, {r['model']} {r['backend']} {r['precision']}: {r['int8']['choice']}; "
                f"{r['metric_label']} {r[r['gate']['metric']]:.4f}, ratio {_fmt(r.get('ratio_to_baseline'), 3)}: "
                f"{verdict} the gate."
            )
    return {t: [*lines, ""] for t, lines in out.items()}


def _label(row: pd.Series) -> str:
    return f"{row['model']} {row['backend']} {row['precision']} b{int(row['batch'])}"


def reference_lines(references: list[dict], bench: pd.DataFrame) -> list[str]:
    """Cited figures beside this workflow's own: the best measured p50 / throughput of the same
    model, backend, precision and batch over every target of this run, stable rows only ('—' where none ran;
    an unstable row's figure marked † where only unstable ones did)."""
    if not references:
        return []
    lines = [
        "## Reference figures (cited, not measured by this workflow)",
        "",
        "| model | backend | precision | batch | cited p50 ms | p50 ms here | cited img/s | img/s here | source |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ref in references:
        for row in ref["rows"]:
            mine = bench
            if not mine.empty:
                mine = mine[
                    (mine["model"] == ref["model"])
                    & (mine["backend"] == row["backend"])
                    & (mine["precision"] == row["precision"])
                    & (mine["batch"] == row["batch"])
                ]
            stable = mine[~_unstable(mine)] if not mine.empty else mine
            here_p50 = _fmt(stable["p50_ms"].min()) if not stable.empty else None
            here_tp = _fmt(stable["throughput"].max(), 1) if not stable.empty else None
            if stable.empty and not mine.empty:  # only unstable rows: their figures, marked, never as a clean one
                here_p50, here_tp = f"{mine['p50_ms'].min():.2f}†", f"{mine['throughput'].max():.1f}†"
            source = ref["source"] + (f" ({row['note']})" if row.get("note") else "")
            lines.append(
                f"| {ref['model']} | {row['backend']} | {row['precision']} | {row['batch']} | "
                f"{_fmt(row.get('p50_ms'))} | {_fmt(here_p50)} | {_fmt(row.get('throughput'), 1)} | "
                f"{_fmt(here_tp)} | {source} |"
            )
    return lines + [""]


def calibration_cache_lines(caches: list[Path]) -> list[str]:
    """The TensorRT INT8 calibration caches made here for targets that build engines: header and tensor count,
    read back from each file (one that does not parse as a cache fails here, in one line naming it)."""
    from workflow_scripts.tensorrt.calib_cache import CalibrationCache

    if not caches:
        return []
    lines = ["## TensorRT INT8 calibration caches", ""]
    for path in caches:
        cache = CalibrationCache.read(path)
        lines.append(f"- `{path}`: TRT-{cache.version}-{cache.algorithm}, {len(cache.scales)} tensors")
    return [*lines, ""]


def pareto_lines(joined: pd.DataFrame) -> list[str]:
    """The batch-1 Pareto front of one target per task (latency ↓, the task's metric in its own direction: a
    score ↑, an error ↓), fastest first. Tasks never share a front: their metrics do not compare."""
    if "score" not in joined or joined.empty:
        return []
    b1 = joined[joined["batch"] == 1]
    groups = list(b1.groupby("task")) if "task" in b1 else [(None, b1)]
    lines = []
    for task_name, rows in groups:
        higher = TASKS[task_name].higher_is_better if task_name in TASKS else True
        front = pareto_front(rows, higher_is_better=higher)
        if front.empty:
            continue
        digits = ".4f" if higher else ".4g"
        steps = [
            f"**{r['model']} {r['backend']} {r['precision']}** ({r['p50_ms']:.2f} ms, {r['score']:{digits}})"
            for _, r in front.iterrows()
        ]
        what = f"{task_name}: " if task_name else ""
        best = "accurate" if higher else "exact"
        lines.append(
            f"- Pareto front at batch 1 ({what}p50 ↓, {front['metric_label'].iloc[0]} {'↑' if higher else '↓'}; each "
            f"is the most {best} within its latency): {' → '.join(steps)}."
        )
    return lines


def picture_lines(pictures: list[Path], target: str, out: Path) -> list[str]:
    """Links to one target's pictures (results/{target}/pictures/{model}/{run}.png), per model."""
    mine = sorted(p for p in pictures if p.parent.parent.name == "pictures" and p.parent.parent.parent.name == target)
    if not mine:
        return []
    lines = ["Pictures (the first validation images, predicted boxes solid, true boxes dashed):", ""]
    for model in dict.fromkeys(p.parent.name for p in mine):
        links = [
            f"[{p.stem.replace('_', ' ', 1)}]({Path(os.path.relpath(p, out.parent)).as_posix()})"
            for p in mine
            if p.parent.name == model
        ]
        lines.append(f"- {model}: {', '.join(links)}")
    return lines + [""]


def _scores(acc: pd.DataFrame) -> pd.DataFrame:
    """The rows of tasks gated by a ratio (scores, not errors)."""
    if acc.empty or "task" not in acc:
        return acc
    return acc[[TASKS[t].higher_is_better for t in acc["task"]]]


def _error_gate_text(acc: pd.DataFrame) -> str:
    """Error metrics (vla) are gated absolutely, against the baseline's own outputs: say so where there are any."""
    if acc.empty or "task" not in acc:
        return ""
    errors = [t for t in sorted(set(acc["task"])) if not TASKS[t].higher_is_better]
    if not errors:
        return ""
    tol = sorted({float(v) for v in acc["tolerance"].dropna()}) if "tolerance" in acc else []
    parts = [f"{TASKS[t].metric_label} ≤ {', '.join(f'{v:g}' for v in tol) or 'its tolerance'}" for t in errors]
    return "; error metrics against the baseline's outputs, same inputs and noise: " + ", ".join(parts)


def _timer_notes(bench: pd.DataFrame) -> list[str]:
    """What the timers of the tasks among the bench rows include, beyond the shared lines (`TaskSpec.timer_note`)."""
    present = set(bench["bench_task"].dropna()) if "bench_task" in bench else set()
    return [spec.timer_note for name, spec in TASKS.items() if name in present and spec.timer_note]


def render(
    bench: pd.DataFrame,
    acc: pd.DataFrame,
    unavailable: list[str],
    gate: float,
    baseline: str,
    plots: dict[str, Path],
    out: Path,
    serving: list[dict] | None = None,
    references: list[dict] | None = None,
    pictures: list[Path] = (),
    calibration_caches: list[Path] = (),
    int8_plans: dict[str, list[str]] | None = None,
) -> str:
    """The summary as markdown; plot links are relative to `out`."""
    lines = ["# planforge summary", ""]
    if not bench.empty:
        commits = sorted({c for c in bench["git_commit"] if isinstance(c, str) and c})  # NaN where a row had none
        lines += [
            f"Measured {bench['timestamp'].min()} … {bench['timestamp'].max()} (UTC) from git "
            f"{', '.join(commits) or 'unknown'}. Accuracy gate: {_metric_label(_scores(acc))} ≥ {gate:g} × the "
            f"{baseline.replace('_', ' ')} baseline of the same target (each task's own metric)"
            f"{_error_gate_text(acc)}.",
            "",
        ]
    serving = serving or []
    targets = sorted(
        set(bench.get("target", pd.Series(dtype=str)))
        | set(acc.get("target", pd.Series(dtype=str)))
        | {r["target"] for r in serving}
    )
    for target in targets:
        tb, ta, joined = merged(bench, acc, target)
        lines += [f"## Target `{target}`", ""]
        if not tb.empty:
            first = tb.iloc[0]
            libs = {**first["libraries"]}
            lib_text = ", ".join(f"{k} {v}" for k, v in libs.items() if v)
            lines += [
                f"Device: {first['device']}; threads {first['threads']}; {first['warmup']} warmup + "
                f"{_span(tb['iterations'])} timed iterations per row"
                f"{_min_seconds_note(tb)}. Libraries: {lib_text}.",
                "",
            ]
            joined = joined.sort_values(["model", "backend", "precision", "batch"])
            columns = {
                "model": ("model", 0),
                "backend": ("backend", 0),
                "precision": ("precision", 0),
                "batch": ("batch", 0),
                "p50_cell": ("p50 ms", 2),  # † marks an unstable row
                "p99_ms": ("p99 ms", 2),
                "throughput": ("throughput img/s", 1),
                "pre_ms": ("pre ms/batch", 2),
                "post_ms": ("post ms/batch", 2),
                "score": (_metric_label(ta), 4),
                "ratio": ("ratio to baseline", 3),
                "gate_passed": ("gate", 0),
            }
            if "prefix_ms" in joined and joined["prefix_ms"].notna().any():  # the model timed its phases (Pi0)
                columns = {**columns, "prefix_ms": ("prefix ms", 2), "denoise_ms": ("denoise ms", 2)}
            if "prompt_ms" in joined and joined["prompt_ms"].notna().any():  # a tracker's prompt frame, timed apart
                columns = {**columns, "prompt_ms": ("prompt frame ms", 2)}
            if "power_w" in joined and joined["power_w"].notna().any():  # a power sampler ran
                columns = {**columns, "power_w": ("mean W", 2), "inf_per_j": ("inferences/J", 1)}
            unstable = _unstable(joined)
            joined = joined.assign(
                p50_cell=[f"{p:.2f}" + ("†" if u else "") for p, u in zip(joined["p50_ms"], unstable)]
            )
            lines += [markdown_table(joined, columns), ""]
            for _, r in joined[unstable].iterrows():  # footnotes: what † means, row by row
                lines += [
                    f"† {_label(r)}: unstable, {r['unstable_reason']}; its figures are that loop's, and it is "
                    "never picked as fastest, used in a speed ratio or put on a Pareto front.",
                    "",
                ]
            unscored = sorted(set(tb["model"]) - (set(ta["model"]) if not ta.empty else set()))
            scored = joined[~joined["model"].isin(unscored)]
            # the fastest passing configuration per task: a detector's images/s and a chunk's chunks/s do not compare
            groups = list(scored.groupby("task")) if not scored.empty and "task" in scored else []
            for task_name, group in groups:
                what = f" ({task_name})" if len(groups) > 1 else ""
                unit = TASKS[task_name].throughput_unit
                passing = group[group["gate_passed"] == True]  # noqa: E712
                if passing.empty:
                    lines += [f"**No configuration{what} passes the accuracy gate on this target.**", ""]
                    continue
                lowest, best = fastest_passing(group)
                if lowest is not None:
                    lines.append(
                        f"- Fastest at batch 1 that passes the gate{what}: **{_label(lowest)}**, "
                        f"p50 {lowest['p50_ms']:.2f} ms, p99 {lowest['p99_ms']:.2f} ms, {lowest['metric_label']} "
                        f"{lowest['score']:{'.4f' if TASKS[task_name].higher_is_better else '.4g'}}."
                    )
                if best is not None:
                    lines.append(
                        f"- Highest throughput that passes the gate{what}: **{_label(best)}**, "
                        f"{best['throughput']:.1f} {unit} (model only)."
                    )
                lines += skipped_line(passing, lowest, best)
            # stable rows only, one front per task (each in its metric's direction)
            lines += pareto_lines(scored[~_unstable(scored)]) if not scored.empty else []
            for model in unscored:  # random weights (accuracy: false): latency only, no gate
                rows = joined[joined["model"] == model]
                fast, peak = fastest(rows)
                text = f"- {model}: accuracy not measured (random weights or `accuracy: false`), so no gate."
                if fast is not None:
                    text += f" Fastest at batch 1: **{_label(fast)}**, p50 {fast['p50_ms']:.3f} ms;"
                if peak is not None:
                    text += f" highest throughput: **{_label(peak)}**, {peak['throughput']:.1f} img/s."
                lines.append(text)
                lines += skipped_line(rows, fast, peak)
            for _, r in (
                joined[joined["accuracy_not_measured"].notna()].iterrows() if "accuracy_not_measured" in joined else ()
            ):
                lines.append(f"- {_label(r)}: accuracy not measured: {r['accuracy_not_measured']}")
            lines.append("")
            notes = int8_speed_notes(joined)
            if notes:
                lines += notes + [""]
        for task_name, tt in ta.groupby("task") if not ta.empty else ():
            task = TASKS[task_name]
            columns = {
                "model": ("model", 0),
                "backend": ("backend", 0),
                "precision": ("precision", 0),
                **{key: (title, digits) for key, title, digits in task.columns},
                "baseline": ("baseline", 0),
                "ratio": ("ratio", 3),
                "gate_passed": ("gate", 0),
            }
            lines += [
                f"Accuracy on the validation split ({task_name}: {task.metric_label}):",
                "",
                markdown_table(tt.sort_values(["model", "backend", "precision"]), columns),
                "",
            ]
        if not ta.empty:
            failed = ta[ta["gate_passed"] == False]  # noqa: E712
            for _, r in failed.iterrows():
                if not TASKS[r["task"]].higher_is_better:
                    lines.append(
                        f"> **ACCURACY GATE FAILED**: {r['model']} {r['backend']} {r['precision']}: "
                        f"{r['metric_label']} {r['score']:.6g} > tolerance {r['tolerance']:g}."
                    )
                    continue
                lines.append(
                    f"> **ACCURACY GATE FAILED**: {r['model']} {r['backend']} {r['precision']} keeps "
                    f"{_fmt(r['ratio'], 3)} of the baseline's {r['metric_label']} (gate {gate:g})."
                )
            if not failed.empty:
                lines.append("")
        lines += (int8_plans or {}).get(target, [])
        lines += picture_lines(list(pictures), target, out)
        lines += serving_lines(serving, target)
        for kind in PLOT_KINDS:
            key = f"{target}_{kind}"
            if key in plots:
                rel = Path("plots") / plots[key].name if plots[key].parent.name == "plots" else plots[key]
                lines.append(f"- [{kind.replace('_', ' ')}]({rel.as_posix()})")
        lines.append("")
    lines += reference_lines(references or [], bench)
    lines += calibration_cache_lines(list(calibration_caches))
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
        *_timer_notes(bench),
        *(
            [
                "- **timed by trtexec** (TensorRT engines where the job's Python has no TensorRT bindings): p50/p99 are "
                "trtexec's GPU compute time (`--exportTimes` computeMs); no pre/post timers; accuracy not measured."
            ]
            if "timed_by" in bench and (bench["timed_by"] == "trtexec").any()
            else []
        ),
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
    serving_files: list[Path] = (),
    references: list[dict] | None = None,
    picture_files: list[Path] = (),
    calibration_caches: list[Path] = (),
) -> str:
    bench, acc = load_tables(bench_files, accuracy_files, TASKS)
    serving = [read_json(p) for p in serving_files]
    plots = {}
    for p in plot_files:
        for kind in PLOT_KINDS:
            if p.stem.endswith("_" + kind):
                plots[p.stem] = p
    text = render(
        bench, acc, unavailable, gate, baseline, plots, out, serving, references, picture_files, calibration_caches,
        int8_plan_lines(accuracy_files),
    )  # fmt: skip
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
    p.add_argument("--pictures", type=Path, nargs="*", default=[], help="results/{target}/pictures/… PNGs")
    p.add_argument("--serving", type=Path, nargs="*", default=[], help="serving sweep and served-accuracy JSONs")
    p.add_argument("--references", default="[]", help="JSON list: config `references` (cited figures)")
    p.add_argument(
        "--calibration-caches", type=Path, nargs="*", default=[], help="TensorRT INT8 calibration caches made here"
    )
    a = p.parse_args(argv)
    summarise(
        a.bench,
        a.accuracy,
        json.loads(a.unavailable),
        a.gate,
        a.baseline,
        a.out,
        a.plots,
        a.serving,
        json.loads(a.references),
        a.pictures,
        a.calibration_caches,
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    run_cli(main)
