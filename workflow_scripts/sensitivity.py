"""The float-fallback variant of an INT8 model: the fewest blocks kept in float for the accuracy gate to hold.

A DAG step (rules/quantize.smk, checkpoint `int8_fallback`), planned for every scored INT8 row. It first
reads that row's accuracy JSON: where the row passes the gate, nothing is searched, the plain QDQ model is
the result and the report says "not needed". Otherwise:

1. rank the model's blocks (node-name prefixes such as `/model.8/` or `/inner/model/decoder/`) cheaply,
   with no accuracy run: ONNX Runtime's `qdq_loss_debug` (`create_activation_matching`, the SQNR of
   `compute_activation_error`) compares every activation of the float and QDQ models on a few calib
   images; a block's score is the worst SQNR its own quantization adds (pre- against post-QDQ);
2. confirm with as few accuracy runs as possible: keep the 1, 2, 4, … worst-ranked blocks in float until
   the gate holds, then bisect down to the smallest prefix that still holds (at most `max_runs` runs).

The ranking runs with ONNX Runtime's graph optimisations off (qdq_loss_debug reads every tensor, which
stops the QDQ fusions), so it sees quantization noise, not the fused kernels' saturation on CPUs without
VNNI; the confirming runs use the target's own backend settings and so see both. The report lists the
ranking, every run, the blocks kept in float and the INT8 plan (`int8.choice`), beside the model.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from workflow_scripts.accuracy import evaluate
from workflow_scripts.calibrate import calibration_batches
from workflow_scripts.core.io import PlanforgeError, atomic_path, read_json, run_cli, write_json
from workflow_scripts.core.precisions import parse as parse_precision
from workflow_scripts.plan.settings import AccuracySettings, FallbackSettings, QuantizeSettings
from workflow_scripts.quantize import excluded_nodes, int8_plan, quantize
from workflow_scripts.tasks import gate

WANT_BLOCKS = 16  # split the graph's name tree until no block holds more than 1/16 of the weighted nodes
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # where INT8 kernels run, and what a block's cost is


def weighted_nodes(model) -> list[str]:
    """Names of the nodes whose integer kernels matter (convolutions and matrix products), in graph order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def blocks(node_names: list[str], exclude: set[str] = frozenset(), want: int = WANT_BLOCKS) -> list[str]:
    """Node-name prefixes (`/a/b/`) covering the nodes, in graph order: from the top of the name tree, the
    largest block is split into its children while it holds more than 1/`want` of the nodes (a node with no
    deeper path is a block of its own name), up to 4 × `want` blocks."""
    names = [n for n in node_names if n not in exclude and n.startswith("/")]

    def key(name: str, depth: int) -> str:
        parts = name.split("/")[1:]  # "/a/b/Conv" → ["a", "b", "Conv"]
        return name if len(parts) <= depth else "/" + "/".join(parts[:depth]) + "/"

    groups: dict[str, tuple[list[str], int]] = {"/": (names, 0)}  # prefix → (its nodes, its depth)
    largest = max(2, len(names) // want)
    while True:
        open_ = [g for g, (ns, _) in groups.items() if g.endswith("/") and len(ns) > largest]
        if not open_:
            break
        g = max(open_, key=lambda x: len(groups[x][0]))
        members, d = groups[g]
        kids: dict[str, list[str]] = {}
        for n in members:
            kids.setdefault(key(n, d + 1), []).append(n)
        if len(groups) - 1 + len(kids) > 4 * want and g != "/":
            break
        del groups[g]
        groups.update({c: (ns, d + 1) for c, ns in kids.items()})
    order = {n: i for i, n in enumerate(names)}
    return sorted(groups, key=lambda g: min(order[n] for n in groups[g][0]))


def block_of(node: str, prefixes: list[str]) -> str | None:
    """The block a node belongs to (its own name, or the longest prefix it starts with)."""
    hits = [p for p in prefixes if node == p or (p.endswith("/") and node.startswith(p))]
    return max(hits, key=len) if hits else None


def rank_blocks(fp32: Path, qdq: Path, data: list[np.ndarray], prefixes: list[str]) -> list[dict]:
    """Blocks worst first by the SQNR (dB) of the activations they produce: the noise their own QDQ adds
    (`qdq`: pre- vs post-QDQ) and the drift from the float model (`xmodel`), over the images of `data`."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import (
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    producer = {o: n.name for n in onnx.load(str(fp32)).graph.node for o in n.output}
    sums: dict[str, np.ndarray] = {}  # tensor → [‖pre‖², ‖pre − post‖², ‖float‖², ‖float − post‖²]
    with tempfile.TemporaryDirectory(prefix="planforge-rank-") as tmp:
        sessions = []
        for name, src in (("float", fp32), ("qdq", qdq)):
            private, augmented = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.aug.onnx"
            shutil.copyfile(src, private)  # ORT writes `<model>-inferred.onnx` beside what it loads
            modify_model_output_intermediate_tensors(str(private), str(augmented))
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sessions.append(ort.InferenceSession(str(augmented), so, providers=["CPUExecutionProvider"]))
        suffix = "_ReshapedSavedOutput"
        for batch in data:  # one image at a time: every activation of both models is held only for it
            for image in batch:
                acts = []
                for sess in sessions:
                    feed = {sess.get_inputs()[0].name: image[None]}
                    names = [o.name for o in sess.get_outputs()]
                    acts.append(
                        {n[: -len(suffix)]: [v] for n, v in zip(names, sess.run(None, feed)) if n.endswith(suffix)}
                    )
                for tensor, m in create_activation_matching(acts[1], acts[0]).items():
                    pre, post = m["pre_qdq"][0].astype(np.float64), m["post_qdq"][0].astype(np.float64)
                    flt = m["float"][0].astype(np.float64) if m.get("float") else pre
                    sq = np.array(
                        [np.sum(pre**2), np.sum((pre - post) ** 2), np.sum(flt**2), np.sum((flt - post) ** 2)]
                    )
                    sums[tensor] = sums.get(tensor, 0) + sq
    eps = np.finfo(float).eps

    def sqnr(signal: float, noise: float) -> float:
        return float(20 * np.log10(max(np.sqrt(signal), eps) / max(np.sqrt(noise), eps)))

    per_block: dict[str, dict] = {}
    for tensor, (s_pre, n_pre, s_flt, n_flt) in sums.items():
        b = block_of(producer.get(tensor, ""), prefixes)
        if b is None or s_pre == 0.0:  # an all-zero tensor (a constant Clip bound) has no SQNR
            continue
        q, x = sqnr(s_pre, n_pre), sqnr(s_flt, n_flt)
        e = per_block.setdefault(b, {"block": b, "qdq_sqnr_db": q, "xmodel_sqnr_db": x, "tensors": 0})
        e["qdq_sqnr_db"], e["xmodel_sqnr_db"] = min(e["qdq_sqnr_db"], q), min(e["xmodel_sqnr_db"], x)
        e["tensors"] += 1
    ranked = sorted(per_block.values(), key=lambda e: (e["qdq_sqnr_db"], e["xmodel_sqnr_db"]))
    return [
        {**e, "qdq_sqnr_db": round(e["qdq_sqnr_db"], 2), "xmodel_sqnr_db": round(e["xmodel_sqnr_db"], 2)}
        for e in ranked
    ]


def search(order: list[str], trial: Callable[[list[str]], dict], max_runs: int) -> tuple[list[str], list[dict]]:
    """The shortest prefix of `order` whose trial passes: doubling, then bisecting, in at most `max_runs` trials.

    `trial(keep)` returns {"passed", "ratio", …}. Where none passes, the prefix with the best ratio is kept."""
    runs: list[dict] = []

    def run(k: int) -> dict:
        r = {"blocks": k, "keep_float": order[:k], **trial(order[:k])}
        runs.append(r)
        print(f"fallback: {k} block(s) in float: ratio {r['ratio']} ({'pass' if r['passed'] else 'FAIL'})", flush=True)
        return r

    lo, hi, k = 0, None, 1  # lo: largest prefix known to fail; hi: smallest known to pass
    while order and len(runs) < max_runs:
        k = min(k, len(order))
        if run(k)["passed"]:
            hi = k
            break
        lo = k
        if k == len(order):
            break
        k *= 2
    while hi is not None and hi - lo > 1 and len(runs) < max_runs:
        mid = (lo + hi) // 2
        if run(mid)["passed"]:
            hi = mid
        else:
            lo = mid
    if hi is not None:
        return order[:hi], runs
    best = max(runs, key=lambda r: r["ratio"] if r["ratio"] is not None else -1, default=None)
    return (best["keep_float"] if best else []), runs


def fallback(
    family: str,
    model_name: str,
    fp32: Path,
    qdq: Path,
    ranges: Path,
    method: str,
    dataset: Path,
    checkpoint_info: Path,
    accuracy: Path,
    baseline: Path | None,
    s: FallbackSettings,
    out: Path,
    report: Path,
) -> dict:
    """Write `out` (the fallback QDQ model: the plain one where the row passes) and `report`."""
    import onnx

    row = read_json(accuracy)
    q = QuantizeSettings(**{k: v for k, v in s.quantize.items() if k != "config_hash"})
    acc = AccuracySettings(**{k: v for k, v in s.accuracy.items() if k != "config_hash"})
    plain = read_json(qdq.with_suffix(".json"))
    common = {
        "target": s.target,
        "backend": s.backend,
        "precision": row["precision"],
        "source": str(qdq),
        "decided_by": str(accuracy),
        "metric": row["gate"]["metric"],
        "gate": row["gate"],
        "before": {"value": row[row["gate"]["metric"]], "ratio": row.get("ratio_to_baseline")},
    }
    t0 = time.perf_counter()
    if row["gate"]["passed"]:
        with atomic_path(out) as tmp:
            shutil.copyfile(qdq, tmp)
        record = {
            **common,
            "needed": False,
            "reason": f"not needed: {row['precision']} passes (ratio {row.get('ratio_to_baseline')})",
            "keep_float": [],
            "after": common["before"],
            "int8": plain.get("int8"),
        }
        write_json(report, record)
        return record

    base = read_json(baseline) if baseline else None
    model = onnx.load(str(fp32))
    kept = {n for names in excluded_nodes(family, model, q.keep_float).values() for n in names}
    prefixes = blocks(weighted_nodes(model), exclude=kept)
    data = calibration_batches(family, dataset, acc.imgsz, s.rank_images, batch=1)
    ranking = rank_blocks(fp32, qdq, data, prefixes)
    order = [e["block"] for e in ranking]
    options = {
        "activation_type": q.activation_type,
        "per_channel": q.per_channel,
        "reduce_range": q.reduce_range,
        "weight_type": q.weight_type,
        "scheme": q.scheme,
        "isa": q.isa,
    }
    with tempfile.TemporaryDirectory(prefix="planforge-fallback-") as tmp:
        models: dict[tuple[str, ...], Path] = {}
        fb_precision = parse_precision(row["precision"]).fallback_variant  # int8_minmax → int8_minmax_fb

        def trial(keep: list[str]) -> dict:
            t = time.perf_counter()
            path = Path(tmp) / f"k{len(models)}.onnx"
            quantize(
                family, fp32, ranges, method, path, path.with_suffix(".json"), q.keep_float, **options, fallback=keep
            )
            models[tuple(keep)] = path
            r = evaluate(model_name, family, path, checkpoint_info, s.backend, fb_precision, dataset, s.target, acc)
            r = gate(r, base, acc.gate, acc.error_tolerance)
            return {
                "value": r[r["gate"]["metric"]],
                "ratio": r.get("ratio_to_baseline"),
                "passed": r["gate"]["passed"],
                "seconds": round(time.perf_counter() - t, 1),
            }

        keep, runs = search(order, trial, s.max_runs)
        chosen = next((r for r in runs if r["keep_float"] == keep), None)
        with atomic_path(out) as dst:
            shutil.copyfile(models[tuple(keep)] if chosen else qdq, dst)
        final = read_json(models[tuple(keep)].with_suffix(".json")) if chosen else plain
    passed = bool(chosen and chosen["passed"])
    reason = f"{row['precision']} misses the gate (ratio {row.get('ratio_to_baseline')}); " + (
        f"{len(keep)} block(s) in float pass it (ratio {chosen['ratio']})"
        if passed
        else f"no prefix of the ranking passed in {len(runs)} accuracy runs (quantize.fallback.max_runs); "
        f"kept the best: {len(keep)} block(s), ratio {chosen['ratio'] if chosen else None}"
    )
    record = {
        **common,
        "needed": True,
        "reason": reason,
        "passed": passed,
        "keep_float": keep,
        "after": {"value": chosen["value"], "ratio": chosen["ratio"]} if chosen else common["before"],
        "ranking": ranking,
        "ranking_images": s.rank_images,
        "runs": runs,
        "seconds": round(time.perf_counter() - t0, 1),
        "quantize": {k: v for k, v in final.items() if k != "int8"},  # not a precision: the sidecar's INT8 plan key
        "int8": int8_plan(q.isa, q.scheme, q.reduce_range, keep),
    }
    write_json(report, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--qdq", type=Path, required=True, help="the plain QDQ model (its sidecar JSON beside it)")
    p.add_argument("--ranges", type=Path, required=True, help="artifacts/calib/<model>/<method>.ranges.json")
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--checkpoint-info", type=Path, required=True)
    p.add_argument("--accuracy", type=Path, required=True, help="the INT8 row's accuracy JSON that decides")
    p.add_argument("--baseline", type=Path, default=None, help="the baseline's accuracy JSON")
    p.add_argument("--settings", required=True, help="JSON: workflow_scripts.plan.settings.FallbackSettings")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    a = p.parse_args(argv)
    s = FallbackSettings.from_json(a.settings)
    if not re.fullmatch(r"\w+", a.method):
        raise PlanforgeError(f"--method {a.method!r}: not a calibration method name")
    r = fallback(
        a.family, a.model, a.fp32, a.qdq, a.ranges, a.method, a.dataset, a.checkpoint_info, a.accuracy,
        a.baseline, s, a.out, a.report,
    )  # fmt: skip
    print(f"{a.out}: {r['reason']}; {r['int8']['choice'] if r.get('int8') else ''}")


if __name__ == "__main__":
    run_cli(main)
