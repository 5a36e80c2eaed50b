"""Calibration methods on a small real ONNX graph: entropy and percentile really clip, MinMax does not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from workflow_scripts.calibrate import calibrate_ranges


@pytest.fixture(scope="module")
def conv_relu(tmp_path_factory):
    """x → Conv(1×1, weight 1) → Relu: the calibrated tensors see the input distribution itself."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 64, 64])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("calib") / "conv_relu.onnx"
    onnx.save(model, path)
    return path


def _data():
    rng = np.random.default_rng(0)
    # mostly small values plus a few large outliers: what a clipping calibrator should cut off
    x = np.abs(rng.normal(0, 1, size=(4, 1, 64, 64))).astype(np.float32)
    x[0, 0, 0, :4] = [40.0, 50.0, 60.0, 80.0]
    return [x[i : i + 1] for i in range(4)]


def _hi(ranges, name="c"):
    return float(np.max(ranges[name].range_value[1]))


def test_minmax_keeps_the_outlier(conv_relu):
    assert _hi(calibrate_ranges(conv_relu, _data(), "minmax", 2048, 99.99)) == pytest.approx(80.0)


def test_entropy_with_2048_bins_clips_but_with_128_bins_equals_minmax(conv_relu):
    real = _hi(calibrate_ranges(conv_relu, _data(), "entropy", 2048, 99.99))
    coarse = _hi(calibrate_ranges(conv_relu, _data(), "entropy", 128, 99.99))
    assert real < 20.0, real  # the KL search clips the outliers
    assert coarse == pytest.approx(80.0, rel=0.02)  # ORT's default bin count: nothing to clip, i.e. MinMax


def test_percentile_clips_to_the_bulk_of_the_distribution(conv_relu):
    hi = _hi(calibrate_ranges(conv_relu, _data(), "percentile", 2048, 99.9))
    assert 2.0 < hi < 20.0, hi
