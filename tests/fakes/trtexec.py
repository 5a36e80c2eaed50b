"""A FAKE trtexec for tests on machines without TensorRT (tests write it to PATH as `trtexec`).

It checks its arguments the way TensorRT 10's trtexec does — known flags only, `--onnx` an existing
ONNX file, `--min/opt/maxShapes=<input>:AxBxCxD` naming a real input of that model with its rank and
min ≤ opt ≤ max, `--memPoolSize=<pool>:<size>[B|K|M|G]`, `--calib` only with INT8 and an existing
file, `--allowGPUFallback` only with `--useDLACore` — and prints trtexec's banner lines
('&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # …', '&&&& PASSED …' / '&&&& FAILED …').
It builds nothing: `--saveEngine` gets a small text file naming the fake and the arguments.
$FAKE_TRTEXEC_VERSION sets the version number it claims (default 100300 = 10.3.0);
$FAKE_TRTEXEC_CALLS, when set, is a file it appends each command line to (one JSON list a line).
With `--loadEngine` (timing) it prints real trtexec lines and writes real export files from
$FAKE_TRTEXEC_FIXTURES (tests/fixtures/trtexec/real/, cited in its README): see `time_engine`.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

VERSION = os.environ.get("FAKE_TRTEXEC_VERSION", "100300")
BANNER = f"TensorRT.trtexec [TensorRT v{VERSION}]"
VALUE_FLAGS = {
    "onnx",
    "saveEngine",
    "loadEngine",
    "minShapes",
    "optShapes",
    "maxShapes",
    "memPoolSize",
    "builderOptimizationLevel",
    "timingCacheFile",
    "useDLACore",
    "calib",
    "exportTimes",
    "exportProfile",
    "iterations",
    "warmUp",
    "duration",
    "avgRuns",
    "device",
    "profilingVerbosity",
    "shapes",
}
SWITCHES = {
    "fp16",
    "int8",
    "best",
    "allowGPUFallback",
    "skipInference",
    "version",
    "help",
    "verbose",
    "noTF32",
    "stronglyTyped",
    "useCudaGraph",
    "separateProfileRun",
    "dumpProfile",
    "useSpinWait",
    "noDataTransfers",
}
POOLS = {"workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem"}


def fail(msg: str) -> None:
    print(f"[E] {msg}")
    print(f"&&&& FAILED {BANNER} # trtexec {' '.join(sys.argv[1:])}")
    sys.exit(1)


def parse(argv: list[str]) -> dict:
    opts: dict = {}
    for arg in argv:
        m = re.fullmatch(r"--([A-Za-z][A-Za-z0-9]*)(?:=(.*))?", arg)
        if not m:
            fail(f"Invalid argument: {arg}")
        name, value = m.group(1), m.group(2)
        if name in SWITCHES:
            if value is not None:
                fail(f"{arg}: --{name} takes no value")
            opts[name] = True
        elif name in VALUE_FLAGS:
            if not value:
                fail(f"{arg}: --{name} needs a value")
            opts[name] = value
        else:
            fail(f"Unknown option: --{name}")
    return opts


def onnx_inputs(path: str) -> dict[str, int]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return {i.name: len(i.type.tensor_type.shape.dim) for i in model.graph.input if i.name not in init}


def shape(spec: str, inputs: dict[str, int], flag: str) -> list[int]:
    m = re.fullmatch(r"([^:]+):(\d+(?:x\d+)*)", spec)
    if not m:
        fail(f"--{flag}={spec}: expected <input>:<dim>x<dim>…")
    name, dims = m.group(1), [int(d) for d in m.group(2).split("x")]
    if name not in inputs:
        fail(f'--{flag}: cannot find input tensor with name "{name}" in the network inputs {sorted(inputs)}')
    if len(dims) != inputs[name]:
        fail(f"--{flag}: {name} has {inputs[name]} dimensions, got {len(dims)}")
    return dims


def time_engine(opts: dict) -> None:
    """--loadEngine: print real trtexec timing lines and write real --exportTimes/--exportProfile files (from
    $FAKE_TRTEXEC_FIXTURES, tests/fixtures/trtexec/real/); a file that is not a fake engine is refused."""
    engine = Path(opts["loadEngine"])
    if not engine.is_file() or not engine.read_text(errors="replace").startswith("FAKE TensorRT engine"):
        fail(f"Failed to load engine {engine}")
    if opts.get("allowGPUFallback"):
        fail("--allowGPUFallback is a build option")
    for flag in ("warmUp", "iterations"):
        if flag in opts and not opts[flag].isdigit():
            fail(f"--{flag}={opts[flag]}: expected an integer")
    fixtures = Path(os.environ["FAKE_TRTEXEC_FIXTURES"])
    stdout = (fixtures / "loadengine_stdout.txt").read_text().splitlines()
    started = next(i for i, ln in enumerate(stdout) if "Starting inference" in ln)
    print("\n".join(stdout[: started + 1]), flush=True)
    time.sleep(float(os.environ.get("FAKE_TRTEXEC_SECONDS", "0.1")))  # "inference": a window for the power sampler
    print("\n".join(stdout[started + 1 :]), flush=True)
    if "exportTimes" in opts:
        Path(opts["exportTimes"]).write_text((fixtures / "mobilenet.qat.timing.json").read_text())
    if "exportProfile" in opts:
        Path(opts["exportProfile"]).write_text((fixtures / "mobilenet.qat.profile.json").read_text())


def main() -> None:
    argv = sys.argv[1:]
    print(f"&&&& RUNNING {BANNER} # trtexec {' '.join(argv)}")
    log = os.environ.get("FAKE_TRTEXEC_CALLS")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(argv) + "\n")
    opts = parse(argv)
    if opts.get("version") or opts.get("help"):
        print("=== Model Options ===\n  --onnx=<file>               ONNX model")
        return
    if "loadEngine" in opts:
        time_engine(opts)
        print(f"&&&& PASSED {BANNER} # trtexec {' '.join(argv)}")
        return
    if "onnx" not in opts:
        fail("Model missing or format not recognized (give --onnx=<file>)")
    if not Path(opts["onnx"]).is_file():
        fail(f"Cannot open ONNX file {opts['onnx']}")
    inputs = onnx_inputs(opts["onnx"])
    given = [f for f in ("minShapes", "optShapes", "maxShapes") if f in opts]
    if given and len(given) != 3:
        fail("--minShapes, --optShapes and --maxShapes must be given together")
    if given:
        lo, opt, hi = (shape(opts[f], inputs, f) for f in ("minShapes", "optShapes", "maxShapes"))
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            fail(f"shapes must satisfy min <= opt <= max: {lo} {opt} {hi}")
    if "memPoolSize" in opts:
        for pool in opts["memPoolSize"].split(","):
            m = re.fullmatch(r"(\w+):(\d+(?:\.\d+)?)([BKMG]?)", pool)
            if not m or m.group(1) not in POOLS:
                fail(f"--memPoolSize={opts['memPoolSize']}: invalid pool spec {pool!r}")
    if "builderOptimizationLevel" in opts and opts["builderOptimizationLevel"] not in list("012345"):
        fail("--builderOptimizationLevel must be 0..5")
    if "useDLACore" in opts and not opts["useDLACore"].isdigit():
        fail("--useDLACore needs a core number")
    if opts.get("allowGPUFallback") and "useDLACore" not in opts:
        fail("--allowGPUFallback is only meaningful with --useDLACore")
    if "calib" in opts:
        if not (opts.get("int8") or opts.get("best")):
            fail("--calib needs --int8 or --best")
        if not Path(opts["calib"]).is_file():
            fail(f"Cannot open calibration cache {opts['calib']}")
    if "timingCacheFile" in opts:
        cache = Path(opts["timingCacheFile"])
        with cache.open("a") as fh:
            fh.write("fake timing cache entry\n")
    if "useDLACore" in opts and os.environ.get("FAKE_TRTEXEC_FIXTURES"):  # a real DLA build's layer placement
        print((Path(os.environ["FAKE_TRTEXEC_FIXTURES"]) / "dla_build_log.txt").read_text(), end="")
    if "saveEngine" in opts:
        Path(opts["saveEngine"]).write_text(
            "FAKE TensorRT engine written by tests/fakes/trtexec.py\n" + json.dumps(argv)
        )
        print(f"[I] Engine built in 0.01 sec.\n[I] Saved engine to {opts['saveEngine']}")
    print(f"&&&& PASSED {BANNER} # trtexec {' '.join(argv)}")


if __name__ == "__main__":
    main()
