"""The serving stage: which models each target serves through Triton, the model repository, the sweeps, the
served-accuracy checks and co-serving.

A task is served by one backend's artifact (SERVED_WITH): detection as an ensemble around its ONNX model (where
its family has Triton pre/post-processing models), vla and tracking as a python model around the family's torch
module. Engines come from the engine stage.
"""

from __future__ import annotations

import dataclasses

from workflow_scripts.core.deps import code_files
from workflow_scripts.models import FAMILIES, family_files
from workflow_scripts.plan import paths
from workflow_scripts.plan import settings as S
from workflow_scripts.plan.context import Stage
from workflow_scripts.tasks.vla import EPISODE_DEFAULTS

# task → the backend whose artifact its served model runs, in the order a target's served models are listed
SERVED_WITH = {"detection": "onnxruntime", "vla": "torch", "tracking": "torch"}


class ServingPlanner(Stage):
    @property
    def cfg(self) -> dict:
        return self.ctx.cfg["serving"]

    # -- what a target serves -------------------------------------------------------------------------
    def servable(self, model: str) -> bool:
        """Whether Triton can serve the model: a vla or tracking model, or a detector whose family has Triton
        pre/post-processing models (FamilySpec.served)."""
        task = self.ctx.task(model)
        return task in SERVED_WITH and (task != "detection" or FAMILIES[self.ctx.family(model)].served)

    def served(self, target: str, task: str) -> list[str]:
        """A task's served models on a target, where the backend that serves it is configured and installed."""
        backend = SERVED_WITH[task]
        if backend not in self.ctx.targets[target]["backends"] or not self.ctx.available(backend)[0]:
            return []
        return [m for m in self.ctx.target_models(target) if self.ctx.task(m) == task and self.servable(m)]

    def served_here(self, target: str) -> list[str]:
        return [m for task in SERVED_WITH for m in self.served(target, task)]

    def targets(self) -> list[str]:
        """Targets that serve: serving enabled, and a model the target can serve (`served_here`)."""
        if not self.cfg["enabled"]:
            return []
        return [t for t in self.ctx.targets if self.served_here(t)]

    def coserving(self, target: str) -> tuple[str, str] | None:
        """(vla model, detection model) loaded together in one server, where the target serves both kinds."""
        vla, det = self.served(target, "vla"), self.served(target, "detection")
        return (vla[0], det[0]) if vla and det else None

    # -- outputs --------------------------------------------------------------------------------------
    def outputs(self, targets: list[str] | None = None) -> list[str]:
        out = []
        for t in self.targets():
            if targets is None or t in targets:
                for m in self.served_here(t):
                    out.append(f"results/{t}/serving/{m}.json")
                    if self.cfg["accuracy"]:
                        out.append(f"results/{t}/serving/{m}_accuracy.json")
                if self.coserving(t):
                    out.append(f"results/{t}/serving/coserving.json")
        return out

    def plot_outputs(self) -> list[str]:
        return [f"results/plots/{t}_serving_throughput_vs_p99.png" for t in self.targets()]

    def results(self, target: str) -> list[str]:
        return [f"results/{target}/serving/{m}.json" for m in self.served_here(target)]

    # -- triton_repository ----------------------------------------------------------------------------
    def _precisions(self, target: str) -> list[str]:
        """The precisions of the detection ensembles' ONNX models: the target's ONNX Runtime precisions."""
        return self.ctx.targets[target]["backends"].get(SERVED_WITH["detection"], [])

    def _artifact(self, target: str, model: str, precision: str) -> str:
        backend = SERVED_WITH[self.ctx.task(model)]
        return self.plan.measure.model_artifact(target, model, backend, precision)

    def triton_onnx(self, target: str, **_) -> list[str]:
        return [
            self._artifact(target, m, p) for m in self.served(target, "detection") for p in self._precisions(target)
        ]

    def triton_checkpoints(self, target: str, **_) -> list[str]:
        served = [*self.served(target, "vla"), *self.served(target, "tracking")]
        return [self._artifact(target, m, "fp32") for m in served]

    def triton_engines(self, target: str) -> dict[str, dict[str, dict]]:
        """{model: {precision: {"path", "max_batch"}}}: the TensorRT engines the repository serves natively.

        Only for a full Triton build (`serving.onnx_backend: onnxruntime`) on a CUDA target whose engines
        are planned here: the pytriton CPU server has no tensorrt backend and would refuse to start.
        """
        if self.cfg["onnx_backend"] != "onnxruntime" or not self.ctx.targets[target]["device"].startswith("cuda"):
            return {}
        return self.plan.engines.served(target, self.served(target, "detection"))

    def triton_engine_files(self, target: str, **_) -> list[str]:
        return [e["path"] for engines in self.triton_engines(target).values() for e in engines.values()]

    def triton_models(self, target: str, **_) -> dict:
        ctx, engines = self.ctx, self.triton_engines(target)
        models = {
            m: {
                "family": ctx.family(m),
                "imgsz": ctx.imgsz(m),
                "onnx": {p: self._artifact(target, m, p) for p in self._precisions(target)},
                **({"engines": engines[m]} if m in engines else {}),
            }
            for m in self.served(target, "detection")
        }
        for m in self.served(target, "vla"):
            data = ctx.datasets[ctx.models[m]["dataset"]]
            models[m] = {
                "family": ctx.family(m),
                "checkpoint": self._artifact(target, m, "fp32"),
                "episodes": {k: data.get(k, v) for k, v in EPISODE_DEFAULTS.items()},
            }
        for m in self.served(target, "tracking"):
            models[m] = {"family": ctx.family(m), "checkpoint": self._artifact(target, m, "fp32")}
        return models

    def triton_code(self) -> list[str]:
        served = [m for m in self.ctx.models if FAMILIES[self.ctx.family(m)].served]
        served += [*self.ctx.models_of_task("vla"), *self.ctx.models_of_task("tracking")]
        families = sorted({f for m in served for f in family_files(self.ctx.family(m))})
        return [*code_files("serving.repository", "serving.python_models"), *families]

    def triton_settings(self, target: str, **_) -> S.TritonRepositorySettings:
        t, acc, srv = self.ctx.targets[target], self.ctx.cfg["accuracy"], self.cfg
        keys = ("max_batch_size", "max_queue_delay_us", "preferred_batch_sizes", "instances", "onnx_backend")
        keys += ("sequence_idle_us",)
        thresholds = {k: acc[k] for k in ("conf", "iou", "max_det")}
        return S.TritonRepositorySettings(
            device=t["device"],
            threads=t["threads"],
            serving={
                **{k: srv[k] for k in keys},
                "conf": self.ctx.cfg["bench"]["conf"],
                "iou": acc["iou"],
                "max_det": acc["max_det"],
            },
            accuracy=thresholds,
        )

    # -- serving, serving_accuracy, serving_coserving -------------------------------------------------------
    def settings(self, **_) -> S.ServingSettings:
        keys = [f.name for f in dataclasses.fields(S.ServingSettings)]
        return S.ServingSettings(**{k: self.cfg[k] for k in keys})

    def accuracy_settings(self, **_) -> S.ServingAccuracySettings:
        acc = self.ctx.cfg["accuracy"]
        return S.ServingAccuracySettings(
            batch=acc["batch"],
            max_images=acc["max_images"],
            startup_timeout_s=self.cfg["startup_timeout_s"],
            map_tolerance=self.cfg["map_tolerance"],
        )

    def coserving_settings(self, target: str, **_) -> dict[str, str]:
        """The co-serving job's models and their datasets."""
        vla, det = self.coserving(target)
        return {"vla": vla, "vla_data": self.ctx.dataset_dir(vla), "det": det, "det_data": self.ctx.dataset_dir(det)}

    def bench_b1(self, target: str, model: str, **_) -> list[str]:
        """The in-process ONNX Runtime batch-1 bench the serving overhead is compared with, where it runs."""
        if model not in self.served(target, "detection"):
            return []  # vla: the sweep times the in-process chunk itself
        backend = SERVED_WITH["detection"]
        path = paths.bench_path(target, model, backend, self._precisions(target)[0], 1)
        return [path] if path in self.plan.measure.bench_outputs([target]) else []

    def reference(self, target: str, model: str, **_) -> list[str]:
        """The in-process ONNX Runtime accuracy the served mAP must match (vla: none, the job runs torch itself)."""
        if model not in self.served(target, "detection"):
            return []
        return [paths.accuracy_path(target, model, SERVED_WITH["detection"], self._precisions(target)[0])]
