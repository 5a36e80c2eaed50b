# Config access and input functions: the only place rules learn about the config.
import json
import re

from snakemake.exceptions import WorkflowError

from workflow_scripts import config as pfconfig
from workflow_scripts import engines as trt_engines
from workflow_scripts.deps import code_files
from workflow_scripts.io import PlanforgeError
from workflow_scripts.models import SERVED_FAMILIES, checkpoint_inputs, family_file
from workflow_scripts.power import SAMPLERS
from workflow_scripts.calib_cache import ALGORITHMS as CALIB_ALGORITHMS
from workflow_scripts.runners import BACKENDS, backend_available, runner_file

try:
    CFG = pfconfig.validate(config)
except PlanforgeError as exc:
    raise WorkflowError(f"planforge: {exc}") from None

DATASETS = CFG["datasets"]
MODELS = CFG["models"]
TARGETS = CFG["targets"]
BASELINE = CFG["accuracy"]["baseline"]
AVAILABLE = {b: backend_available(b) for b in BACKENDS}
# a target names the machine it is for (targets.<t>.machine); on any other it is skipped
HERE = {
    t: TARGETS[t]["machine"] is None or trt_engines.runs_here(TARGETS[t]["machine"])
    for t in TARGETS
}
TRT_TARGETS = [t for t in TARGETS if "tensorrt" in TARGETS[t]["backends"] and HERE[t]]
try:  # 'python', 'trtexec' or None; looked up only when a target asks for TensorRT
    TRT_BUILDER = trt_engines.builder() if TRT_TARGETS else None
except PlanforgeError as exc:
    raise WorkflowError(f"planforge: {exc}") from None


wildcard_constraints:
    model="|".join(MODELS),
    target="|".join(TARGETS),
    dataset="|".join(DATASETS),
    backend="|".join(BACKENDS),
    precision="|".join(
        sorted({p for spec in BACKENDS.values() for p in spec.precisions})
    ),
    calib="|".join(CALIB_ALGORITHMS),
    split="train|val|calib",
    batch="[0-9]+",


def _as_json(value):
    return json.dumps(value, sort_keys=True)


def runs(target):
    """(model, backend, precision) triples a target measures, available backends only."""
    for model in MODELS if HERE[target] else ():
        for backend, precisions in TARGETS[target]["backends"].items():
            if AVAILABLE[backend][0]:
                for precision in precisions:
                    yield model, backend, precision


def bench_outputs(targets=None):
    return [
        f"results/{t}/bench/{m}/{b}_{p}_b{n}.json"
        for t in targets or TARGETS
        for m, b, p in runs(t)
        for n in TARGETS[t]["batch_sizes"]
    ]


def accuracy_outputs(targets=None):
    out = []
    for t in targets or TARGETS:
        triples = [r for r in runs(t) if MODELS[r[0]]["accuracy"]]
        # a target with nothing to measure here (e.g. only TensorRT, not installed) gets no baseline job
        for m in MODELS if triples else ():
            if MODELS[m]["accuracy"] and AVAILABLE[BASELINE["backend"]][0]:
                triples.append((m, BASELINE["backend"], BASELINE["precision"]))
        out += [
            f"results/{t}/accuracy/{m}/{b}_{p}.json"
            for m, b, p in dict.fromkeys(triples)
        ]
    return out


def unavailable_lines():
    """One line per target and backend that cannot run here (shown in the summary)."""
    lines = []
    for t in TARGETS:
        if not HERE[t]:
            lines.append(
                f"{t}: a target for a machine matching {TARGETS[t]['machine']!r}; this one is {trt_engines.gpu_name()!r}"
            )
            continue
        for b in TARGETS[t]["backends"]:
            if AVAILABLE[b][0]:
                continue
            if b == "tensorrt" and TRT_BUILDER:
                lines.append(
                    f"{t}: tensorrt: engines built here with {TRT_BUILDER} but not timed: {AVAILABLE[b][1]}"
                )
            elif b == "tensorrt":
                lines.append(f"{t}: tensorrt: {trt_engines.unavailable_reason()}")
            else:
                lines.append(f"{t}: {AVAILABLE[b][1]}")
    return lines


def engine_outputs(targets=None):
    """Every engine of the TensorRT targets (none where TensorRT is not installed)."""
    if TRT_BUILDER is None:
        return []
    return [
        f"artifacts/engines/{t}/{m}/{p}_b{n}.plan"
        for t in targets or TRT_TARGETS
        if t in TRT_TARGETS
        for m in MODELS
        for p in TARGETS[t]["backends"]["tensorrt"]
        for n in TARGETS[t]["batch_sizes"]
    ]


def plot_outputs():
    kinds = ("latency_vs_batch", "accuracy_vs_latency")
    return [f"results/plots/{t}_{k}.png" for t in TARGETS for k in kinds] + [
        f"results/plots/{t}_latency_vs_power.png"
        for t in TARGETS
        if TARGETS[t]["power"] != "none"
    ]


def calibration_cache_outputs():
    """A TensorRT calibration cache per model and INT8 method that some target measures."""
    methods = {
        (m, p.removeprefix("int8_"))
        for t in TARGETS
        for m, _, p in runs(t)
        if p.startswith("int8_")
    }
    return [f"artifacts/calib/{m}/{c}.cache" for m, c in sorted(methods)]


def get_final_output():
    return [
        "results/summary.md",
        *plot_outputs(),
        *calibration_cache_outputs(),
        *engine_outputs(),
        *serving_plot_outputs(),
    ]


def split_settings(dataset, split):
    """A dataset's config with only `split`'s size (other splits' sizes do not change its images)."""
    ds = DATASETS[dataset]
    return {**ds, "splits": {split: ds["splits"][split]}}


def datasets_of_kind(kind):
    """A wildcard constraint matching the datasets of one kind (nothing when there are none)."""
    names = [d for d, s in DATASETS.items() if s["kind"] == kind]
    return "|".join(re.escape(n) for n in names) or "(?!)"


def coco_settings(wildcards):
    """What makes one COCO split: the seed and the val size (calib is drawn after val), and its own size."""
    ds = DATASETS[wildcards.dataset]
    keep = ("val",) if wildcards.split == "val" else ("val", "calib")
    return _as_json(
        {
            "kind": "coco",
            "seed": ds["seed"],
            "splits": {k: ds["splits"][k] for k in keep},
        }
    )


def dataset_of(wildcards):
    return f"artifacts/data/{MODELS[wildcards.model]['dataset']}"


def val_annotations(wildcards):
    return f"{dataset_of(wildcards)}/instances_val.json"


def model_artifact(wildcards):
    """The file a backend runs: the prepared checkpoint, the ONNX model or the TensorRT engine.

    Engines are per batch profile: a bench job runs the engine of its batch; an accuracy job
    (no batch wildcard) the one of the target's largest batch, which the runner pads or splits to.

    ONNX files are named by precision: fp32 → fp32.onnx, int8_<calib> → int8_<calib>.onnx (QDQ);
    fp16 runs the FP32 file with the execution provider's FP16 mode (onnxruntime-gpu).
    """
    kind = BACKENDS[wildcards.backend].artifact
    if kind == "checkpoint":
        return f"artifacts/checkpoints/{wildcards.model}.pt"
    if kind == "engine":
        batch = getattr(wildcards, "batch", None) or max(
            TARGETS[wildcards.target]["batch_sizes"]
        )
        return f"artifacts/engines/{wildcards.target}/{wildcards.model}/{wildcards.precision}_b{batch}.plan"
    onnx = "fp32" if wildcards.precision == "fp16" else wildcards.precision
    return f"artifacts/onnx/{wildcards.model}/{onnx}.onnx"


CALIBRATION_KEYS = {
    "minmax": ("images",),
    "entropy": ("images", "num_bins"),
    "percentile": ("images", "num_bins", "percentile"),
}


def calibration_settings(wildcards):
    """What changes one method's calibration (the percentile does not touch the entropy ranges)."""
    c = CFG["quantize"]["calibration"]
    return _as_json({k: c[k] for k in CALIBRATION_KEYS[wildcards.calib]})


def quantize_settings(wildcards):
    """What changes a QDQ model beyond its ranges: types, per-channel weights, nodes kept in float."""
    q = CFG["quantize"]
    keys = ("activation_type", "per_channel", "reduce_range")
    return _as_json(
        {**{k: q[k] for k in keys}, "keep_float": MODELS[wildcards.model]["keep_float"]}
    )


def _trt(wildcards):
    if "tensorrt" not in TARGETS[wildcards.target]["backends"]:
        raise WorkflowError(
            f"planforge: target {wildcards.target} has no tensorrt backend; add it to targets.{wildcards.target}.backends"
        )
    if wildcards.precision not in BACKENDS["tensorrt"].precisions:
        raise WorkflowError(
            f"planforge: engine precision {wildcards.precision!r} is not one of {list(BACKENDS['tensorrt'].precisions)}"
        )
    return TARGETS[wildcards.target]["tensorrt"]


def engine_onnx(wildcards):
    """The ONNX an engine is built from (QDQ model for explicit INT8, else the FP32 export)."""
    return trt_engines.onnx_input(wildcards.model, wildcards.precision, _trt(wildcards))


def engine_calibration(wildcards):
    """The calibration cache an implicit-INT8 engine reads (none otherwise)."""
    cache = trt_engines.calibration_cache(
        wildcards.model, wildcards.precision, _trt(wildcards)
    )
    return [cache] if cache else []


def engine_identity(target):
    """GPU, TensorRT version and (Jetson targets) power mode of this machine: they change an engine."""
    try:
        return trt_engines.machine_identity(
            jetson=TARGETS[target]["power"] == "tegrastats"
        )
    except PlanforgeError as exc:
        raise WorkflowError(f"planforge: {exc}") from None


def engine_settings(wildcards):
    s = trt_engines.engine_settings(
        wildcards.model,
        wildcards.precision,
        int(wildcards.batch),
        MODELS[wildcards.model]["imgsz"],
        _trt(wildcards),
        engine_identity(wildcards.target),
    )
    return _as_json(s)


def timing_cache_arg(wildcards):
    if not _trt(wildcards)["timing_cache"]:
        return ""
    return f"--timing-cache artifacts/engines/{wildcards.target}/timing.cache"


def step_code(step, *extra):
    return list(code_files(step, *extra))


def measure_code(step):
    """A bench/accuracy job's code: the step, its backend's runner, its model's family, the sampler."""

    def files(wildcards):
        target = TARGETS[wildcards.target]
        return [
            *code_files(step, SAMPLERS[target["power"]]),
            runner_file(wildcards.backend),
            family_file(MODELS[wildcards.model]["family"]),
        ]

    return files


def target_settings(wildcards):
    """What about a target changes a measurement (not its lists of backends or batch sizes)."""
    t = TARGETS[wildcards.target]
    return {
        "device": t["device"],
        "threads": t["threads"],
        "backend_options": t["backend_options"].get(wildcards.backend, {}),
        "power": t["power"],
        "gpu": t["gpu"],
    }


def bench_settings(wildcards):
    s = {
        **target_settings(wildcards),
        **CFG["bench"],
        "imgsz": MODELS[wildcards.model]["imgsz"],
    }
    return _as_json({**s, "config_hash": pfconfig.digest(s)})


def accuracy_settings(wildcards):
    acc = {k: v for k, v in CFG["accuracy"].items() if k != "baseline"}
    s = {**target_settings(wildcards), **acc, "imgsz": MODELS[wildcards.model]["imgsz"]}
    return _as_json({**s, "config_hash": pfconfig.digest(s)})


def is_baseline(wildcards):
    return (wildcards.backend, wildcards.precision) == (
        BASELINE["backend"],
        BASELINE["precision"],
    )


def baseline_accuracy(wildcards):
    if is_baseline(wildcards):
        return []
    return f"results/{wildcards.target}/accuracy/{wildcards.model}/{BASELINE['backend']}_{BASELINE['precision']}.json"


def baseline_arg(wildcards, input):
    return f"--baseline {input.baseline}" if input.baseline else ""


def gpus(wildcards):
    """GPU jobs declare gpu=1 (a cluster maps it to a GPU request; locally --resources gpu=N caps them)."""
    return int(TARGETS[wildcards.target]["device"].startswith("cuda"))


def checkpoint_source(wildcards):
    """The configured checkpoint's files: the file, a save_pretrained directory's files, or none for an
    architecture name (yolov8n.yaml, dfine-demo.yaml) or a Hugging Face id (the id is in params).
    """
    m = MODELS[wildcards.model]
    return checkpoint_inputs(m["family"], m["checkpoint"])


def target_container(wildcards):
    """The target's pinned image (targets.<t>.container) for --sdm apptainer; none: the host environment."""
    return TARGETS[wildcards.target]["container"]


def exclusive_threads():
    """Timing jobs take every core Snakemake was given, so nothing runs beside them."""
    try:
        return max(1, workflow.cores or 1)
    except WorkflowError:  # --report and other modes run no job and set no cores
        return 1


# Triton serving (rules/serving.smk) ------------------------------------------------------------
SERVING = CFG["serving"]
SERVED_MODELS = [m for m in MODELS if MODELS[m]["family"] in SERVED_FAMILIES]


def serving_targets():
    """Targets that serve: serving enabled, and ONNX Runtime configured and installed (it runs the model)."""
    if not SERVING["enabled"] or not AVAILABLE["onnxruntime"][0]:
        return []
    return [t for t in TARGETS if "onnxruntime" in TARGETS[t]["backends"]]


def serving_outputs(targets=None):
    out = []
    for t in serving_targets():
        if targets is None or t in targets:
            for m in SERVED_MODELS:
                out.append(f"results/{t}/serving/{m}.json")
                if SERVING["accuracy"]:
                    out.append(f"results/{t}/serving/{m}_accuracy.json")
    return out


def serving_plot_outputs():
    return [
        f"results/plots/{t}_serving_throughput_vs_p99.png" for t in serving_targets()
    ]


def triton_onnx(wildcards):
    precisions = TARGETS[wildcards.target]["backends"]["onnxruntime"]
    return [f"artifacts/onnx/{m}/{p}.onnx" for m in SERVED_MODELS for p in precisions]


def triton_models_json(wildcards):
    precisions = TARGETS[wildcards.target]["backends"]["onnxruntime"]
    return _as_json(
        {
            m: {
                "family": MODELS[m]["family"],
                "imgsz": MODELS[m]["imgsz"],
                "onnx": {p: f"artifacts/onnx/{m}/{p}.onnx" for p in precisions},
            }
            for m in SERVED_MODELS
        }
    )


def triton_code():
    families = sorted({family_file(MODELS[m]["family"]) for m in SERVED_MODELS})
    return [*code_files("triton_repo", "triton_models"), *families]


def triton_settings(wildcards):
    t, acc = TARGETS[wildcards.target], CFG["accuracy"]
    keys = ("max_batch_size", "max_queue_delay_us", "instances", "onnx_backend")
    return _as_json(
        {
            "device": t["device"],
            "threads": t["threads"],
            "serving": {
                **{k: SERVING[k] for k in keys},
                "conf": CFG["bench"]["conf"],
                "iou": acc["iou"],
                "max_det": acc["max_det"],
            },
            "accuracy": {k: acc[k] for k in ("conf", "iou", "max_det")},
        }
    )


def serving_settings(wildcards):
    keys = (
        "concurrency",
        "protocols",
        "requests",
        "stability_percentage",
        "max_trials",
        "startup_timeout_s",
    )
    s = {k: SERVING[k] for k in keys}
    ports = {k: SERVING[k] for k in ("http_port", "grpc_port")}
    return _as_json({**s, **ports, "config_hash": pfconfig.digest(s)})


def serving_accuracy_settings(wildcards):
    acc = CFG["accuracy"]
    s = {
        "batch": acc["batch"],
        "max_images": acc["max_images"],
        "startup_timeout_s": SERVING["startup_timeout_s"],
        "map_tolerance": SERVING["map_tolerance"],
    }
    return _as_json({**s, "config_hash": pfconfig.digest(s)})


def serving_bench_b1(wildcards):
    """The in-process ONNX Runtime batch-1 bench the serving overhead is compared with, where it runs."""
    p = TARGETS[wildcards.target]["backends"]["onnxruntime"][0]
    path = f"results/{wildcards.target}/bench/{wildcards.model}/onnxruntime_{p}_b1.json"
    return path if path in bench_outputs([wildcards.target]) else []


def serving_reference(wildcards):
    p = TARGETS[wildcards.target]["backends"]["onnxruntime"][0]
    return f"results/{wildcards.target}/accuracy/{wildcards.model}/onnxruntime_{p}.json"


def bench_b1_arg(wildcards, input):
    return f"--bench-b1 {input.bench_b1}" if input.bench_b1 else ""
