"""SAMURAI's settings as a model setting: a config entry's `tracker` is saved with the prepared checkpoint, and
every tracker on that checkpoint (bench, accuracy, the ONNX Runtime glue, Triton) starts from it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import transformers  # noqa: F401 - a declared dependency: a broken install fails here, it is not skipped

from tests.conftest import TINY_CONFIG
from tests.test_samurai_family import clip
from workflow_scripts.config import validate
from workflow_scripts.core.io import PlanforgeError, read_json
from workflow_scripts.models import samurai
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.prepare_checkpoint import prepare_checkpoint


def _config(**tracker_entry) -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["datasets"]["clips"] = {"kind": "videos", "seed": 0, "splits": {"val": 2}, "frames": 8, "frame_size": 96}
    cfg["models"]["t"] = {"family": "samurai", "checkpoint": "samurai-tiny.yaml", "dataset": "clips", **tracker_entry}
    return cfg


def _boxes(tr, frames, box) -> np.ndarray:
    tr.start(frames[0], box)
    return np.array([tr.track(f)[0] for f in frames[1:]])


def test_the_prepare_step_gets_exactly_the_models_tracker_settings():
    plan = Plan(validate(_config(tracker={"memory_filter": False}), check_files=False), available=lambda b: (True, ""))
    assert plan.model_settings("t") == {"tracker": {"memory_filter": False}}
    assert plan.model_settings("a") == {}  # yolo
    assert Plan(validate(_config(), check_files=False)).model_settings("t") == {}  # unset: SAMURAI's defaults


def test_bad_tracker_settings_and_a_tracker_on_another_family_fail_in_one_line():
    with pytest.raises(PlanforgeError, match=r"config key models\.t\.tracker.*memory_filtre"):
        validate(_config(tracker={"memory_filtre": False}), check_files=False)
    with pytest.raises(PlanforgeError, match=r"config key models\.t\.tracker\.alpha: 2 is greater than the maximum"):
        validate(_config(tracker={"alpha": 2}), check_files=False)
    cfg = _config()
    cfg["models"]["a"]["tracker"] = {"samurai": False}
    with pytest.raises(PlanforgeError) as err:
        validate(cfg, check_files=False)
    assert str(err.value) == (
        "config key models.a.tracker: the yolo family has no tracker setting (only samurai models take it); remove it"
    )


def test_a_prepared_checkpoint_carries_its_tracker_settings_and_trackers_start_from_them(tmp_path):
    out, info = tmp_path / "t.pt", tmp_path / "t.json"
    prepare_checkpoint("samurai", "samurai-tiny.yaml", out, info, {"tracker": {"samurai": False}})
    assert read_json(info)["settings"] == {"tracker": {"samurai": False}}
    model = samurai.load_torch(out)
    tr = samurai.tracker(model)
    assert tr.settings["samurai"] is False and tr.settings["memory_filter"] is False  # plain SAM 2, as documented
    assert tr.describe()["settings"]["samurai"] is False  # the bench JSON's record of what ran
    frames, box = clip(6)
    plain = samurai.tracker(samurai.load_torch("samurai-tiny.yaml"), {"samurai": False})
    np.testing.assert_array_equal(_boxes(tr, frames, box), _boxes(plain, frames, box))
    # a tracker's own settings still win over the checkpoint's
    assert samurai.tracker(model, {"samurai": True}).settings["samurai"] is True


def test_an_unknown_tracker_key_fails_the_prepare_step_in_one_line_and_writes_nothing(tmp_path):
    out, info = tmp_path / "t.pt", tmp_path / "t.json"
    with pytest.raises(PlanforgeError, match=r"^models\.<name>\.tracker: 'alfa' is not one of \["):
        prepare_checkpoint("samurai", "samurai-tiny.yaml", out, info, {"tracker": {"alfa": 0.1}})
    assert not out.exists() and not info.exists()
