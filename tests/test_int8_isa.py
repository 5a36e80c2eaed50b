"""The INT8 plan knows the target CPU's instruction set, and the float-fallback search's logic (no snakemake).

This machine's CPU cannot be changed, so the AVX2 targets here are fakes: a target that declares `cpu_isa`, or a
Plan given another machine's instruction set. Both run the same planning code a real AVX2 machine runs.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import REPO
from workflow_scripts.config import validate
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.isa import ISAS, isa_from_flags
from workflow_scripts.core.precisions import INT8_SCHEMES, parse, parse_variant, qdq_variants
from workflow_scripts.plan.jobs import Plan
from workflow_scripts.plan.settings import FallbackSettings, QuantizeSettings
from workflow_scripts.quantize import int8_plan
from workflow_scripts.sensitivity import block_of, blocks, search

DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def _plan(config: dict, machine_isa: str) -> Plan:
    return Plan(
        validate(config, check_files=False),
        available=lambda b: (True, ""),
        gpu_name=lambda: "none",
        trt_builder=lambda: None,
        machine_isa=lambda: machine_isa,
    )


def _with_targets(**targets) -> dict:
    config = copy.deepcopy(DEFAULT)
    config["targets"] = targets
    return config


CPU = {"device": "cpu", "backends": {"onnxruntime": ["fp32", "int8_minmax"]}, "batch_sizes": [1, 4]}


def test_cpu_flags_name_the_instruction_set_int8_cares_about():
    avx2 = {"sse4_1", "avx", "avx2", "fma"}
    assert isa_from_flags("x86_64", avx2) == "avx2"
    assert isa_from_flags("x86_64", avx2 | {"avx512f", "avx512bw"}) == "avx512"
    assert isa_from_flags("x86_64", avx2 | {"avx512bw", "avx512_vnni"}) == "avx512_vnni"
    assert isa_from_flags("x86_64", avx2 | {"avx_vnni"}) == "avx_vnni"
    assert isa_from_flags("x86_64", avx2 | {"avx512_vnni", "amx_int8"}) == "amx"
    assert isa_from_flags("aarch64", {"asimd", "asimddp"}) == "dotprod"
    assert isa_from_flags("arm64", {"asimd"}) == "arm64"
    saturating = [n for n, i in ISAS.items() if i.u8s8_saturates]
    assert saturating == ["avx512", "avx2", "sse"]  # x86 without VNNI: VPMADDUBSW adds products in int16
    assert {ISAS[n].int8_scheme for n in ISAS} == set(INT8_SCHEMES)


def test_fake_avx2_target_quantizes_u8u8_and_its_rows_read_that_model():
    declared = _plan(_with_targets(ci={**CPU, "cpu_isa": "avx2"}), machine_isa="avx512_vnni")
    detected = _plan(_with_targets(ci=CPU), machine_isa="avx2")  # the local target on an AVX2-only machine
    for plan in (declared, detected):
        assert plan.cpu_isa("ci") == "avx2" and plan.int8_scheme("ci") == "u8u8"
        art = plan.model_artifact("ci", "dfine-demo", "onnxruntime", "int8_minmax")
        assert art == "artifacts/onnx/dfine-demo/int8_minmax_u8u8.onnx"
        assert plan.model_artifact("ci", "dfine-demo", "onnxruntime", "int8_minmax_fb") == (
            "artifacts/onnx/dfine-demo/int8_minmax_u8u8_fb.onnx"
        )
        s = plan.quantize_settings("dfine-demo", "int8_minmax_u8u8")
        assert (s.weight_type, s.activation_type, s.scheme, s.isa) == ("quint8", "quint8", "u8u8", {"ci": "avx2"})
        assert QuantizeSettings.from_json(s.to_json()) == s  # what the quantize CLI parses
        assert plan.qdq_ranges("dfine-demo", "int8_minmax_u8u8") == "artifacts/calib/dfine-demo/minmax.ranges.json"
        assert ("dfine-demo", "int8_minmax_u8u8") in plan.fallback_decisions()
    # the plan's words for it, as the sidecar and the summary say them
    assert int8_plan({"ci": "avx2"}, "u8u8", False, ["/a/", "/b/", "/c/"])["choice"] == (
        "AVX2 without VNNI: U8U8 + float fallback of 3 blocks"
    )


def test_vnni_jetson_and_gpu_targets_keep_u8s8_and_share_one_model():
    plan = _plan(
        _with_targets(
            cpu=CPU,
            orin={**CPU, "device": "cuda", "power": "tegrastats"},
            arm={**CPU, "cpu_isa": "dotprod"},
        ),
        machine_isa="avx512_vnni",
    )
    assert [plan.cpu_isa(t) for t in ("cpu", "orin", "arm")] == ["avx512_vnni", "dotprod", "dotprod"]
    assert {plan.int8_scheme(t) for t in ("cpu", "orin", "arm")} == {"u8s8"}
    assert plan.model_artifact("cpu", "yolo-demo", "onnxruntime", "int8_minmax") == (
        "artifacts/onnx/yolo-demo/int8_minmax.onnx"
    )
    s = plan.quantize_settings("yolo-demo", "int8_minmax")
    assert s.weight_type == "qint8" and s.isa == {"cpu": "avx512_vnni", "orin": "dotprod", "arm": "dotprod"}


def test_a_change_of_instruction_set_makes_the_int8_model_stale():
    def params(isa: str) -> str:
        return (
            _plan(_with_targets(cpu={**CPU, "cpu_isa": isa}), "avx2")
            .quantize_settings("yolo-demo", "int8_minmax")
            .to_json()
        )

    # same scheme (u8s8), other instruction set: the quantize rule's params differ, so Snakemake remakes it
    assert params("avx512_vnni") != params("amx")
    # a saturating one moves the target to another file altogether
    plan = _plan(_with_targets(cpu={**CPU, "cpu_isa": "avx512"}), "avx512_vnni")
    assert plan.model_artifact("cpu", "yolo-demo", "onnxruntime", "int8_minmax").endswith("int8_minmax_u8u8.onnx")


def test_an_unknown_cpu_isa_is_a_one_line_error_naming_the_key():
    with pytest.raises(PlanforgeError, match=r"cpu_isa"):
        validate(_with_targets(cpu={**CPU, "cpu_isa": "avx3"}), check_files=False)


def test_precision_and_variant_names_are_parsed_in_one_place():
    assert parse("int8_minmax_fb").fallback and parse("int8_minmax_fb").plain == "int8_minmax"
    assert parse("int8_entropy").qdq_variant("u8u8") == "int8_entropy_u8u8"
    v = parse_variant("int8_percentile_u8u8_fb")
    assert (v.calibration, v.scheme, v.fallback, v.plain, v.precision) == (
        "percentile", "u8u8", True, "int8_percentile_u8u8", "int8_percentile_fb",
    )  # fmt: skip
    assert set(qdq_variants(fallback=False)) & set(qdq_variants(fallback=True)) == set()
    with pytest.raises(PlanforgeError, match=r"unknown QDQ variant 'int8_foo'"):
        parse_variant("int8_foo")


def test_fallback_rows_are_planned_only_where_the_decision_found_them_needed():
    plan = _plan(_with_targets(cpu=CPU), machine_isa="avx2")
    assert plan.fallback_decisions() == [("yolo-demo", "int8_minmax_u8u8"), ("dfine-demo", "int8_minmax_u8u8")]
    assert plan.fallback_source("dfine-demo", "int8_minmax_u8u8") == ("cpu", "onnxruntime", "int8_minmax")
    assert plan.fallback_inputs("dfine-demo", "int8_minmax_u8u8") == {
        "accuracy": "results/cpu/accuracy/dfine-demo/onnxruntime_int8_minmax.json",
        "baseline": ["results/cpu/accuracy/dfine-demo/torch_fp32.json"],
    }
    s = plan.fallback_settings("dfine-demo", "int8_minmax_u8u8")
    assert FallbackSettings.from_json(s.to_json()) == s and s.quantize["weight_type"] == "quint8"
    decisions = {
        ("yolo-demo", "int8_minmax_u8u8"): {"needed": False, "backend": "onnxruntime"},
        ("dfine-demo", "int8_minmax_u8u8"): {"needed": True, "backend": "onnxruntime"},
    }
    decide = lambda m, v: decisions[m, v]  # noqa: E731
    assert plan.fallback_outputs("bench", decide) == [
        "results/cpu/bench/dfine-demo/onnxruntime_int8_minmax_fb_b1.json",
        "results/cpu/bench/dfine-demo/onnxruntime_int8_minmax_fb_b4.json",
    ]
    assert plan.fallback_outputs("accuracy", decide) == [
        "results/cpu/accuracy/dfine-demo/onnxruntime_int8_minmax_fb.json"
    ]
    # a target that lists the fallback precision itself has its rows planned like any other: not twice
    listed = _plan(_with_targets(cpu={**CPU, "backends": {"onnxruntime": ["int8_minmax", "int8_minmax_fb"]}}), "avx2")
    assert "results/cpu/bench/dfine-demo/onnxruntime_int8_minmax_fb_b1.json" in listed.bench_outputs()
    assert listed.fallback_outputs("bench", decide) == []


def test_blocks_split_the_name_tree_from_the_top():
    yolo = [f"/model.{i}/conv/Conv" for i in range(22)] + [
        f"/model.22/cv{k}.{j}/cv{k}.{j}.0/conv/Conv" for k in (2, 3) for j in range(3)
    ] + ["/model.22/dfl/conv/Conv", "/model.22/Concat"]  # fmt: skip
    found = blocks(yolo, exclude={"/model.22/Concat"}, want=24)
    assert found[:2] == ["/model.0/", "/model.1/"] and "/model.22/" not in found
    assert [b for b in found if b.startswith("/model.22/cv")] == [
        f"/model.22/cv{k}.{j}/" for k in (2, 3) for j in range(3)
    ]
    dfine = [f"/inner/model/{part}/layers.{i}/MatMul" for part in ("encoder", "decoder") for i in range(4)]
    dfine += ["/inner/model/backbone/stem/Conv"]
    found = blocks(dfine, want=6)
    assert "/inner/model/backbone/" in found and len(found) >= 6 and all(b.startswith("/inner/model/") for b in found)
    assert block_of("/inner/model/decoder/layers.1/MatMul", found) in found


@pytest.mark.parametrize(("needed", "expected_runs"), [(1, 1), (3, 4), (5, 6), (13, 8)])
def test_the_search_finds_the_shortest_passing_prefix_in_few_runs(needed, expected_runs):
    order = [f"/b{i}/" for i in range(20)]
    trials = []

    def trial(keep):  # the gate holds once the first `needed` blocks are float; the ratio grows with them
        trials.append(len(keep))
        return {"passed": len(keep) >= needed, "ratio": 0.9 + 0.01 * min(len(keep), needed)}

    keep, runs = search(order, trial, max_runs=8)
    assert keep == order[:needed] and len(runs) == len(trials) == expected_runs


def test_the_search_keeps_the_best_prefix_when_its_budget_runs_out():
    keep, runs = search([f"/b{i}/" for i in range(20)], lambda k: {"passed": False, "ratio": 0.5 + 0.01 * len(k)}, 3)
    assert len(runs) == 3 and keep == [f"/b{i}/" for i in range(4)]  # tried 1, 2, 4


def test_a_listed_fallback_precision_is_decided_from_its_plain_row():
    only_fb = {**CPU, "backends": {"onnxruntime": ["fp32", "int8_minmax_fb"]}}
    plan = _plan(_with_targets(cpu=only_fb), machine_isa="avx512_vnni")
    assert ("dfine-demo", "int8_minmax") in plan.fallback_decisions()
    assert plan.fallback_inputs("dfine-demo", "int8_minmax")["accuracy"] == (
        "results/cpu/accuracy/dfine-demo/onnxruntime_int8_minmax.json"
    )
    assert plan.model_artifact("cpu", "dfine-demo", "onnxruntime", "int8_minmax_fb") == (
        "artifacts/onnx/dfine-demo/int8_minmax_fb.onnx"
    )


def test_every_fallback_decision_is_an_input_of_the_summary_so_a_stale_one_is_remade():
    plan = _plan(_with_targets(cpu=CPU), machine_isa="avx2")
    assert plan.fallback_decision_outputs() == [
        "artifacts/onnx/yolo-demo/int8_minmax_u8u8_fb.json",
        "artifacts/onnx/dfine-demo/int8_minmax_u8u8_fb.json",
    ]
