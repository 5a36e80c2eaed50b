"""The bench and accuracy stage (and pictures): the runs a target measures, their rows, what each job reads, its
settings, and the line the summary shows for what does not run here.

A run's artifact is asked of the stage that builds it (Plan.artifact_stage: export for checkpoints and ONNX,
engines for TensorRT engines), so nothing here knows a backend by name.
"""

from __future__ import annotations

from collections.abc import Iterator

from workflow_scripts.plan import paths
from workflow_scripts.plan import settings as S
from workflow_scripts.plan.context import Stage
from workflow_scripts.runners import BACKENDS
from workflow_scripts.tasks import TASKS


class MeasurePlanner(Stage):
    # -- runs and rows --------------------------------------------------------------------------------
    def runs(self, target: str) -> Iterator[tuple[str, str, str]]:
        """(model, backend, precision) triples a target measures, available backends only."""
        ctx = self.ctx
        for model in ctx.target_models(target) if ctx.here(target) else ():
            for backend, precisions in ctx.targets[target]["backends"].items():
                timed = self.plan.artifact_stage(backend).timed_here(target, backend)
                if timed and ctx.runs_on(model, backend):
                    for precision in precisions:
                        if self.plan.quantize.precision_problem(model, precision) is None:
                            yield model, backend, precision

    def scored_here(self, target: str, backend: str) -> bool:
        """Whether a run's outputs can be scored (engines timed by trtexec keep none)."""
        return self.plan.artifact_stage(backend).scored_here(target, backend)

    def bench_outputs(self, targets: list[str] | None = None) -> list[str]:
        return [
            paths.bench_path(t, m, b, p, n)
            for t in targets or self.ctx.targets
            for m, b, p in self.runs(t)
            for n in self.ctx.targets[t]["batch_sizes"]
        ]

    def accuracy_outputs(self, targets: list[str] | None = None) -> list[str]:
        ctx, out = self.ctx, []
        base = (ctx.baseline["backend"], ctx.baseline["precision"])
        for t in targets or ctx.targets:
            triples = [r for r in self.runs(t) if ctx.scored(r[0]) and self.scored_here(t, r[1])]
            # a target with nothing to measure here (e.g. only TensorRT, not installed) gets no baseline job
            for m in ctx.target_models(t) if triples else ():
                if ctx.scored(m) and ctx.available_on(t, base[0])[0] and ctx.runs_on(m, base[0]):
                    triples.append((m, *base))
            out += [paths.accuracy_path(t, m, b, p) for m, b, p in dict.fromkeys(triples)]
        return out

    def picture_outputs(self, targets: list[str] | None = None) -> list[str]:
        """A picture per run of a scored model whose task draws them (random weights find nothing worth seeing)."""
        if not self.ctx.cfg["pictures"]["images"]:
            return []
        return [
            paths.picture_path(t, m, b, p)
            for t in targets or self.ctx.targets
            for m, b, p in self.runs(t)
            if self.ctx.scored(m) and self.scored_here(t, b) and TASKS[self.ctx.task(m)].pictures
        ]

    # -- what a job reads -----------------------------------------------------------------------------
    def model_artifact(self, target: str, model: str, backend: str, precision: str, batch: str | None = None) -> str:
        """The file a backend runs: the prepared checkpoint, an ONNX model or a TensorRT engine."""
        return self.plan.artifact_stage(backend).artifact(target, model, backend, precision, batch)

    def artifact_companions(self, target: str, model: str, backend: str, precision: str, **_) -> list[str]:
        """What a job reads beside its artifact (a parts export's other graphs and its torch glue); else nothing."""
        return self.plan.artifact_stage(backend).companions(target, model, backend, precision)

    def bench_timer(self, target: str, backend: str, **_) -> str | None:
        """The executable a bench job times its artifact with instead of its runner (trtexec), else None."""
        return self.plan.artifact_stage(backend).timer(target, backend)

    def is_baseline(self, backend: str, precision: str) -> bool:
        return (backend, precision) == (self.ctx.baseline["backend"], self.ctx.baseline["precision"])

    def baseline_accuracy(self, target: str, model: str, backend: str, precision: str, **_) -> list[str]:
        if self.is_baseline(backend, precision):
            return []
        return [paths.accuracy_path(target, model, self.ctx.baseline["backend"], self.ctx.baseline["precision"])]

    def reference_outputs(self, target: str, model: str, backend: str, precision: str, **_) -> list[str]:
        """The baseline's saved outputs a vla accuracy job compares with (none for the baseline itself)."""
        if self.is_baseline(backend, precision):
            return []
        return [paths.outputs_path(target, model, self.ctx.baseline["backend"], self.ctx.baseline["precision"])]

    def baseline_label(self) -> str:
        return f"{self.ctx.baseline['backend']}_{self.ctx.baseline['precision']}"

    def picture_code(self, target: str, model: str, backend: str, **_) -> list[str]:
        """A picture job's code: what `Context.run_code` lists (no power sampler: nothing is timed)."""
        return self.ctx.run_code("pictures", model, backend)

    # -- each job's settings --------------------------------------------------------------------------
    def target_settings(self, target: str, backend: str) -> dict:
        t = self.ctx.targets[target]
        return {
            "device": t["device"],
            "threads": t["threads"],
            # the registry's defaults, then the target's own: the same whether or not the backend is listed
            "backend_options": {**BACKENDS[backend].options, **t["backend_options"].get(backend, {})},
            "power": t["power"],
            "gpu": t["gpu"],
        }

    def bench_settings(self, target: str, model: str, backend: str, **_) -> S.BenchSettings:
        b = self.ctx.cfg["bench"]
        return S.BenchSettings(
            **self.target_settings(target, backend),
            imgsz=self.ctx.imgsz(model),
            warmup=b["warmup"],
            iterations=b["iterations"],
            min_seconds=b["min_seconds"],
            conf=b["conf"],
            stability=S.Stability(**b["stability"]),
        )

    def accuracy_settings(self, target: str, model: str, backend: str, **_) -> S.AccuracySettings:
        a = self.ctx.cfg["accuracy"]
        return S.AccuracySettings(
            **self.target_settings(target, backend),
            imgsz=self.ctx.imgsz(model),
            **{k: a[k] for k in ("gate", "error_tolerance", "strict", "batch", "max_images", "conf", "iou", "max_det")},
        )

    def picture_settings(self, target: str, model: str, backend: str, **_) -> S.PictureSettings:
        a, pic = self.ctx.cfg["accuracy"], self.ctx.cfg["pictures"]
        return S.PictureSettings(
            **self.target_settings(target, backend),
            imgsz=self.ctx.imgsz(model),
            images=pic["images"],
            batch=a["batch"],
            conf=pic["conf"],
            iou=a["iou"],
            max_det=a["max_det"],
        )

    # -- what does not run here, and why ---------------------------------------------------------------
    def unavailable_lines(self) -> list[str]:
        """One line per target and backend that cannot run here (shown in the summary)."""
        ctx, lines = self.ctx, []
        for t, spec in ctx.targets.items():
            if not ctx.here(t):
                lines.append(
                    f"{t}: a target for a machine matching {spec['machine']!r}; this one is {ctx.gpu_name()!r}"
                )
                continue
            if ctx.missing_interpreter(t):
                lines.append(
                    f"{t}: targets.{t}.python {spec['python']!r}: no such interpreter, so none of its jobs run; "
                    "create it (README: On a Jetson) or fix the path"
                )
                continue
            for b in spec["backends"]:
                ok, why = ctx.available_on(t, b)
                if spec["python"] and not ok:  # "…(missing Python module tensorrt for Python 3.10.12)": say whose
                    why = f"{why.split(' (', 1)[-1].rstrip(')')} under targets.{t}.python {spec['python']}"
                if ok:  # installed: say which models it still does not run (their family has no such artifact)
                    lines += self._not_run_lines(t, b)
                else:
                    lines.append(self.plan.artifact_stage(b).unavailable_line(t, b, why))
        return lines

    def _not_run_lines(self, target: str, backend: str) -> list[str]:
        lines = []
        for m in self.ctx.target_models(target):
            why_not = self.ctx.backend_problem(m, backend)
            if why_not:
                lines.append(f"{target}: {backend}: {m} not run: {why_not}")
                continue
            for p in self.ctx.targets[target]["backends"][backend]:
                why_not = self.plan.quantize.precision_problem(m, p)
                if why_not:
                    lines.append(f"{target}: {backend} {p}: {m} not run: {why_not}")
        return lines
