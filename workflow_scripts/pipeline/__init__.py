"""Where model families meet backends: build a runner for a model artifact.

The one place a family meets a runner (families and runners never import each other), above core: core
imports neither."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.core.envinfo import check_target_device
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import Precision
from workflow_scripts.core.precisions import parse as parse_precision
from workflow_scripts.models import get_family
from workflow_scripts.runners import BACKENDS, Runner, get_runner_class


def make_runner(
    backend: str,
    artifact: str | Path,
    family: str,
    precision: Precision | str,
    device: str = "cpu",
    threads: int | None = None,
    options: dict | None = None,
    target: str | None = None,
    gpu: str | None = None,
) -> Runner:
    """A ready Runner for `artifact` (a checkpoint the family loads, or a file the backend reads).

    With `target`, also refuse hardware the target is not for (no GPU, or another GPU than `gpu`).
    That check comes after the runner is built: a runner's own refusal (a foreign engine) is more precise.
    `precision`: a name (a step CLI's `--precision`, a served entry's) is parsed here; the runner gets the object.
    """
    precision = parse_precision(precision)
    problem = BACKENDS[backend].device_problem(device, precision)
    if problem:
        raise PlanforgeError(f"{backend} {precision} on {device}: {problem}")
    cls = get_runner_class(backend)
    if BACKENDS[backend].artifact == "checkpoint":
        fam = get_family(family)
        runner = cls(
            fam.load_torch(artifact),
            precision,
            device,
            threads,
            options,
            output_fn=fam.forward_output,
            input_size_fn=getattr(fam, "fix_input_size", None),
        )
    else:
        runner = cls(artifact, precision, device, threads, options)
    if target is not None:
        check_target_device(target, device, gpu)
    return runner
