"""Export a checkpoint to ONNX (opset 17, dynamic batch), simplify it, and check it against PyTorch.

The check runs ONNX Runtime and the torch module on the same real, preprocessed inputs (the task's:
images, or Pi0's episodes) at batch 1 and batch N (a dynamic-batch export that fails at run time fails here
instead) and records the max abs error per output in a JSON beside the model.

A family exported as several graphs (`FamilySpec.onnx_parts`: SAMURAI's image encoder, memory attention, mask
decoder and memory encoder) writes its first part at the model's path and the others beside it, and checks each
part on the calls its torch model makes while it runs the task's check inputs (`export_parts`).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.envinfo import library_versions
from workflow_scripts.core.io import PlanforgeError, atomic_path, run_cli, write_json
from workflow_scripts.models import FAMILIES, get_family
from workflow_scripts.tasks import get_task


def simplify(path: Path, method: str) -> str:
    """Simplify the ONNX file in place with onnxsim (or onnxslim); return the tool that did it."""
    import onnx

    tried = ["onnxsim", "onnxslim"] if method == "auto" else [method]
    reasons = []
    for tool in tried:
        if tool == "none":
            return "none"
        try:
            model = onnx.load(str(path))
            if tool == "onnxsim":
                import onnxsim

                simplified, ok = onnxsim.simplify(model)
                if not ok:
                    raise RuntimeError("onnxsim could not validate the simplified model")
            else:
                import onnxslim

                simplified = onnxslim.slim(model)
            onnx.save(simplified, str(path))
            return tool
        except Exception as exc:  # ImportError where a wheel is missing, or the tool's own failure
            reasons.append(f"{tool}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if method == "auto":
        return "none (" + "; ".join(reasons) + ")"
    raise PlanforgeError(f"export.simplify={method!r} failed ({reasons[0]}); set export.simplify to auto or none")


def _rows(inputs: np.ndarray | dict[str, np.ndarray], i: int) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        return {k: v[i : i + 1] for k, v in inputs.items()}
    return inputs[i : i + 1]


def check_against_torch(onnx_path: Path, model, family: str, inputs: np.ndarray | dict[str, np.ndarray]) -> dict:
    """Max abs error of ONNX Runtime vs torch on real inputs, at batch 1 and batch N.

    `inputs` is the task's batch: one array (detection: preprocessed images), or named arrays (vla: images,
    prompt ids and mask, state, noise) fed by name to the inputs the ONNX graph kept.
    """
    import onnxruntime as ort
    import torch

    fam = get_family(family)
    named = isinstance(inputs, dict)
    with torch.inference_mode():
        raw = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}) if named else model(torch.from_numpy(inputs))
        ref = fam.forward_output(raw)
    refs = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def feed(x):
        return {n: x[n] for n in names} if named else {names[0]: x}

    full = sess.run(None, feed(inputs))
    count = len(next(iter(inputs.values()))) if named else len(inputs)
    single = [np.concatenate(parts) for parts in zip(*(sess.run(None, feed(_rows(inputs, i))) for i in range(count)))]
    errors = {}
    for out, r, f, s in zip(sess.get_outputs(), refs, full, single):
        if r.shape != f.shape:
            raise PlanforgeError(f"{onnx_path}: output {out.name} has shape {f.shape}, torch gives {r.shape}")
        errors[out.name] = {
            "max_abs_error_batch_n": float(np.abs(r - f).max()),
            "max_abs_error_batch_1": float(np.abs(r - s).max()),
            "max_abs_reference": float(np.abs(r).max()),
            "shape_batch_n": list(f.shape),
        }
    return errors


def export(
    family: str,
    checkpoint: Path,
    dataset: Path,
    out: Path,
    report: Path,
    imgsz: int,
    opset: int,
    dynamic: bool,
    simplify_method: str,
    check_images: int,
    max_abs_error: float,
) -> dict:
    """Export, simplify, check; write the ONNX file and its report only if the check passes."""
    import onnx

    if FAMILIES[family].onnx_parts:
        return export_parts(
            family, checkpoint, dataset, out, report, imgsz, opset, simplify_method, check_images, max_abs_error
        )
    fam = get_family(family)
    task = get_task(FAMILIES[family].task)
    if not hasattr(task, "export_check_inputs"):
        raise PlanforgeError(f"family {family}: its task {task.NAME} has no single-graph ONNX export to check")
    model = fam.load_torch(checkpoint)
    inputs = task.export_check_inputs(fam, model, dataset, check_images, imgsz)
    count = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    t0 = time.perf_counter()
    with atomic_path(out) as tmp:
        # a family traced on named inputs (Pi0) gets the task's; an image family makes its own dummy batch
        example = {"example": inputs} if isinstance(inputs, dict) else {}
        facts = fam.export_onnx(checkpoint, tmp, imgsz=imgsz, opset=opset, dynamic=dynamic, **example)
        t_export = time.perf_counter() - t0
        simplifier = simplify(tmp, simplify_method)
        onnx.checker.check_model(str(tmp))
        errors = check_against_torch(tmp, model, family, inputs)
        worst = max(e[k] for e in errors.values() for k in ("max_abs_error_batch_n", "max_abs_error_batch_1"))
        if worst > max_abs_error:
            raise PlanforgeError(
                f"{out}: ONNX differs from PyTorch by {worst:.4g} (> export.max_abs_error "
                f"{max_abs_error}); the export is wrong, see the log"
            )
        model = onnx.load(str(tmp))
        record = {
            **facts,
            "checkpoint": str(checkpoint),
            "opset": opset,
            "dynamic_batch": dynamic,
            "imgsz": imgsz,
            "simplifier": simplifier,
            "export_seconds": round(t_export, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
            "size_bytes": tmp.stat().st_size,
            **_graph_io(model),
            "check": {
                "images": count,  # items of the task's val split: images, or episodes
                "reference": "torch eager FP32 on CPU",
                "outputs": errors,
                "max_abs_error": worst,
                "tolerance": max_abs_error,
            },
            "libraries": library_versions(("torch", "ultralytics", "onnx", "onnxsim", "onnxslim", "onnxruntime")),
        }
    write_json(report, record)
    return record


def _graph_io(model) -> dict:
    """The ONNX graph's inputs and outputs with their shapes (a dynamic dimension by its name)."""
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {
        "inputs": [{"name": i.name, "shape": dims(i)} for i in model.graph.input],
        "outputs": [{"name": o.name, "shape": dims(o)} for o in model.graph.output],
    }


def export_parts(
    family: str,
    checkpoint: Path,
    dataset: Path,
    out: Path,
    report: Path,
    imgsz: int,
    opset: int,
    simplify_method: str,
    check_images: int,
    max_abs_error: float,
) -> dict:
    """Export a family's parts (`fam.part_files(out)`: the first at `out`), simplify each, check each against torch on
    the calls the torch model makes on the task's check inputs; write every file and the report only if all pass."""
    import onnx
    import onnxruntime as ort

    fam = get_family(family)
    task = get_task(FAMILIES[family].task)
    model = fam.load_torch(checkpoint)
    inputs = task.export_check_inputs(fam, model, dataset, check_images, imgsz)
    files = fam.part_files(out)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmps = {part: stack.enter_context(atomic_path(path)) for part, path in files.items()}
        facts = fam.export_parts(model, tmps, opset)
        t_export = time.perf_counter() - t0
        simplifiers = {part: simplify(tmp, simplify_method) for part, tmp in tmps.items()}
        for tmp in tmps.values():
            onnx.checker.check_model(str(tmp))
        calls = fam.record_parts(model, inputs["frames"], inputs["boxes"])
        sessions = {p: ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]) for p, tmp in tmps.items()}
        errors = fam.check_parts(calls, sessions)
        worst_part, worst = max(
            ((p, o["checked_error"]) for p, e in errors.items() for o in e["outputs"].values()), key=lambda x: x[1]
        )
        if worst > max_abs_error:
            raise PlanforgeError(
                f"{files[worst_part]}: ONNX part {worst_part} differs from PyTorch by {worst:.4g} (> export.max_abs_error "
                f"{max_abs_error}); the export is wrong, see the log"
            )
        first = next(iter(tmps.values()))
        graph = onnx.load(str(first))
        for key, value in fam.parts_metadata(checkpoint, files).items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, str(first))
        record = {
            **facts,
            "checkpoint": str(checkpoint),
            "opset": opset,
            "dynamic_batch": "image_encoder only (frames of several live sequences); the others: one object",
            "simplifier": simplifiers,
            "export_seconds": round(t_export, 2),
            "total_seconds": round(time.perf_counter() - t0, 2),
            "files": {
                part: {"path": str(files[part]), "size_bytes": tmp.stat().st_size, **_graph_io(onnx.load(str(tmp)))}
                for part, tmp in tmps.items()
            },
            "check": {
                "sequences": len(inputs["frames"]),
                "reference": "torch eager FP32 on CPU: each part's calls while the torch tracker runs the val sequences",
                "parts": errors,
                "max_abs_error": worst,
                "tolerance": max_abs_error,
            },
            "libraries": library_versions(("torch", "transformers", "onnx", "onnxsim", "onnxslim", "onnxruntime")),
        }
    write_json(report, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--dataset", type=Path, required=True, help="dataset folder; its val images check the export")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--imgsz", type=int, required=True)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--static-batch", action="store_true")
    p.add_argument("--simplify", default="auto", choices=["auto", "onnxsim", "onnxslim", "none"])
    p.add_argument("--check-images", type=int, default=4)
    p.add_argument("--max-abs-error", type=float, default=0.05)
    a = p.parse_args(argv)
    r = export(
        a.family,
        a.checkpoint,
        a.dataset,
        a.out,
        a.report,
        a.imgsz,
        a.opset,
        not a.static_batch,
        a.simplify,
        a.check_images,
        a.max_abs_error,
    )
    checked = r["check"].get("images", r["check"].get("sequences"))
    print(
        f"{a.out}: opset {r['opset']}, simplified by {r['simplifier']}, max abs error vs torch "
        f"{r['check']['max_abs_error']:.3g} on {checked} {'images' if 'images' in r['check'] else 'sequences'}"
    )


if __name__ == "__main__":
    run_cli(main)
