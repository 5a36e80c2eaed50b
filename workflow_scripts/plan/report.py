"""The report stage: each target's plots, and what the summary is told beside the rows (what does not run here,
the accuracy gate, the baseline, the published references)."""

from __future__ import annotations

from workflow_scripts.plan.context import Stage
from workflow_scripts.plan.paths import PLOT_KINDS


class ReportPlanner(Stage):
    def plot_outputs(self) -> list[str]:
        targets = self.ctx.targets
        return [f"results/plots/{t}_{k}.png" for t in targets for k in PLOT_KINDS] + [
            f"results/plots/{t}_latency_vs_power.png" for t in targets if targets[t]["power"] != "none"
        ]

    def unavailable_lines(self) -> list[str]:
        return self.plan.measure.unavailable_lines()

    def gate(self) -> float:
        """accuracy.gate: the ratio to the baseline's score a row must reach."""
        return self.ctx.cfg["accuracy"]["gate"]

    def baseline_label(self) -> str:
        return self.plan.measure.baseline_label()

    def references(self) -> dict:
        """The config's published reference numbers the summary sets beside the measured ones."""
        return self.ctx.cfg["references"]
