"""D-FINE's num_queries is a model setting: the config sets it, the prepared checkpoint carries it.

transformers' D-FINE picks its decoder queries as the top-k encoder proposals (`torch.topk(..., config.num_queries)`
in DFineModel.forward); no weight depends on k unless the checkpoint learned its initial queries.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import DFineForObjectDetection

from tests.conftest import TINY_CONFIG
from workflow_scripts.config import validate
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.models import dfine
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.prepare_checkpoint import prepare_checkpoint


def _config(**model_b) -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["models"]["b"] = {
        "family": "dfine",
        "checkpoint": "dfine-demo.yaml",
        "dataset": "tiny",
        "imgsz": 160,
        **model_b,
    }
    return cfg


def test_a_dfine_model_takes_num_queries_and_the_prepare_step_gets_exactly_that_models_setting():
    plan = Plan(validate(_config(num_queries=50), check_files=False), available=lambda b: (True, ""))
    assert plan.model_settings("b") == {"num_queries": 50}
    assert plan.model_settings("a") == {}  # yolo, and null by default: the checkpoint's own
    assert Plan(validate(_config(), check_files=False)).model_settings("b") == {}


def test_a_yolo_model_refuses_num_queries_with_one_line():
    cfg = _config()
    cfg["models"]["a"]["num_queries"] = 100
    with pytest.raises(PlanforgeError) as err:
        validate(cfg, check_files=False)
    assert str(err.value) == (
        "config key models.a.num_queries: the yolo family has no num_queries setting (only dfine models take it); "
        "remove it"
    )


def test_num_queries_must_be_a_positive_integer():
    with pytest.raises(PlanforgeError, match="config key models.b.num_queries: 0 is less than the minimum of 1"):
        validate(_config(num_queries=0), check_files=False)


def test_prepared_checkpoint_runs_with_fewer_queries_and_the_same_weights(tmp_path):
    out, info = tmp_path / "b.pt", tmp_path / "b.json"
    record = prepare_checkpoint("dfine", "dfine-demo.yaml", out, info, {"num_queries": 50})
    assert record["settings"] == {"num_queries": 50} and json.loads(info.read_text())["settings"] == record["settings"]
    prepared, source = dfine.load_torch(out), dfine.load_torch("dfine-demo.yaml")
    assert (prepared.config.num_queries, source.config.num_queries) == (50, 100)
    for (name, p), (_, q) in zip(prepared.state_dict().items(), source.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    x = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        logits, boxes = dfine.forward_output(prepared(pixel_values=x))
    assert tuple(logits.shape) == (1, 50, 6) and tuple(boxes.shape) == (1, 50, 4)
    assert np.isfinite(boxes.numpy()).all()


def test_a_checkpoint_with_learned_queries_is_refused_not_half_loaded():
    config = dfine.demo_config()
    config.learn_initial_query = True
    model = DFineForObjectDetection(config).eval()
    with pytest.raises(PlanforgeError, match="num_queries 50: this checkpoint's weights depend on its 100 queries"):
        dfine.apply_settings(model, {"num_queries": 50})


def test_the_prepare_step_refuses_a_setting_its_family_does_not_have(tmp_path):
    with pytest.raises(PlanforgeError, match="'num_queries' is not a yolo setting"):
        prepare_checkpoint("yolo", "yolov8n.yaml", tmp_path / "a.pt", tmp_path / "a.json", {"num_queries": 50})
