"""A carried Triton kit: the serving environment (`workflow_scripts/serving/env.py`) for a machine with no network.

The lent GPU machine has no tritonserver, no perf_analyzer and no PyPI, and each call carries at most 64 MiB of
ignored files. So the environment is made here and carried in parts:

- `pack` (here, with PyPI): `pip download` the serving side's wheels for one Python (`--python 3.12`: cp312,
  manylinux), lay them out as `TritonEnv` expects (`bin/perf_analyzer`, `lib/python3.X/site-packages/...`, only
  that Python's backend stub), and write one tar.xz stream cut into parts of at most `--part-mib` (fewest parts,
  equal sizes) plus a manifest `triton-kit-cp3X.json` (parts, sha256, sizes, Python, REQUIREMENTS hash).
  Left out: onnxruntime (the device's own numpy-2 build serves; the stub sees it after the kit, see
  `TritonEnv.server_env`) and the client library's http/grpc extras (nothing in the kit imports them).
- `stage` (there, one call per carried part): copy the manifest and the parts present in `--kit` to `--dir` (a
  folder that outlives the call), each checked against its sha256; says which parts are still missing.
- `install` (there, when the last part arrives): stage what was carried, check every part, unpack into a venv of
  the running Python (`--env`), link it (`serving.env._link`), mark it ready for `serving.env.ensure`, check the
  binaries' shared libraries (ldd), and smoke it: `perf_analyzer --version`, and a real tritonserver with one
  python-backend model that answers the versions its stub sees (numpy < 2 from the kit, torch from the workflow).

Every failure is one line; the environment is marked ready only after the smoke check passes.

    python benchmarks/triton_kit.py pack --python 3.12 --out .kit
    python benchmarks/triton_kit.py stage --kit .kit --dir /tmp/triton-kit                      # a part per call
    python benchmarks/triton_kit.py install --kit .kit --dir /tmp/triton-kit --env /tmp/triton-env
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import urllib.request
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script, from any folder: the repo's packages

from workflow_scripts.core.io import PlanforgeError, atomic_path, file_digest, run_cli, write_json  # noqa: E402
from workflow_scripts.serving import env as serving_env  # noqa: E402

PART_MIB = 60  # a call carries 64 MiB in all: a part and the manifest, with room to spare
# the device shares these with the kit's stub (its own numpy-2 builds run on numpy 1.x); the reason is recorded
SHARED = {"onnxruntime": "the device's own onnxruntime (its site-packages come after the kit's, server_env)"}
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
BINARIES = (  # what must run there, relative to the env root (the python backend's pieces via TritonEnv)
    "bin/perf_analyzer",
    "{site}/pytriton/tritonserver/bin/tritonserver",
    "{site}/pytriton/tritonserver/backends/python/libtriton_python.so",
    "{site}/pytriton/tritonserver/python_backend_stubs/{py}/triton_python_backend_stub",
)
KIT_MARKER = ".planforge-kit.json"


def tag(python: str) -> str:
    """'3.12' → 'cp312' (a bad value is one line)."""
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise PlanforgeError(f"--python {python!r}: expected a CPython minor version such as 3.12")
    return "cp" + python.replace(".", "")


def manifest_name(python: str) -> str:
    return f"triton-kit-{tag(python)}.json"


def running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def kit_requirements(opencv: bool = True) -> list[str]:
    """The serving side's REQUIREMENTS that the kit carries: less what the device shares, extras dropped (the
    client library's http/grpc dependencies are imported by nothing in the kit), plus pip (`TritonEnv.versions`)."""
    out = []
    for req in serving_env.REQUIREMENTS:
        name = re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0]
        if name in SHARED or (name == "opencv-python-headless" and not opencv):
            continue
        out.append(re.sub(r"\[[^\]]*\]", "", req))
    return [*out, "pip"]


def sha256(path: Path) -> str:
    return file_digest(path)


# -- pack (here) ------------------------------------------------------------------------------------------------
def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if "Location" not in ln][-2:]
        raise PlanforgeError(f"pip {what} failed ({' | '.join(tail)}); pack needs PyPI")


def layout_wheels(python: str, requirements: list[str], tree: Path) -> None:
    """`pip download` + `pip install --target` of the cp3X manylinux wheels into `tree` as TritonEnv expects."""
    site = tree / "lib" / f"python{python}" / "site-packages"
    target = ["--only-binary=:all:", "--no-deps", "--implementation", "cp", "--python-version", python,
              *(x for p in PLATFORMS for x in ("--platform", p))]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="planforge-kit-wheels-") as wheels:
        _pip(["download", "-q", *target, "-d", wheels, *requirements], f"download ({', '.join(requirements)})")
        files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
        _pip(["install", "-q", "--no-compile", *target, "--target", str(site), *files], "install --target")
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    scripts = site / "bin"  # pip --target puts wheel scripts here: only perf_analyzer is wanted (its shebang-free ELF)
    if not (scripts / "perf_analyzer").is_file():
        raise PlanforgeError(f"{scripts}: the tritonclient wheel brought no perf_analyzer; check REQUIREMENTS")
    shutil.move(scripts / "perf_analyzer", tree / "bin" / "perf_analyzer")
    shutil.rmtree(scripts)
    stubs = site / "pytriton" / "tritonserver" / "python_backend_stubs"
    if not (stubs / python).is_dir():
        have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise PlanforgeError(f"{stubs}: no python backend stub for Python {python} (it has {', '.join(have)})")
    for other in stubs.iterdir():  # one stub per Python; the kit serves one
        if other.name != python:
            shutil.rmtree(other)


def versions_in(site: Path) -> dict[str, str]:
    """{distribution: version} from the dist-info folders of a site-packages."""
    out = {}
    for d in sorted(site.glob("*.dist-info")):
        name, _, version = d.name.removesuffix(".dist-info").partition("-")
        out[name] = version
    return out


def write_parts(
    tree: Path, out: Path, python: str, part_bytes: int, preset: int = 9, extra: dict | None = None
) -> dict:
    """`tree` as one tar.xz stream cut into the fewest parts of ≤ part_bytes (equal sizes), and the manifest;
    parts of an earlier pack for the same Python are removed. Returns the manifest."""
    if not tree.is_dir():
        raise PlanforgeError(f"{tree}: no such folder to pack")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"triton-kit-{tag(python)}.tar.xz"
    unpacked = 0
    with tempfile.NamedTemporaryFile(dir=out, prefix=f".{stem}.", delete=False) as fh:
        archive = Path(fh.name)
    try:
        with (
            open(archive, "wb") as raw,
            lzma.open(raw, "wb", preset=preset) as xz,
            tarfile.open(fileobj=xz, mode="w|") as tar,
        ):
            for path in sorted(tree.rglob("*")):
                rel = path.relative_to(tree)
                info = tar.gettarinfo(str(path), arcname=str(rel))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    unpacked += info.size
                    with open(path, "rb") as src:
                        tar.addfile(info, src)
                else:
                    tar.addfile(info)
        size = archive.stat().st_size
        n = max(1, math.ceil(size / part_bytes))
        chunk = math.ceil(size / n)
        for old in out.glob(f"{stem}.*"):
            old.unlink()
        parts = []
        with open(archive, "rb") as src:
            for i in range(n):
                part = out / f"{stem}.{i:02d}"
                with atomic_path(part, suffix=".tmp") as tmp:
                    tmp.write_bytes(src.read(chunk))
                parts.append({"name": part.name, "bytes": part.stat().st_size, "sha256": sha256(part)})
        manifest = {
            "kit": 1,
            "python": python,
            "requirements": list(serving_env.REQUIREMENTS),
            "requirements_hash": serving_env._requirements_hash(),
            "archive": {"bytes": size, "sha256": sha256(archive), "xz_preset": preset, "unpacked_bytes": unpacked},
            "part_limit_bytes": part_bytes,
            "parts": parts,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
    finally:
        archive.unlink(missing_ok=True)
    write_json(out / manifest_name(python), manifest)
    return manifest


def pack(python: str, out: Path, part_mib: float = PART_MIB, opencv: bool = True, preset: int = 9) -> dict:
    """Download, lay out and write the kit for `python` into `out` (the manifest is returned)."""
    tag(python)
    requirements = kit_requirements(opencv)
    with tempfile.TemporaryDirectory(prefix="planforge-kit-") as tmp:
        tree = Path(tmp) / "env"
        layout_wheels(python, requirements, tree)
        site = tree / "lib" / f"python{python}" / "site-packages"
        extra = {"packages": requirements, "versions": versions_in(site), "shared_with_the_device": SHARED}
        return write_parts(tree, out, python, int(part_mib * 2**20), preset, extra)


# -- stage and install (there) ----------------------------------------------------------------------------------
def read_manifest(folder: Path, python: str) -> dict:
    path = folder / manifest_name(python)
    if not path.is_file():
        have = sorted(p.name for p in folder.glob("triton-kit-cp*.json")) if folder.is_dir() else []
        raise PlanforgeError(
            f"{path}: no kit manifest for this Python {python}"
            + (f" (there: {', '.join(have)})" if have else "")
            + f"; carry it from `triton_kit.py pack --python {python}`"
        )
    try:
        manifest = json.loads(path.read_text())
        manifest["parts"] = [{k: p[k] for k in ("name", "bytes", "sha256")} for p in manifest["parts"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanforgeError(f"{path}: not a kit manifest ({exc}); carry the one pack wrote") from None
    return manifest


def part_ok(path: Path, part: dict) -> bool:
    return path.is_file() and path.stat().st_size == part["bytes"] and sha256(path) == part["sha256"]


def stage(kit: Path, folder: Path, python: str | None = None) -> tuple[list[str], list[str]]:
    """Copy the manifest and each part present in `kit` (sha256 checked) to `folder`; returns (staged, missing).
    A manifest unlike the staged one (a new pack) starts the folder afresh."""
    python = python or running_python()
    manifest = read_manifest(kit, python)
    folder.mkdir(parents=True, exist_ok=True)
    staged_manifest = folder / manifest_name(python)
    src_text = (kit / manifest_name(python)).read_text()
    if not staged_manifest.is_file() or staged_manifest.read_text() != src_text:
        for old in folder.glob(f"triton-kit-{tag(python)}.tar.xz.*"):
            old.unlink()
        with atomic_path(staged_manifest) as tmp:
            tmp.write_text(src_text)
    for part in manifest["parts"]:
        src, dst = kit / part["name"], folder / part["name"]
        if src.is_file() and not (dst.is_file() and dst.stat().st_size == part["bytes"]):
            if not part_ok(src, part):
                raise PlanforgeError(f"{src}: size or sha256 differs from {manifest_name(python)}; carry it again")
            with atomic_path(dst, suffix=".tmp") as tmp:
                shutil.copyfile(src, tmp)
    staged = [p["name"] for p in manifest["parts"] if (folder / p["name"]).is_file()]
    missing = [p["name"] for p in manifest["parts"] if p["name"] not in staged]
    return staged, missing


def check_parts(folder: Path, manifest: dict) -> list[Path]:
    """Every part present and intact, in order (one line naming the first that is not)."""
    paths = []
    n = len(manifest["parts"])
    for i, part in enumerate(manifest["parts"]):
        path = folder / part["name"]
        if not path.is_file():
            raise PlanforgeError(
                f"{path}: part {i + 1} of {n} is missing; carry .kit/{part['name']} (with the manifest) and run "
                "`triton_kit.py stage` in a call before install"
            )
        if not part_ok(path, part):
            raise PlanforgeError(f"{path}: part {i + 1} of {n} differs from its sha256 in the manifest; stage it again")
        paths.append(path)
    return paths


class _Joined(io.RawIOBase):
    """The parts read back to back as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.fh = list(paths), None

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while True:
            if self.fh is None:
                if not self.paths:
                    return 0
                self.fh = open(self.paths.pop(0), "rb")
            n = self.fh.readinto(buf)
            if n:
                return n
            self.fh.close()
            self.fh = None


def check_libpython() -> str:
    """The shared libpython the backend stub loads (as `serving.env._link` finds it); one line if this Python is
    a static build."""
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    places = [Path(sys.base_prefix) / "lib", Path("/usr/lib/x86_64-linux-gnu"), Path("/lib/x86_64-linux-gnu")]
    found = [p / soname for p in places if soname and (p / soname).exists()]
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not found:
        raise PlanforgeError(
            f"{sys.base_prefix}: this Python {running_python()} has no shared libpython (a static build, or no "
            f"{soname or 'libpython*.so'} in {', '.join(map(str, places))}); the Triton python backend stub loads "
            "one: run install and the serving driver with a Python built with --enable-shared"
        )
    return str(found[0])


def missing_libs(env: serving_env.TritonEnv) -> dict[str, list[str]]:
    """{binary: [sonames ldd cannot find]} for the kit's executables, with LD_LIBRARY_PATH as the server gets it."""
    py = running_python()
    site = env.site_packages.relative_to(env.root)
    out = {}
    for rel in BINARIES:
        path = env.root / rel.format(site=site, py=py)
        if not path.is_file():
            out[str(path)] = ["(file missing)"]
            continue
        proc = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env.client_env())
        gone = sorted({ln.split("=>")[0].strip() for ln in proc.stdout.splitlines() if "not found" in ln})
        if gone:
            out[str(path)] = gone
    return out


SMOKE_MODEL = '''"""planforge kit smoke: the versions the python backend stub sees (the serving models' sys.path)."""

import json
import os
import sys

sys.path[:0] = [os.environ["PLANFORGE_PROJECT"], os.environ["PLANFORGE_SITE_PACKAGES"]]
sys.path[2:2] = [p for p in os.environ.get("PLANFORGE_WORKFLOW_SITE_PACKAGES", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _version(name):
    try:
        module = __import__(name)
        return f"{module.__version__} ({os.path.dirname(module.__file__)})"
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: only some models need it
        return f"not importable: {type(exc).__name__}: {exc}"


class TritonPythonModel:
    def initialize(self, args):
        if int(np.__version__.split(".")[0]) >= 2:
            raise RuntimeError(f"numpy {np.__version__} from {np.__file__}: the stub needs the kit's numpy<2")
        self.versions = {"python": sys.version.split()[0], "executable": sys.executable, "numpy": _version("numpy")}
        for name in ("torch", "onnxruntime", "cv2"):
            self.versions[name] = _version(name)

    def execute(self, requests):
        text = np.array([json.dumps(self.versions).encode()], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("VERSIONS", text)]) for _ in requests]
'''
SMOKE_CONFIG = """name: "planforge_kit_smoke"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "VERSIONS" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def interpreter_first_on_path() -> None:
    """The stub's embedded Python finds its home from the first `python3` on PATH: make it this interpreter's (a
    machine whose PATH starts with another Python's would leave the stub without its standard library)."""
    here = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != here:
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


def smoke(env: serving_env.TritonEnv, log: Path, timeout: float = 180) -> dict:
    """perf_analyzer --version, and a real tritonserver answering ready and one request to a python model."""
    from workflow_scripts.serving.server import serve

    interpreter_first_on_path()

    t0 = time.perf_counter()
    proc = subprocess.run([str(env.perf_analyzer), "--version"], capture_output=True, text=True, env=env.client_env(),
                          timeout=60)  # fmt: skip
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise PlanforgeError(f"{env.perf_analyzer} --version: exit {proc.returncode} ({text.splitlines()[-1:]})")
    with tempfile.TemporaryDirectory(prefix="planforge-kit-repo-") as repo:
        model = Path(repo) / "planforge_kit_smoke"
        (model / "1").mkdir(parents=True)
        (model / "1" / "model.py").write_text(SMOKE_MODEL)
        (model / "config.pbtxt").write_text(SMOKE_CONFIG)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        with serve(env, Path(repo), log, timeout=timeout) as server:
            body = {"inputs": [{"name": "IN", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
            url = f"http://{server.http_url}/v2/models/planforge_kit_smoke/infer"
            req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    answer = json.loads(r.read())
            except (OSError, ValueError) as exc:  # HTTPError is an OSError: its body is Triton's message
                detail = exc.read().decode(errors="replace")[:300] if hasattr(exc, "read") else str(exc)
                raise PlanforgeError(f"{url}: the smoke model did not answer ({detail}); see {log}") from None
    stub = json.loads(answer["outputs"][0]["data"][0])
    return {"perf_analyzer": text.splitlines()[-1] if text else "", "stub_sees": stub,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def install(kit: Path | None, folder: Path, root: Path, run_smoke: bool = True) -> dict:
    """Stage what `kit` holds, then unpack the staged kit into a venv of this Python at `root`, link it, check its
    libraries and smoke it; marks it ready for `serving.env.ensure(root)`. An identical kit already there is kept."""
    python = running_python()
    if kit is not None and kit.is_dir() and (kit / manifest_name(python)).is_file():
        stage(kit, folder, python)
    manifest = read_manifest(folder, python)
    if manifest["requirements_hash"] != serving_env._requirements_hash():
        raise PlanforgeError(
            f"{folder / manifest_name(python)}: packed for other serving REQUIREMENTS than "
            "workflow_scripts/serving/env.py has now; pack it again"
        )
    check_libpython()
    parts = check_parts(folder, manifest)
    env = serving_env.TritonEnv(Path(root).resolve())
    marker = env.root / KIT_MARKER
    same = marker.is_file() and json.loads(marker.read_text()).get("archive") == manifest["archive"]
    t0 = time.perf_counter()
    if not (same and env.ready()):
        if env.root.exists():
            shutil.rmtree(env.root)
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(env.root)
        with tarfile.open(fileobj=io.BufferedReader(_Joined(parts), 1 << 20), mode="r|xz") as tar:
            tar.extractall(env.root, filter="data")
        serving_env._link(env)
    unpack_s = time.perf_counter() - t0
    gone = missing_libs(env)
    if gone:
        first = next(iter(gone))
        raise PlanforgeError(f"{first}: cannot load {', '.join(gone[first])} (ldd, LD_LIBRARY_PATH as TritonEnv.libs)")
    record = {"archive": manifest["archive"], "python": python, "libpython": check_libpython(),
              "unpack_seconds": round(unpack_s, 1), "versions": manifest.get("versions", {})}  # fmt: skip
    if run_smoke:
        record["smoke"] = smoke(env, env.root / "smoke.tritonserver.log")
    (env.root / serving_env.READY).write_text(serving_env._requirements_hash() + "\n")
    write_json(marker, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a_pack = sub.add_parser("pack", help="here: download and write the kit's parts and manifest")
    a_pack.add_argument("--python", default=running_python(), help="the device's Python minor version, e.g. 3.12")
    a_pack.add_argument("--out", type=Path, default=Path(".kit"))
    a_pack.add_argument("--part-mib", type=float, default=PART_MIB)
    a_pack.add_argument("--preset", type=int, default=9, help="xz preset")
    a_pack.add_argument("--no-opencv", action="store_true", help="leave out opencv (only YOLO's pre/post use it)")
    for name in ("stage", "install"):
        s = sub.add_parser(name, help="there: " + ("copy the carried parts" if name == "stage" else "install the kit"))
        s.add_argument("--kit", type=Path, default=Path(".kit"), help="where this call's carried files are")
        s.add_argument("--dir", type=Path, default=Path("/tmp/triton-kit"), help="staged parts (outlives the call)")
        if name == "install":
            s.add_argument("--env", type=Path, default=Path("/tmp/triton-env"))
            s.add_argument("--no-smoke", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "pack":
        m = pack(a.python, a.out, a.part_mib, not a.no_opencv, a.preset)
        sizes = ", ".join(f"{x['name']} {x['bytes'] / 2**20:.1f} MiB" for x in m["parts"])
        print(f"{a.out / manifest_name(a.python)}: {len(m['parts'])} part(s): {sizes}; "
              f"{m['archive']['unpacked_bytes'] / 2**20:.0f} MiB unpacked")  # fmt: skip
    elif a.cmd == "stage":
        staged, missing = stage(a.kit, a.dir)
        print(f"{a.dir}: staged {len(staged)} of {len(staged) + len(missing)} part(s)"
              + (f"; still missing {', '.join(missing)}" if missing else "; ready to install"))  # fmt: skip
    else:
        record = install(a.kit, a.dir, a.env, not a.no_smoke)
        print(json.dumps({k: record[k] for k in ("python", "libpython", "unpack_seconds", "smoke") if k in record}))
        print(f"{a.env}: serving environment ready (PLANFORGE_TRITON_ENV={a.env.resolve()})")


if __name__ == "__main__":
    run_cli(main)
