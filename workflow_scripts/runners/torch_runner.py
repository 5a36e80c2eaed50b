"""PyTorch runners: eager, CUDA-graph replay of a fixed batch, torch.compile, and torch.compile's kernels
replayed from a plain CUDA graph.

All share one class; the backend name picks the mode. On CUDA the model timer uses CUDA
events around the forward (the stream is synchronised before the clock is read), FP16 is
`half()`, and channels_last is on by default (`backend_options: {channels_last: false}` to
turn it off). One-off work — compiling, capturing a graph — happens in `setup` and is
recorded apart from the timed iterations.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from workflow_scripts.core.cudagraphs import HostScalarsAsFills, capturable  # noqa: F401 - re-exported
from workflow_scripts.core.envinfo import transformers_checks_off
from workflow_scripts.core.fusion import fuse_projections
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.precisions import Precision
from workflow_scripts.core.runner_facts import RunnerFacts
from workflow_scripts.runners import BACKENDS, Runner

# torch-compile-graph: inductor settings per compile mode. Inductor's own "max-autotune" also turns on its
# CUDA graphs (cudagraph trees), which cannot run inside the runner's plain graph capture; its kernels and
# autotuning are those of "max-autotune-no-cudagraphs". Autotuning is bounded: convolutions keep cuDNN
# (inductor's Triton conv templates take ~8-10 s each to tune on an H200 and rarely win), GEMMs search
# inductor's DEFAULT space, not EXHAUSTIVE. `inductor_config` overrides any of these, and the result JSON
# records what was set (runner.versions → inductor_options).
GRAPH_COMPILE_MODES = {
    "default": {},
    "max-autotune": {
        "max_autotune": True,
        "coordinate_descent_tuning": True,
        "max_autotune_conv_backends": "ATEN",
        "max_autotune_gemm_search_space": "DEFAULT",
    },
}


def inductor_options(compile_mode: str | None, overrides: dict | None = None) -> dict:
    """The torch._inductor.config settings a torch-compile-graph compile runs with: its mode's, then `overrides`.

    Never inductor's own CUDA graphs (`triton.cudagraphs`): the runner captures the compiled kernels itself.
    """
    mode = compile_mode or "default"
    if mode not in GRAPH_COMPILE_MODES:
        raise PlanforgeError(
            f"torch-compile-graph: compile_mode {mode!r} is not one of {sorted(GRAPH_COMPILE_MODES)} "
            "(inductor's CUDA graphs are replaced by the runner's own capture)"
        )
    options = {**GRAPH_COMPILE_MODES[mode], **(overrides or {})}
    if options.get("triton.cudagraphs"):
        raise PlanforgeError(
            "torch-compile-graph: inductor_config triton.cudagraphs must stay off (the runner captures the graph)"
        )
    import torch._inductor.config as inductor_config

    known = set(inductor_config.get_config_copy())
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise PlanforgeError(
            f"torch-compile-graph: inductor_config {unknown[0]!r} is not a torch._inductor.config setting "
            f"of torch {torch.__version__}"
        )
    return options


def use_inductor_cache(cache_dir: str | None) -> str | None:
    """Point inductor's on-disk caches (FX graphs, generated kernels, autotune results) at `cache_dir`.

    A rerun then loads the compiled graph and the autotuning choices instead of redoing them. The caches
    key on the GPU, the torch / Triton versions and the graph, so one folder is safe for every target.
    Set before the first compile of the process (inductor reads TORCHINDUCTOR_CACHE_DIR when it compiles);
    None keeps inductor's default (a folder under /tmp).
    """
    if not cache_dir:
        return None
    path = os.path.abspath(cache_dir)
    os.makedirs(path, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def inductor_cache_counters() -> dict[str, int]:
    """Inductor's cache hit / miss counters so far in this process (FX graph and autotune caches)."""
    from torch._dynamo.utils import counters

    return {k: int(v) for k, v in counters["inductor"].items() if "cache" in k}


class TorchRunner(Runner):
    """Runs a torch.nn.Module that a model family loaded; `output_fn` picks its outputs."""

    backend = "torch"
    mode = "eager"  # eager | cudagraph | compile | compile-graph
    compile_mode: str | None = None

    def __init__(
        self,
        model: torch.nn.Module,
        precision: Precision | str,
        device: str = "cpu",
        threads: int | None = None,
        options: dict | None = None,
        output_fn=None,
        input_size_fn=None,
    ) -> None:
        super().__init__(model, precision, device, threads, options)
        if threads:
            torch.set_num_threads(int(threads))
        self.torch_device = torch.device(device)
        self.cuda = self.torch_device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise PlanforgeError(f"device {device}: torch sees no CUDA GPU on this machine; run this target on a GPU")
        problem = BACKENDS[self.backend].device_problem(device, self.precision)  # the registry's device rule
        if problem:
            raise PlanforgeError(f"{self.backend}: {problem}")
        self.dtype = getattr(torch, self.precision.torch_dtype)  # activations (a float precision: weights too)
        chosen = self.options["channels_last"]
        self.channels_last = self.cuda if chosen is None else bool(chosen)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # sibling projections (q/k/v, gate/up) as one GEMM each (`core.fusion`): fewer, larger kernels for the
        # launch-bound small-batch transformers (Pi0's action expert); opt-in, the eager modules' code unchanged
        self.fused_projections = fuse_projections(model) if self.options.get("fuse_projections") else None
        model = model.to(self.torch_device, self.dtype).eval()
        self.model = model.to(memory_format=self.memory_format)
        self.output_fn = output_fn or (lambda raw: raw)
        # family hook: fix per-size constants (D-FINE's anchors) on the device before capture / compile
        self.input_size_fn = input_size_fn
        self.input_size: tuple[int, int] | None = None
        self.forward = self._eager
        self.compile_backend: str | None = None
        self.compiled: set[tuple[int, ...]] = set()  # input shapes the compiled forward was set up for
        self.primed_shape: tuple[int, ...] | None = None  # input shape of the model's last eager forward
        self.graphed = self.mode in ("cudagraph", "compile-graph")  # replays a captured graph per input shape
        self.inductor_options: dict | None = None
        self.inductor_cache: str | None = None
        self.cache_events: dict[str, int] = {}  # inductor cache hits / misses per compiled shape
        if self.mode == "compile-graph":
            # inductor's kernels, captured by this runner in a plain CUDA graph (_capture); inductor's own
            # graphs stay off. Options instead of mode: torch.compile takes one or the other, and the options
            # are what the JSON records.
            self.compile_backend = "inductor"
            self.compile_mode = self.options["compile_mode"] or "default"
            self.inductor_options = inductor_options(self.compile_mode, self.options["inductor_config"])
            self.inductor_cache = use_inductor_cache(self.options["cache_dir"])
            self.forward = torch.compile(self._eager, backend="inductor", options=self.inductor_options, dynamic=False)
        if self.mode == "compile":
            # compile_backend: a dynamo backend; "eager" / "aot_eager" trace the same graphs without inductor
            self.compile_backend = str(self.options["compile_backend"])
            inductor = self.compile_backend == "inductor"
            self.compile_mode = (self.options["compile_mode"] or self.compile_mode) if inductor else None
            self.inductor_cache = use_inductor_cache(self.options["cache_dir"]) if inductor else None
            self.forward = torch.compile(
                self._eager, backend=self.compile_backend, mode=self.compile_mode, dynamic=False
            )
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = {}
        self.setup_seconds: dict[str, float] = {}
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.torch_device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def build_facts(self) -> RunnerFacts:
        """The cast and placed module, its dtype and how this runner runs it (a tracker runs its parts the same way)."""
        return replace(
            super().build_facts(),
            module=self.model,
            dtype=self.dtype,
            mode=self.mode,
            compile_mode=self.compile_mode,
            compile_backend=self.compile_backend,
            inductor_options=self.inductor_options,
        )

    def _eager(self, x: torch.Tensor | dict[str, torch.Tensor]) -> Any:
        return self.output_fn(self.model(**x) if isinstance(x, dict) else self.model(x))

    def _named(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Named inputs (Pi0): floats in the runner's dtype, integers and masks as they are."""
        out = {}
        for k, a in arrays.items():
            t = torch.from_numpy(np.ascontiguousarray(a)).to(self.torch_device)
            out[k] = t.to(self.dtype) if t.is_floating_point() else t
        return out

    def prepare(self, batch: np.ndarray | dict[str, np.ndarray]) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(batch, dict):
            x = self._named(batch)
        else:
            x = torch.from_numpy(batch).to(self.torch_device, self.dtype).contiguous(memory_format=self.memory_format)
            if self.input_size_fn is not None and tuple(x.shape[-2:]) != self.input_size:
                self.input_size = tuple(x.shape[-2:])
                self.input_size_fn(self.model, *self.input_size, self.torch_device, self.dtype)
        if self.mode in ("compile", "compile-graph") and _shape(x) != self.primed_shape:
            self._prime(x)
        if self.graphed:
            graph = self.graphs.get(_shape(x)) or self._capture(x)
            if isinstance(x, dict):
                for k, v in x.items():
                    graph[1][k].copy_(v)
            else:
                graph[1].copy_(x)
            return graph[1]
        return x

    def _prime(self, x: torch.Tensor) -> None:
        """One eager forward at this input shape, so that the compiled forward never meets a first forward.

        A model may set state on its modules in the forward that first sees a shape: ultralytics' Detect
        computes its anchors and strides and stores them with the input shape (`Detect._get_decode_boxes`,
        `if self.dynamic or self.shape != shape`). Traced by dynamo, that branch breaks the graph
        (`make_anchors` makes a tensor with a fill value read from `self.stride`, a data-dependent
        `.item()`) deep inside nested module calls; dynamo then compiles each submodule's forward apart
        (Conv.forward_fuse, C2f.forward, ...), recompiling the shared code once per module instance up to its
        recompile limit, and runs the rest eagerly. With the state set here, the compiled call traces one graph.
        """
        with torch.inference_mode():
            self._eager(x)
        self.primed_shape = _shape(x)

    def setup(self, prepared: torch.Tensor) -> None:
        if self.mode == "compile" and _shape(prepared) not in self.compiled:
            t0 = time.perf_counter()
            # dynamo reads the switch while it traces (it keeps no guard on it): the checks stay out of the graph
            with torch.inference_mode(), transformers_checks_off():
                for _ in range(3):  # reduce-overhead records its graphs on the later calls
                    self.forward(prepared)
            self._sync()
            self.compiled.add(_shape(prepared))
            self.setup_seconds[str(_shape(prepared))] = round(time.perf_counter() - t0, 3)

    def _capture(self, x: torch.Tensor):
        """Capture one forward at x's shape in a CUDA graph: the eager forward, or (compile-graph) the compiled one.

        compile-graph compiles first, on the current stream, with a primed model (prepare) and transformers'
        checks off while dynamo traces; then both modes warm up on a side stream and capture. Compile time
        (autotuning included) and capture time are recorded apart in setup_seconds.
        """
        shape = _shape(x)
        if isinstance(x, dict):
            static_in = {k: torch.empty_like(v).copy_(v) for k, v in x.items()}
        else:
            static_in = torch.empty_like(x).copy_(x)
        fn, around_capture = self._eager, capturable
        if self.mode == "compile-graph":
            fn, around_capture = self.forward, transformers_checks_off
            from torch._dynamo.utils import counters

            t0 = time.perf_counter()
            graphs, before = counters["stats"]["unique_graphs"], inductor_cache_counters()
            with torch.inference_mode(), transformers_checks_off():
                fn(static_in)  # dynamo traces, inductor compiles (and autotunes, in max-autotune)
            self._sync()
            if counters["stats"]["unique_graphs"] == graphs:  # dynamo ran the forward eagerly: nothing to capture
                raise PlanforgeError(
                    f"{self.backend}: torch.compile made no graph for input {shape} (dynamo's recompile limit "
                    "reached in this process?); run each model in its own process or call torch._dynamo.reset()"
                )
            self.compiled.add(shape)
            self.setup_seconds[f"compile {shape}"] = round(time.perf_counter() - t0, 3)
            after = inductor_cache_counters()
            self.cache_events.update(
                {f"{k} {shape}": after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
            )
        t0 = time.perf_counter()
        stream = torch.cuda.Stream(self.torch_device)
        stream.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):  # warm up allocator and cuDNN choices outside the graph
                fn(static_in)
        torch.cuda.current_stream(self.torch_device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # compile-graph: only the checks go off. The compiled graph writes no host scalars into device tensors
        # (inductor makes them kernel constants), and a Python dispatch mode around compiled code is not what
        # dynamo traced
        with torch.inference_mode(), torch.cuda.graph(graph), around_capture():
            static_out = fn(static_in)
        self.graphs[shape] = (graph, static_in, static_out)
        self.setup_seconds[f"capture {shape}"] = round(time.perf_counter() - t0, 3)
        return self.graphs[shape]

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.torch_device)

    def _run(self, prepared: torch.Tensor) -> Any:
        if self.graphed:
            graph, _, static_out = self.graphs[_shape(prepared)]
            graph.replay()
            return static_out
        if self.mode == "compile" and _shape(prepared) not in self.compiled:
            self.setup(prepared)  # callers that skip setup (the accuracy loop) still compile under its conditions
        with torch.inference_mode():
            return self.forward(prepared)

    def infer(self, prepared: torch.Tensor) -> Any:
        out = self._run(prepared)
        self._sync()
        return out

    def timed_infer(self, prepared: torch.Tensor) -> tuple[Any, float]:
        if not self.cuda:
            return super().timed_infer(prepared)
        self._start.record()
        out = self._run(prepared)
        self._end.record()
        self._end.synchronize()
        return out, self._start.elapsed_time(self._end) / 1e3

    def to_numpy(self, outputs: Any) -> list[np.ndarray]:
        outs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        return [o.detach().float().cpu().numpy() for o in outs]

    def phase_times_ms(self) -> dict[str, list[float]] | None:
        return getattr(self.model, "phase_times_ms", None)

    def memory(self) -> dict[str, int | None]:
        mem = super().memory()
        mem["weight_bytes"] = weight_bytes(self.model)
        if self.cuda:
            mem["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(self.torch_device))
        return mem

    def versions(self) -> dict[str, str]:
        v = {
            "torch": torch.__version__,
            "torch_threads": str(torch.get_num_threads()),
            "mode": self.mode,
            "channels_last": str(self.channels_last),
        }
        if self.compile_mode:
            v["compile_mode"] = self.compile_mode
        if self.compile_backend:
            v["compile_backend"] = self.compile_backend
        if self.inductor_options is not None:
            v["inductor_options"] = json.dumps(self.inductor_options, sort_keys=True)
            v["inductor_cache_dir"] = str(self.inductor_cache)
            v["inductor_cache_events"] = json.dumps(self.cache_events, sort_keys=True)
        elif self.inductor_cache:  # torch-compile: inductor's own mode, the same persistent caches
            v["inductor_cache_dir"] = str(self.inductor_cache)
        if self.fused_projections is not None:
            v["fused_projections"] = json.dumps(self.fused_projections, sort_keys=True)
        if self.cuda:
            v["cuda"] = str(torch.version.cuda)
            v["cudnn"] = str(torch.backends.cudnn.version())
        return v


def quantized_modules(model: torch.nn.Module) -> dict[str, int]:
    """How many linear / embedding modules hold which weight type (torchao's tensor subclasses, or float)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            w = m.weight
            kind = type(w).__name__ if type(w) not in (torch.Tensor, torch.nn.Parameter) else str(w.dtype)
            key = f"{type(m).__name__}:{kind}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored: a quantized tensor subclass (torchao) counts
    its packed data, scales and zero points (its inner tensors), not its logical shape × dtype. A storage
    shared by several names (tied weights) counts once."""
    seen: set[int] = set()

    def size(t: torch.Tensor) -> int:
        if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
            names, _ = t.__tensor_flatten__()
            return sum(size(getattr(t, n)) for n in names)
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            return 0
        seen.add(key)
        return int(storage.nbytes())

    tensors = [*model.parameters(), *model.buffers()]
    return sum(size(t.detach() if isinstance(t, torch.nn.Parameter) else t) for t in tensors)


def _shape(x: torch.Tensor | dict[str, torch.Tensor]) -> tuple:
    """What a compiled forward or a captured graph is keyed by: the input's shape, or each named input's."""
    if isinstance(x, dict):
        return tuple((k, *v.shape) for k, v in x.items())
    return tuple(x.shape)


class TorchCudaGraphRunner(TorchRunner):
    """A fixed batch captured once in a CUDA graph and replayed (input copied into its static buffer)."""

    backend = "torch-cudagraph"
    mode = "cudagraph"


class TorchCompileRunner(TorchRunner):
    """torch.compile(mode="reduce-overhead"): inductor kernels plus CUDA graphs on GPU."""

    backend = "torch-compile"
    mode = "compile"
    compile_mode = "reduce-overhead"


class TorchCompileMaxRunner(TorchRunner):
    """torch.compile(mode="max-autotune-no-cudagraphs"): autotuned kernels, no graphs (slow to compile)."""

    backend = "torch-compile-max"
    mode = "compile"
    compile_mode = "max-autotune-no-cudagraphs"


class TorchCompileGraphRunner(TorchRunner):
    """torch.compile's kernels (inductor, default mode or bounded max-autotune) replayed from a plain CUDA graph.

    Inductor's reduce-overhead mode wraps its kernels in cudagraph trees with guards and bookkeeping on every
    call; here the compiled forward is captured once per input shape in a torch.cuda.CUDAGraph and replayed,
    as torch-cudagraph replays the eager forward (on an H200, yolov8n 640 FP16 b1: 0.465 ms vs 0.95 ms).
    """

    backend = "torch-compile-graph"
    mode = "compile-graph"


class TorchAoRunner(TorchRunner):
    """Weight-only quantization with torchao's `quantize_`: int8 weights with fp32 activations
    (Int8WeightOnlyConfig), or int4 weights in groups of `group_size` with bf16 activations
    (Int4WeightOnlyConfig, CUDA; packed as `int4_packing_format`, by default for aten's tinygemm kernel).

    What is quantized, and how, is the backend's options (recorded per module kind in `versions()["quantized"]`):
    - linear layers: int8, or int4 where the input width divides by `group_size` (tinygemm's groups); a linear
      that does not (SigLIP's 4304-wide MLP in Pi0) takes `int4_fallback` (int8 weight-only, or none: it stays
      in the float dtype, which is what torchao's own int4 config does);
    - embedding tables: `embeddings` int8 (per row; torchao dequantizes the table at each lookup) or none.
    Option `cuda_graph`: the quantized forward captured in a CUDA graph per input shape and replayed, as
    torch-cudagraph does for the float model. `memory.weight_bytes` is what the weights take as stored.
    """

    backend = "torchao"
    CHOICES = {"int4_fallback": ("int8", "none"), "embeddings": ("int8", "none")}

    def __init__(self, model, precision: Precision | str, *args, **kwargs) -> None:
        super().__init__(model, precision, *args, **kwargs)
        import torchao
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        for key, allowed in self.CHOICES.items():
            if self.options[key] not in allowed:
                raise PlanforgeError(f"backend_options.torchao.{key}: {self.options[key]!r}; one of {list(allowed)}")
        t0 = time.perf_counter()
        group = int(self.options["group_size"])

        def linear(m, fqn=""):
            return isinstance(m, torch.nn.Linear)

        def int4_fits(m, fqn=""):
            return linear(m) and m.in_features % group == 0

        if self.precision.weight_bits == 4:
            quantize_(
                self.model,
                Int4WeightOnlyConfig(group_size=group, int4_packing_format=str(self.options["int4_packing_format"])),
                filter_fn=int4_fits,
            )
            if self.options["int4_fallback"] != "none":  # int8 (CHOICES)
                quantize_(self.model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: linear(m) and not int4_fits(m))
        else:
            quantize_(self.model, Int8WeightOnlyConfig(), filter_fn=linear)
        if self.options["embeddings"] != "none":  # int8 (CHOICES)
            quantize_(self.model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Embedding))
        self.setup_seconds["quantize"] = round(time.perf_counter() - t0, 3)
        self.torchao_version = torchao.__version__
        self.quantized = quantized_modules(self.model)
        if self.options["cuda_graph"]:
            if not self.cuda:
                raise PlanforgeError(f"{self.backend}: option cuda_graph needs a CUDA device, not {self.device}")
            self.mode, self.graphed = "cudagraph", True

    def versions(self) -> dict[str, str]:
        return {
            **super().versions(),
            "torchao": self.torchao_version,
            "weights": self.precision.name,
            "quantized": json.dumps(self.quantized, sort_keys=True),
        }
