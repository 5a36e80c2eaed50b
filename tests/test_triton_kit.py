"""The carried Triton kit (benchmarks/triton_kit.py): parts, manifest, staging over several calls, and its errors.

Packed from a small tree of random files (no pip, no network); the real pack/install/serve check is described in
the kit's docstring and run by hand (see README)."""

from __future__ import annotations

import io
import json
import math
import os
import sysconfig
import tarfile

import pytest

from benchmarks import triton_kit as kit
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.serving import env as serving_env

PY = kit.running_python()


def fake_env_tree(root, files: int = 6, size: int = 40_000):
    """An env-shaped tree of incompressible files (so that the xz stream really needs several parts)."""
    site = root / "lib" / f"python{PY}" / "site-packages" / "pkg"
    site.mkdir(parents=True)
    (root / "bin").mkdir()
    rng = __import__("random").Random(0)
    for i in range(files):
        (site / f"f{i}.bin").write_bytes(rng.randbytes(size))
    (root / "bin" / "perf_analyzer").write_bytes(b"#!fake\n")
    os.chmod(root / "bin" / "perf_analyzer", 0o755)
    return root


@pytest.fixture
def packed(tmp_path):
    tree = fake_env_tree(tmp_path / "tree")
    out = tmp_path / ".kit"
    manifest = kit.write_parts(tree, out, PY, part_bytes=100_000, preset=1)
    return tree, out, manifest


def test_kit_requirements_leave_out_what_the_device_shares():
    reqs = kit.kit_requirements()
    assert not any(r.startswith("onnxruntime") for r in reqs)
    assert "tritonclient==2.51.0" in reqs and "pip" in reqs  # extras dropped, pip for TritonEnv.versions
    assert any(r.startswith("nvidia-pytriton") for r in reqs)
    assert not any(r.startswith("opencv") for r in kit.kit_requirements(opencv=False))


def test_pack_writes_the_fewest_equal_parts_under_the_limit_and_a_manifest(packed):
    tree, out, manifest = packed
    size = manifest["archive"]["bytes"]
    assert size > 200_000  # random bytes do not compress
    assert len(manifest["parts"]) == math.ceil(size / 100_000)
    sizes = [p["bytes"] for p in manifest["parts"]]
    assert max(sizes) <= 100_000 and max(sizes) - min(sizes) <= len(sizes) and sum(sizes) == size
    on_disk = json.loads((out / kit.manifest_name(PY)).read_text())
    assert on_disk["requirements_hash"] == serving_env._requirements_hash()
    for p in on_disk["parts"]:
        assert kit.sha256(out / p["name"]) == p["sha256"]
    # the parts read back to back are the tar.xz of the tree
    joined = io.BufferedReader(kit._Joined([out / p["name"] for p in manifest["parts"]]))
    with tarfile.open(fileobj=joined, mode="r|xz") as tar:
        names = {m.name: m for m in tar}
    assert f"lib/python{PY}/site-packages/pkg/f3.bin" in names
    assert names["bin/perf_analyzer"].mode & 0o111
    # packing again with a bigger limit replaces the earlier parts
    again = kit.write_parts(tree, out, PY, part_bytes=10 * 2**20, preset=1)
    assert len(again["parts"]) == 1
    assert sorted(p.name for p in out.glob("triton-kit-*.tar.xz.*")) == [again["parts"][0]["name"]]


def test_parts_arriving_over_several_calls_are_staged_until_complete(packed, tmp_path):
    _, out, manifest = packed
    names = [p["name"] for p in manifest["parts"]]
    staged_dir = tmp_path / "staged"
    for i, name in enumerate(names):  # each call carries the manifest and one part
        call = tmp_path / f"call{i}"
        call.mkdir()
        for f in (kit.manifest_name(PY), name):
            (call / f).write_bytes((out / f).read_bytes())
        staged, missing = kit.stage(call, staged_dir)
        assert staged == names[: i + 1] and missing == names[i + 1 :]
    assert [p.name for p in kit.check_parts(staged_dir, manifest)] == names


def test_install_names_the_missing_part_before_touching_the_env(packed, tmp_path):
    _, out, manifest = packed
    last = manifest["parts"][-1]["name"]
    (out / last).unlink()
    env = tmp_path / "env"
    with pytest.raises(PlanforgeError, match=rf"{last}: part {len(manifest['parts'])} of .* is missing; carry"):
        kit.install(out, tmp_path / "staged", env)
    assert not env.exists()


def test_a_corrupt_part_is_refused_when_staged(packed, tmp_path):
    _, out, manifest = packed
    first = out / manifest["parts"][0]["name"]
    data = bytearray(first.read_bytes())
    data[100] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(PlanforgeError, match="sha256 differs"):
        kit.stage(out, tmp_path / "staged")


def test_a_kit_for_another_python_or_other_requirements_is_refused(packed, tmp_path):
    _, out, _ = packed
    with pytest.raises(PlanforgeError, match=r"no kit manifest for this Python 3\.99 \(there: triton-kit-cp"):
        kit.read_manifest(out, "3.99")
    path = out / kit.manifest_name(PY)
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "requirements_hash": "0" * 16}))
    with pytest.raises(PlanforgeError, match="other serving REQUIREMENTS.*pack it again"):
        kit.install(out, tmp_path / "staged", tmp_path / "env")
    with pytest.raises(PlanforgeError, match="expected a CPython minor version"):
        kit.tag("python3")


def test_fake_static_python_is_refused_in_one_line(monkeypatch):
    real = sysconfig.get_config_var
    monkeypatch.setattr(kit.sysconfig, "get_config_var", lambda k: 0 if k == "Py_ENABLE_SHARED" else real(k))
    with pytest.raises(PlanforgeError, match="no shared libpython.*stub loads one"):
        kit.check_libpython()
    monkeypatch.undo()
    assert kit.check_libpython().endswith(real("INSTSONAME"))
