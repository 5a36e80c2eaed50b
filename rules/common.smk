# Config access and input functions: the only place rules learn about the config.
import json

from snakemake.exceptions import WorkflowError

from workflow_scripts import config as pfconfig
from workflow_scripts.deps import code_files
from workflow_scripts.io import PlanforgeError
from workflow_scripts.models import family_file
from workflow_scripts.power import SAMPLERS
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


wildcard_constraints:
    model="|".join(MODELS),
    target="|".join(TARGETS),
    dataset="|".join(DATASETS),
    backend="|".join(BACKENDS),
    precision="[a-z0-9]+",
    batch="[0-9]+",


def _as_json(value):
    return json.dumps(value, sort_keys=True)


def runs(target):
    """(model, backend, precision) triples a target measures, available backends only."""
    for model in MODELS:
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
        triples = list(runs(t))
        for m in MODELS:
            if AVAILABLE[BASELINE["backend"]][0]:
                triples.append((m, BASELINE["backend"], BASELINE["precision"]))
        out += [
            f"results/{t}/accuracy/{m}/{b}_{p}.json"
            for m, b, p in dict.fromkeys(triples)
        ]
    return out


def unavailable_lines():
    """One line per target and backend that cannot run here (shown in the summary)."""
    return [
        f"{t}: {AVAILABLE[b][1]}"
        for t in TARGETS
        for b in TARGETS[t]["backends"]
        if not AVAILABLE[b][0]
    ]


def plot_outputs():
    kinds = ("latency_vs_batch", "accuracy_vs_latency")
    return [f"results/plots/{t}_{k}.png" for t in TARGETS for k in kinds]


def get_final_output():
    return ["results/summary.md", *plot_outputs(), *serving_plot_outputs()]


def dataset_of(wildcards):
    return f"artifacts/data/{MODELS[wildcards.model]['dataset']}"


def val_annotations(wildcards):
    return f"{dataset_of(wildcards)}/instances_val.json"


def model_artifact(wildcards):
    """The file a backend runs: the prepared checkpoint or the ONNX model of that precision."""
    kind = BACKENDS[wildcards.backend].artifact
    if kind == "checkpoint":
        return f"artifacts/checkpoints/{wildcards.model}.pt"
    return f"artifacts/onnx/{wildcards.model}/{wildcards.precision}.onnx"


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


def exclusive_threads():
    """Timing jobs take every core Snakemake was given, so nothing runs beside them."""
    try:
        return max(1, workflow.cores or 1)
    except WorkflowError:  # --report and other modes run no job and set no cores
        return 1


# Triton serving (rules/serving.smk) ------------------------------------------------------------
SERVING = CFG["serving"]


def serving_targets():
    """Targets that serve: serving enabled, and ONNX Runtime configured and installed (it runs the model)."""
    if not SERVING["enabled"] or not AVAILABLE["onnxruntime"][0]:
        return []
    return [t for t in TARGETS if "onnxruntime" in TARGETS[t]["backends"]]


def serving_outputs(targets=None):
    out = []
    for t in serving_targets():
        if targets is None or t in targets:
            for m in MODELS:
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
    return [f"artifacts/onnx/{m}/{p}.onnx" for m in MODELS for p in precisions]


def triton_models_json(wildcards):
    precisions = TARGETS[wildcards.target]["backends"]["onnxruntime"]
    return _as_json(
        {
            m: {
                "family": MODELS[m]["family"],
                "imgsz": MODELS[m]["imgsz"],
                "onnx": {p: f"artifacts/onnx/{m}/{p}.onnx" for p in precisions},
            }
            for m in MODELS
        }
    )


def triton_code():
    families = sorted({family_file(m["family"]) for m in MODELS.values()})
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
