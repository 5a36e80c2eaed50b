"""A result's code version is the project's own: its commit in its own checkout, a content hash of its
code anywhere else, never the commit of a repository the project was copied into."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from workflow_scripts.core import envinfo

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git CLI")

TINY_TREE = (
    "workflow_scripts/__init__.py",
    "workflow_scripts/core/__init__.py",
    "workflow_scripts/core/envinfo.py",
    "Snakefile",
    "config/schema.yaml",
)
# git without the user's or the system's configuration (hooks, signing, templates)
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _tiny_project(dest: Path) -> Path:
    for rel in TINY_TREE:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    (dest / "rules").mkdir()
    (dest / "rules" / "common.smk").write_text("# a rule file\n")
    return dest


def _git(cwd: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args]
    return subprocess.run(cmd, cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout.strip()


def _commit_all(repo: Path) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "c")
    return _git(repo, "rev-parse", "HEAD")


def _environment(project: Path) -> dict:
    """What a result JSON records, from the copy's own code (as snakemake runs it: cwd and path at the copy)."""
    code = "import json; from workflow_scripts.core.envinfo import environment; print(json.dumps(environment('cpu')))"
    env = {**GIT_ENV, "PYTHONPATH": str(project)}
    out = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_a_copy_inside_another_repository_records_a_content_hash_not_that_repositorys_commit(tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    _git(outer, "init", "-q")
    (outer / "README").write_text("another project\n")
    project = _tiny_project(outer / "vendor" / "planforge")
    outer_head = _commit_all(outer)  # the copy is tracked, and clean, in the enclosing repository
    env = _environment(project)
    assert env["git_commit"] is None
    assert env["code_version"] == {"kind": "content-hash", "value": envinfo.code_hash(project)}
    assert outer_head not in json.dumps(env)


def test_outside_any_checkout_the_content_hash_is_recorded(tmp_path):
    project = _tiny_project(tmp_path / "planforge")
    env = _environment(project)
    assert env["git_commit"] is None
    assert env["code_version"] == {"kind": "content-hash", "value": envinfo.code_hash(project)}


def test_the_projects_own_checkout_records_its_commit(tmp_path):
    project = _tiny_project(tmp_path / "planforge")
    _git(project, "init", "-q")
    head = _commit_all(project)
    env = _environment(project)
    assert env["git_commit"] == head
    assert env["code_version"] == {"kind": "git", "value": head}
    (project / "Snakefile").write_text("# changed\n")
    assert _environment(project)["git_commit"] == f"{head}-dirty"


def test_the_content_hash_follows_the_code_and_nothing_else(tmp_path):
    project = _tiny_project(tmp_path / "planforge")
    before = envinfo.code_hash(project)
    (project / "README.md").write_text("docs are not code\n")
    (project / "config" / "config.yaml").write_text("models: {}\n")
    (project / "workflow_scripts" / "__pycache__").mkdir()
    (project / "workflow_scripts" / "__pycache__" / "envinfo.cpython-311.pyc").write_bytes(b"\0")
    assert envinfo.code_hash(project) == before
    for rel in ("workflow_scripts/core/envinfo.py", "rules/common.smk", "config/schema.yaml", "Snakefile"):
        with open(project / rel, "a") as f:
            f.write("\n# changed\n")
        assert envinfo.code_hash(project) != before, rel
        before = envinfo.code_hash(project)
    (project / "workflow_scripts" / "new.py").write_text("")  # a new module, even an empty one
    assert envinfo.code_hash(project) != before
