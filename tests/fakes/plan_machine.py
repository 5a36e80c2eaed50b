"""A FAKE machine to plan on: `python tests/fakes/plan_machine.py MODE <snakemake args>` runs snakemake's CLI
in-process where this machine's facts are replaced by fixed ones, so a dry run plans the same DAG anywhere.

MODE `gpu`: every backend installed (TensorRT's Python bindings included). MODE `trtexec`: every backend but
TensorRT (no bindings; trtexec times the engines). Both: the CPU instruction set is avx2 (U8U8 QDQ models).
The GPU's name and trtexec come from the environment ($PLANFORGE_GPU_NAME, $PLANFORGE_TRTEXEC), as on a real
machine. Only the availability answers and the ISA are replaced: the plan, the rules and Snakemake are real.
"""

import sys

from workflow_scripts.core import isa

isa.local_isa = lambda: "avx2"  # before anything imports it by name

import workflow_scripts.runners as runners  # noqa: E402

MODE = sys.argv[1]


def _available(name: str) -> tuple[bool, str]:
    if MODE == "trtexec" and name == "tensorrt":
        return False, "tensorrt: not installed on this machine (missing Python module tensorrt)"
    return True, ""


runners.backend_available = _available
runners.backend_available_in = lambda python, name: _available(name)

from snakemake.cli import main  # noqa: E402

sys.argv = ["snakemake", *sys.argv[2:]]
main()
