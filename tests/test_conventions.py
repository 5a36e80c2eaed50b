"""Snakemake conventions: logs and conda envs on every rule, envs consistent with pyproject, lint clean."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml

from tests.conftest import REPO


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = set(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs |= set(extra)
    return {_norm(r) for r in reqs}


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).replace('"', "'").lower()


def _rule_blocks() -> dict[str, str]:
    blocks = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", smk.read_text(), re.M):
            blocks[m.group(1)] = m.group(2)
    return blocks


def test_every_env_file_pins_exactly_what_pyproject_pins():
    known = _pyproject_requirements()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        for req in pip:
            assert _norm(req) in known, f"{env.name}: {req!r} is not (with this specifier) in pyproject.toml"


def test_every_rule_has_a_log_and_a_conda_env_that_exists():
    blocks = _rule_blocks()
    expected = {
        "synthetic_dataset",
        "prepare_checkpoint",
        "export_onnx",
        "calibrate",
        "quantize_onnx",
        "trt_calibration_cache",
        "bench",
        "accuracy",
        "pictures",
    }
    assert expected | {"summary"} <= set(blocks)
    for name, body in blocks.items():
        assert re.search(r"^\s+log:", body, re.M), f"rule {name} has no log"
        env = re.search(r'^\s+conda:\n\s+"([^"]+)"', body, re.M)
        assert env, f"rule {name} has no conda env"
        assert (REPO / "rules" / env.group(1)).resolve().is_file(), f"rule {name}: {env.group(1)} missing"


def test_timing_rules_hold_the_exclusive_bench_resource():
    assert "bench=1" in _rule_blocks()["bench"]
    profile = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert "bench=1" in profile["resources"]


def test_snakemake_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_snakefmt_and_ruff_are_clean():
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stderr
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "workflow_scripts", "tests"], cwd=REPO, capture_output=True, text=True
    )
    assert ruff.returncode == 0, ruff.stdout


def test_every_rule_calls_one_step_cli_that_runs_by_hand_with_help():
    """Each rule's shell line is one `python -m workflow_scripts.<step>` (model jobs: the target's interpreter); every such step (and the tools
    a person runs by hand) answers --help, so it can be rerun outside Snakemake with the rule's arguments."""
    steps = set()
    for name, body in _rule_blocks().items():
        # `python`, or the target's interpreter for model jobs (targets.<t>.python: `{params.python:q}`)
        called = re.findall(r"(?:python|\{params\.python:q\}) -m (workflow_scripts[\w.]*)", body)
        assert len(called) == 1, f"rule {name} calls {called or 'no step CLI'}"
        steps |= set(called)
    by_hand = (
        "sensitivity",
        "training.yolo_demo",
        "training.dfine_demo",
        "training.samurai_demo",
        "tensorrt.trtexec_report",
    )
    steps |= {f"workflow_scripts.{s}" for s in by_hand}
    for step in sorted(steps):
        proc = subprocess.run([sys.executable, "-m", step, "--help"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0 and "usage:" in proc.stdout, step + proc.stderr[-500:]


def test_every_target_container_is_built_by_a_pinned_definition_in_envs_containers():
    images = {}
    for df in (REPO / "envs/containers").glob("*.Dockerfile"):
        text = df.read_text()
        name = re.search(r"^# image: (\S+)$", text, re.M)
        base = re.search(r"^FROM (\S+)$", text, re.M)
        assert name and base, df.name
        assert re.search(r":r?[0-9][\w.-]*$", base.group(1)), f"{df.name}: base image {base.group(1)} is not pinned"
        images[f"docker://{name.group(1)}"] = df
    used = set()
    for cfg in (REPO / "config").glob("*.yaml"):
        if cfg.name == "schema.yaml":
            continue
        for name, target in (yaml.safe_load(cfg.read_text()).get("targets") or {}).items():
            if target.get("container"):
                assert target["container"] in images, f"{cfg.name}: targets.{name}.container has no Dockerfile"
                used.add(target["container"])
    assert used == set(images), "a container definition no config uses"


def test_jobs_that_run_on_a_target_take_its_container():
    blocks = _rule_blocks()
    for rule in ("bench", "accuracy", "pictures", "build_engine", "serving", "serving_accuracy"):
        assert re.search(r"^\s+container:\n\s+target_container$", blocks[rule], re.M), rule


def test_ci_runs_the_readme_test_command_in_a_venv_it_creates():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    ci = (REPO / ".ci/run").read_text()
    assert test_command in ci.splitlines()
    assert "python3 -m venv .venv" in test_command and ci.index("rm -rf .venv") < ci.index(test_command)
