"""What the runner's facts make of the model: a `Tracker` over its torch module, eager, compiled or from CUDA graphs
(`accelerate`), or over the ONNX Runtime parts it opens (`ort_model`); any other backend is refused in one line."""

from __future__ import annotations

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.runner_facts import RunnerFacts
from workflow_scripts.models.samurai.build import image_size
from workflow_scripts.models.samurai.modes import TRACKER_MODES, accelerate
from workflow_scripts.models.samurai.ort_tracker import ort_model
from workflow_scripts.models.samurai.session import Tracker


def _facts(model) -> RunnerFacts:
    if isinstance(model, RunnerFacts):
        return model
    if not hasattr(model, "parameters"):
        raise PlanforgeError(
            f"samurai: a tracker runs a torch module or a runner's facts (runner.facts()); got {type(model).__name__}"
        )
    return RunnerFacts.eager(model)


def input_size(model) -> int:
    """The square image size frames are resized to (`model`: the torch model, or a runner's facts)."""
    facts = _facts(model)
    return image_size(facts.module if facts.module is not None else ort_model(facts))


def tracker(model, settings: dict | None = None) -> Tracker:
    """A `Tracker` with SAMURAI's settings overridden by `settings`, over `model`: a runner's facts (`RunnerFacts`,
    what the tracking task passes) or a loaded torch module (run eager, on its own device and dtype).

    A torch runner's mode (`TRACKER_MODES`) makes the tracker run the module's per-frame parts compiled and / or
    from CUDA graphs (`accelerate`); a runner that opens the parts export's sessions (`RunnerFacts.open_parts`: ONNX
    Runtime) runs the four parts there (`ort_model`). Any other backend is refused in one line.
    """
    facts = _facts(model)
    settings = dict(settings or {})
    if facts.module is None and facts.open_parts is not None:  # the parts export (tasks.tracking gives the facts)
        if not facts.precision.is_fp32:
            raise PlanforgeError(f"samurai on {facts.backend}: the parts are exported in fp32 only")
        return Tracker(ort_model(facts), settings)
    if facts.module is None:
        raise PlanforgeError(
            f"samurai on {facts.backend}: the tracker runs a torch module or the ONNX Runtime parts; "
            "this backend gives neither"
        )
    mode = facts.mode or "eager"
    if mode not in TRACKER_MODES:
        raise PlanforgeError(
            f"samurai on {facts.backend}: the tracker runs a torch module ({', '.join(TRACKER_MODES)}); "
            f"{mode} is not built for it (use a torch backend)"
        )
    if mode != "eager":
        accelerate(
            facts.module,
            mode,
            inductor_options=facts.inductor_options,
            compile_backend=facts.compile_backend or "inductor",
            compile_mode=facts.compile_mode,
        )
    return Tracker(facts.module, settings)
