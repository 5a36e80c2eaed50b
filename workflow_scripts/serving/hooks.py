"""Each task's serving hooks (`tasks.TaskSpec.served`), resolved: the serving jobs and the summary call a task's
hooks through here and never branch on a task's name. (`served.served_model` resolves the served-model class.)"""

from __future__ import annotations

from collections.abc import Callable

from workflow_scripts.core.registry import resolve

# The built-in tasks' serving modules. The hooks are imported by the names their TaskSpec gives; these imports only
# let `core.deps` (which follows imports) count them among the code of the jobs that call them.
from workflow_scripts.serving import detection, tracking, vla  # noqa: F401
from workflow_scripts.serving.perf import TaskSweep
from workflow_scripts.serving.served import AccuracyJob, Checked
from workflow_scripts.tasks import TASKS


def sweep(task: str) -> type[TaskSweep]:
    """The task's part of the perf_analyzer sweep (`TaskSpec.served.sweep`)."""
    return resolve(TASKS[task].served.sweep)


def served_accuracy(task: str) -> Callable[[AccuracyJob], Checked]:
    """The task's served-accuracy check (`TaskSpec.served.accuracy`)."""
    return resolve(TASKS[task].served.accuracy)


def summary_lines(task: str) -> Callable[[dict, dict | None], list[str]]:
    """The task's summary lines on one sweep record and its served-accuracy record (`TaskSpec.served.summary`)."""
    return resolve(TASKS[task].served.summary)
