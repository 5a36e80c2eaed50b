"""The data stage: what makes each split of a dataset (synthetic images, COCO, episodes, videos)."""

from __future__ import annotations

from workflow_scripts.plan import paths
from workflow_scripts.plan.context import Stage


class DataPlanner(Stage):
    def datasets_of_kind(self, kind: str) -> list[str]:
        return [d for d, s in self.ctx.datasets.items() if s["kind"] == kind]

    @staticmethod
    def folder(dataset: str, **_) -> str:
        return paths.dataset_dir(dataset)

    def split_settings(self, dataset: str, split: str, **_) -> dict:
        """A synthetic dataset's config with only `split`'s size (other splits' sizes do not change its images)."""
        ds = self.ctx.datasets[dataset]
        return {**ds, "splits": {split: ds["splits"][split]}}

    def episodes_settings(self, dataset: str, split: str, **_) -> dict:
        """What makes one episodes split: the seed, the episode shape and only this split's size."""
        from workflow_scripts.tasks.vla import EPISODE_DEFAULTS

        ds = self.ctx.datasets[dataset]
        keys = ("cameras", "camera_size", "state_dim", "prompt_tokens")
        return {
            "kind": "episodes",
            "seed": ds["seed"],
            "splits": {split: ds["splits"][split]},
            **{k: ds.get(k, EPISODE_DEFAULTS[k]) for k in keys},
        }

    def videos_settings(self, dataset: str, split: str, **_) -> dict:
        """What makes one videos split: the seed, the sequence shape and only this split's size."""
        from workflow_scripts.tasks.tracking import VIDEO_DEFAULTS

        ds = self.ctx.datasets[dataset]
        return {
            "kind": "videos",
            "seed": ds["seed"],
            "splits": {split: ds["splits"][split]},
            **{k: ds.get(k, v) for k, v in VIDEO_DEFAULTS.items()},
        }

    def coco_settings(self, dataset: str, split: str, **_) -> dict:
        """What makes one COCO split: the seed and the val size (calib is drawn after val), and its own size."""
        ds = self.ctx.datasets[dataset]
        keep = ("val",) if split == "val" else ("val", "calib")
        return {"kind": "coco", "seed": ds["seed"], "splits": {k: ds["splits"][k] for k in keep}}
