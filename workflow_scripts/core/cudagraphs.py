"""CUDA graphs of the parts of a model that a Python loop drives (the SAMURAI tracker's per-frame steps).

A runner captures a whole forward (`runners.torch_runner`); a tracker cannot: between its heavy parts sit the
session's bookkeeping and a host decision (the Kalman filter picks a mask). `ShapeGraphs` wraps one tensor
function instead and captures it once per input signature (the shapes and dtypes of its tensor arguments and
the values of the others): a part whose input grows for the first frames of a sequence (the memory bank) gets
one graph per length, all sharing one memory pool. A call copies its tensors into the graph's static inputs,
replays, and returns copies of the static outputs (the caller keeps them past the next replay). A part that
cannot be captured runs eagerly from then on, and `describe()` says why.

`capturable()` is what a capture of transformers code needs around it (also used by the torch runners).
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from workflow_scripts.core.envinfo import transformers_checks_off
from workflow_scripts.core.io import exception_line

WARMUP = 2  # eager calls on a side stream before a capture (allocator, cuDNN / cuBLAS choices)


class HostScalarsAsFills(TorchDispatchMode):
    """While a CUDA graph is captured: `gpu_tensor[i] = 3` becomes a fill kernel, not a host copy.

    PyTorch writes a Python number into a CUDA tensor by copying a fresh 0-dim CPU tensor, which
    capture refuses (pageable host memory). transformers' D-FINE does this for its feature-map
    shapes on every forward; the values are fixed for the captured input size, so a fill with the
    value as a kernel argument replays the same result. Any other host copy still fails loudly.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.copy_.default:
            dst, src = args[0], args[1]
            if dst.is_cuda and src.device.type == "cpu" and src.dim() == 0:
                return dst.fill_(src.item())
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def capturable():
    """What a CUDA graph capture of a transformers model needs around it: host scalars written into
    device tensors become fills (above), and transformers' shape checks are off."""
    with transformers_checks_off(), HostScalarsAsFills():
        yield


def _leaf_key(x: Any) -> tuple:
    if isinstance(x, torch.Tensor):
        return ("t", tuple(x.shape), x.dtype, x.device)
    return ("v", repr(x))


class _Entry:
    def __init__(self, graph: Any, inputs: list, outputs: Any) -> None:
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class _RerunStandIn:
    """Stands in for `torch.cuda.CUDAGraph` where CUDA cannot exist (CPU tests of the buffer handling only):
    'capture' runs the function on the static inputs, 'replay' runs it again and writes into the same outputs."""

    def __init__(self, fn: Callable, inputs: list, spec: Any) -> None:
        self.fn, self.inputs, self.spec = fn, inputs, spec
        self.outputs = None

    def capture(self) -> Any:
        args, kwargs = tree_unflatten(self.inputs, self.spec)
        self.outputs = self.fn(*args, **kwargs)
        return self.outputs

    def replay(self) -> None:
        args, kwargs = tree_unflatten(self.inputs, self.spec)
        fresh, _ = tree_flatten(self.fn(*args, **kwargs))
        for old, new in zip(tree_flatten(self.outputs)[0], fresh, strict=True):
            if isinstance(old, torch.Tensor):
                old.copy_(new)


class ShapeGraphs:
    """`fn` (tensors and plain values in, a pytree of tensors out) replayed from one CUDA graph per signature.

    `compiled`: `fn` is a torch.compile'd function; its first call per signature (the compile) runs on the
    current stream before the warm-up. `fallback`: what runs eagerly once a capture (or compile) failed. `stand_in`: no CUDA (tests): `_RerunStandIn` instead of a graph.
    """

    def __init__(
        self,
        fn: Callable,
        name: str,
        pool: Any = None,
        compiled: bool = False,
        stand_in: bool = False,
        fallback: Callable | None = None,
    ) -> None:
        self.fn, self.name, self.pool, self.compiled, self.stand_in = fn, name, pool, compiled, stand_in
        self.fallback = fallback or fn  # what runs once a capture failed (a compiled part: its eager function)
        self.graphs: dict[tuple, _Entry] = {}
        self.failed: str | None = None
        self.failed_where: str | None = None  # the traceback's last frames of the failed capture
        self.eager_calls = 0
        self.last_key: tuple | None = None  # the signature of the latest replay
        self.setup_seconds: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            self.eager_calls += 1
            return self.fallback(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        key = (str(spec), *map(_leaf_key, leaves))
        entry = self.graphs.get(key)
        if entry is None:
            t0 = time.perf_counter()
            try:
                entry = self._capture(leaves, spec)
            except Exception as exc:  # noqa: BLE001 - the part runs eagerly and the record says why
                self.failed = exception_line(exc)
                self.failed_where = traceback.format_exc(limit=-4)[-1200:]
                print(f"cudagraphs: {self.name} runs eagerly: it could not be captured ({self.failed})", flush=True)
                self.eager_calls += 1
                return self.fallback(*args, **kwargs)
            self.graphs[key] = entry
            self.setup_seconds.append(round(time.perf_counter() - t0, 3))
        self.last_key = key
        for buf, x in zip(entry.inputs, leaves, strict=True):
            if isinstance(x, torch.Tensor):
                buf.copy_(x)
        entry.graph.replay()
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, entry.outputs)

    def _capture(self, leaves: list, spec: Any) -> _Entry:
        inputs = [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        args, kwargs = tree_unflatten(inputs, spec)
        if self.stand_in:
            graph = _RerunStandIn(self.fn, inputs, spec)
            return _Entry(graph, inputs, graph.capture())
        if self.compiled:
            with transformers_checks_off():
                self.fn(*args, **kwargs)  # dynamo traces, inductor compiles
            torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), transformers_checks_off():
            for _ in range(WARMUP):
                self.fn(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # a compiled function writes no host scalars (inductor makes them constants), and a dispatch mode around
        # compiled code is not what dynamo traced: only the checks go off for it
        around = transformers_checks_off if self.compiled else capturable
        with torch.cuda.graph(graph, pool=self.pool), around():
            outputs = self.fn(*args, **kwargs)
        return _Entry(graph, inputs, outputs)

    def replay_ms(self, repeats: int = 50) -> float | None:
        """Device time of one replay of the latest signature's graph (CUDA events, median of `repeats`)."""
        entry = self.graphs.get(self.last_key) if self.last_key is not None else None
        if entry is None or self.stand_in:
            return None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            entry.graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return round(sorted(times)[len(times) // 2], 4)

    def describe(self) -> dict:
        return {
            "graphs": len(self.graphs),
            "compiled": self.compiled,
            "eager_because": self.failed,
            **({"failed_where": self.failed_where} if self.failed_where else {}),
            "eager_calls": self.eager_calls,
            "setup_seconds_total": round(sum(self.setup_seconds), 3),
        }


def graph_pool(stand_in: bool = False) -> Any:
    """One memory pool for all the graphs of one model (they replay one at a time, on one stream)."""
    return None if stand_in else torch.cuda.graph_pool_handle()
