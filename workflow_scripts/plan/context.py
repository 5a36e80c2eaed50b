"""What every stage planner reads: the validated config, what this machine runs, the models' facts, and the
code a job runs (its code inputs). `Stage` is the base of the stage planners (plan/data.py … plan/report.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from workflow_scripts.core import machine
from workflow_scripts.core.deps import code_files
from workflow_scripts.models import FAMILIES, family_files, get_family
from workflow_scripts.plan import paths
from workflow_scripts.power import SAMPLERS
from workflow_scripts.runners import BACKENDS, runner_file

if TYPE_CHECKING:
    from workflow_scripts.plan.jobs import Plan

JETSON_SAMPLERS = ("tegrastats", "jtop")  # power samplers that mean "this target is a Jetson" (power mode in engines)


class Context:
    """One validated config on this machine: `available(backend)`, `gpu_name()`, `available_in(python, backend)`
    and `machine_isa()` are what this machine has (tests pass their own)."""

    def __init__(
        self,
        cfg: dict,
        available: Callable[[str], tuple[bool, str]],
        gpu_name: Callable[[], str],
        available_in: Callable[[str, str], tuple[bool, str]],
        machine_isa: Callable[[], str],
    ) -> None:
        self.cfg = cfg
        self.datasets, self.models, self.targets = cfg["datasets"], cfg["models"], cfg["targets"]
        self.baseline = cfg["accuracy"]["baseline"]
        self._available = available
        self.gpu_name = gpu_name
        self._availability: dict[str, tuple[bool, str]] = {}
        self._available_in = available_in
        self._availability_in: dict[tuple[str, str], tuple[bool, str]] = {}
        self.machine_isa = machine_isa

    # -- what this machine runs -----------------------------------------------------------------------
    def available(self, backend: str) -> tuple[bool, str]:
        """Whether a backend is installed here, and why not (asked once per backend)."""
        if backend not in self._availability:
            self._availability[backend] = self._available(backend)
        return self._availability[backend]

    def job_python(self, target: str, **_) -> str:
        """The interpreter a target's model jobs run under: targets.<t>.python (e.g. JetPack's /usr/bin/python3,
        which has the TensorRT bindings), else `python` (Snakemake's environment)."""
        return self.targets[target]["python"] or "python"

    def missing_interpreter(self, target: str) -> str | None:
        """The target's `python` where it names no executable (its jobs are then not planned), else None."""
        python = self.targets[target]["python"]
        return python if python and shutil.which(python) is None else None

    def available_on(self, target: str, backend: str) -> tuple[bool, str]:
        """Whether a backend runs under the target's interpreter (asked of that interpreter once), and why not."""
        python = self.targets[target]["python"]
        if python is None:
            return self.available(backend)
        if (python, backend) not in self._availability_in:
            self._availability_in[python, backend] = self._available_in(python, backend)
        return self._availability_in[python, backend]

    def target_models(self, target: str) -> list[str]:
        """The models a target measures: targets.<t>.models where given (each kind at its own batches), else all."""
        names = self.targets[target]["models"]
        return [m for m in self.models if names is None or m in names]

    def here(self, target: str) -> bool:
        """A target names the machine it is for (targets.<t>.machine); on any other it is skipped."""
        pattern = self.targets[target]["machine"]
        return pattern is None or machine.matches(pattern, self.gpu_name())

    def is_jetson(self, target: str) -> bool:
        return self.targets[target]["power"] in JETSON_SAMPLERS

    def gpus(self, target: str) -> int:
        """GPU jobs declare gpu=1 (a cluster maps it to a GPU request; locally --resources gpu=N caps them)."""
        return int(self.targets[target]["device"].startswith("cuda"))

    def container(self, target: str) -> str | None:
        return self.targets[target]["container"]

    # -- models ---------------------------------------------------------------------------------------
    def family(self, model: str) -> str:
        return self.models[model]["family"]

    def imgsz(self, model: str) -> int:
        return self.models[model]["imgsz"]

    def dataset_dir(self, model: str) -> str:
        return paths.dataset_dir(self.models[model]["dataset"])

    def dataset_kind(self, model: str) -> str:
        return self.datasets[self.models[model]["dataset"]]["kind"]

    def val_annotations(self, model: str) -> str:
        """The val split's index: COCO annotations, or the episodes / videos index (kinds episodes, videos)."""
        if self.dataset_kind(model) in ("episodes", "videos"):
            return f"{self.dataset_dir(model)}/{self.dataset_kind(model)}_val.json"
        return f"{self.dataset_dir(model)}/instances_val.json"

    def calib_annotations(self, model: str) -> str:
        return f"{self.dataset_dir(model)}/instances_calib.json"

    def task(self, model: str) -> str:
        return FAMILIES[self.family(model)].task

    def models_of_task(self, task: str) -> list[str]:
        return [m for m in self.models if self.task(m) == task]

    def other_models(self, task: str) -> list[str]:
        return [m for m in self.models if self.task(m) != task]

    def scored(self, model: str) -> bool:
        return self.models[model]["accuracy"]

    def input_name(self, model: str) -> str:
        """The model's input tensor name (ONNX and engines), as its family declares it."""
        return get_family(self.family(model)).INPUT_NAME

    def backend_problem(self, model: str, backend: str) -> str | None:
        """Why the model's family makes no artifact the backend reads (Pi0: its torch module only), or None."""
        fam = self.family(model)
        return FAMILIES[fam].backend_problem(fam, BACKENDS[backend].artifact, backend)

    def runs_on(self, model: str, backend: str) -> bool:
        return self.backend_problem(model, backend) is None

    # -- code inputs: a job reruns when (and only when) the code it runs changes -----------------------------
    @staticmethod
    def step_code(step: str, *extra: str) -> list[str]:
        return list(code_files(step, *extra))

    def model_code(self, step: str, model: str) -> list[str]:
        return [*code_files(step), *family_files(self.family(model))]

    def run_code(self, step: str, model: str, backend: str, *extra: str) -> list[str]:
        """A job's code when it runs a model on a backend: the step (and `extra` modules), the model's task and
        family, the backend's runner (the last three are imported by name, so code_files cannot see them)."""
        return [
            *code_files(step, f"workflow_scripts.tasks.{self.task(model)}", *extra),
            runner_file(backend),
            *family_files(self.family(model)),
        ]

    def measure_code(self, step: str, target: str, model: str, backend: str) -> list[str]:
        """A bench/accuracy job's code: what `run_code` lists, and the target's power sampler."""
        return self.run_code(step, model, backend, SAMPLERS[self.targets[target]["power"]].module)


class Stage:
    """A stage planner: the jobs of one stage (their outputs, inputs and settings) for a Context.

    `plan` is the Plan that holds every stage, for what one stage asks of another. A stage that builds the
    artifact a backend runs (export: checkpoints and ONNX; engines: TensorRT engines) answers the questions
    below for that backend; the defaults are those of an artifact a runner installed here times and scores.
    """

    def __init__(self, ctx: Context, plan: Plan) -> None:
        self.ctx = ctx
        self.plan = plan

    # -- a backend's artifact, as the stage that builds it plans it -------------------------------------
    def timed_here(self, target: str, backend: str) -> bool:
        """Whether the target's runs on the backend are timed here."""
        return self.ctx.available_on(target, backend)[0]

    def scored_here(self, target: str, backend: str) -> bool:
        """Whether a run's outputs can be scored (and drawn)."""
        return True

    def timer(self, target: str, backend: str) -> str | None:
        """The executable a bench job times the artifact with instead of its runner, else None."""
        return None

    def unavailable_line(self, target: str, backend: str, why: str) -> str:
        """The summary's line for a backend that does not run on the target here."""
        return f"{target}: {why}"
