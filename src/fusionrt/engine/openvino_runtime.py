"""The OpenVINO runtime: each graph compiled by OpenVINO's CPU plugin (``openvino.Core``), read
straight from the bundle's ONNX files (com.microsoft fused ops and static-QDQ INT8 included).

Chosen over ONNX Runtime's OpenVINO execution provider (``onnxruntime-openvino``): that package
replaces the ``onnxruntime`` module, so it cannot be installed beside ``fusionrt[cpu]``, and on CPU
it refuses a bfloat16 inference precision (its 1.24.1 accepts only FP32/ACCURACY there), which is
what makes OpenVINO fast on CPUs with AVX512-BF16 or AMX.

Precision per graph: a graph's inference precision follows the bundle (``manifest.precision``):
``fp32`` runs in f32, ``bf16`` in bf16, ``int8`` graphs run their quantized ops in INT8 and the
rest in the CPU's default (bf16 where the CPU has it); ``OpenVINOOptions.inference_precision``
overrides it for every graph.
"""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

from fusionrt.cpu import cpu_info
from fusionrt.engine.loaders import OPENVINO, Placement, openvino_inference_precision, openvino_model
from fusionrt.engine.runtime import Runtime
from fusionrt.errors import InputError, ProviderError

INFERENCE_PRECISIONS = ("auto", "f32", "bf16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
# bundle precision of a graph -> the OpenVINO inference precision it runs at under "auto"
# (None: the CPU plugin's default, bf16 where the CPU has it, else f32).
PRECISION_HINTS = {"fp32": "f32", "fp16": None, "bf16": "bf16", "int8": None, "int8-dynamic": None}
# CPU_RUNTIME_CACHE_CAPACITY of fusionrt's OpenVINO graphs: the shapes of batches up to 8 at the
# default sequence buckets (8 multiples of 16 up to 128); beyond, the plugin evicts and recompiles
# instead of growing. Measured in docs/performance-notes.md ("OpenVINO memory under varied shapes").
RUNTIME_CACHE_CAPACITY = 64


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports (the ``fusionrt[openvino]`` extra)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class OpenVINOOptions:
    """Options of the OpenVINO runtime (OpenVINO's CPU plugin properties, typed).

    Attributes:
        inference_precision: ``"auto"`` follows each graph's bundle precision (see the module
            docstring); ``"f32"`` or ``"bf16"`` runs every graph's float ops at that precision
            (``INFERENCE_PRECISION_HINT``). ``"bf16"`` needs a CPU with AVX512-BF16 or AMX.
        performance_hint: ``PERFORMANCE_HINT``: ``LATENCY`` (one request at a time, all threads
            on it), ``THROUGHPUT`` or ``CUMULATIVE_THROUGHPUT`` (several streams).
        num_streams: ``NUM_STREAMS`` (``None``: what the hint picks).
        inference_num_threads: ``INFERENCE_NUM_THREADS`` (``None``: every core).
        cache_dir: ``CACHE_DIR``: compiled models are stored there, so that a second load of the
            same graph with the same options skips compilation (``None``: no cache).
        runtime_cache_capacity: ``CPU_RUNTIME_CACHE_CAPACITY``: how many shape-specific kernels
            the CPU plugin keeps per compiled graph (0: none, ``None``: the plugin's default of
            5000; the CPU device only). The default, :data:`RUNTIME_CACHE_CAPACITY`, keeps resident memory bounded
            under varied input shapes (every new (batch, seq) compiles kernels that the plugin's
            default keeps), at no measured cost in speed.
        device: the OpenVINO device (``"CPU"``).

    Raises:
        InputError: an unknown precision or hint, or a count < 1 (at construction).
    """

    inference_precision: Literal["auto", "f32", "bf16"] = "auto"
    performance_hint: Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"] = "LATENCY"
    num_streams: int | None = None
    inference_num_threads: int | None = None
    cache_dir: str | None = None
    runtime_cache_capacity: int | None = RUNTIME_CACHE_CAPACITY
    seq_bucket: int | None = 16
    batch_buckets: bool = False
    max_seq_len: int | None = None
    device: str = "CPU"

    def __post_init__(self):
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise InputError(f"OpenVINOOptions.inference_precision must be one of {list(INFERENCE_PRECISIONS)}, got {self.inference_precision!r}")
        if self.performance_hint not in PERFORMANCE_HINTS:
            raise InputError(f"OpenVINOOptions.performance_hint must be one of {list(PERFORMANCE_HINTS)}, got {self.performance_hint!r}")
        for name in ("num_streams", "inference_num_threads", "seq_bucket", "max_seq_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"OpenVINOOptions.{name} must be a positive integer or None, got {value!r}")
        value = self.runtime_cache_capacity
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InputError(f"OpenVINOOptions.runtime_cache_capacity must be an integer >= 0 or None, got {value!r}")

    def precision_for(self, bundle_precision: str | None) -> str | None:
        """The ``INFERENCE_PRECISION_HINT`` for a graph of that bundle precision (``None`` returned:
        the plugin's default; ``bundle_precision=None`` asks for it under ``"auto"``).

        Raises:
            ProviderError: bf16 asked for on a CPU without AVX512-BF16 or AMX-BF16.
        """
        hint = PRECISION_HINTS.get(bundle_precision) if self.inference_precision == "auto" else self.inference_precision
        if hint == "bf16" and not cpu_info().bf16:
            if self.inference_precision == "bf16":
                raise ProviderError(
                    f"OpenVINOOptions(inference_precision='bf16') needs a CPU with AVX512-BF16 or AMX-BF16; "
                    f"this {cpu_info().model} has none; use 'auto' or 'f32'"
                )
            return "f32"  # a bf16 bundle on a CPU without bf16 runs in f32 (placements say so)
        return hint

    def config(self, bundle_precision: str | None) -> dict:
        """The OpenVINO compile properties for one graph."""
        out: dict = {"PERFORMANCE_HINT": self.performance_hint}
        hint = self.precision_for(bundle_precision)
        if hint is not None:
            out["INFERENCE_PRECISION_HINT"] = hint
        if self.num_streams is not None:
            out["NUM_STREAMS"] = self.num_streams
        if self.inference_num_threads is not None:
            out["INFERENCE_NUM_THREADS"] = self.inference_num_threads
        if self.cache_dir is not None:
            out["CACHE_DIR"] = str(self.cache_dir)
        if self.runtime_cache_capacity is not None and self.device == "CPU":
            out["CPU_RUNTIME_CACHE_CAPACITY"] = self.runtime_cache_capacity
        return out


def _shareable(value: np.ndarray) -> np.ndarray:
    """``value`` as OpenVINO's shared memory mode takes it: C-contiguous, its dtype under numpy's
    canonical name (a ``long long`` array, the same bytes as ``int64`` on Linux but refused by
    OpenVINO's Python binding, is relabelled by a view, not copied)."""
    value = np.ascontiguousarray(value)
    canonical = np.dtype(value.dtype.name)
    return value if value.dtype.char == canonical.char else value.view(canonical)


class OpenVINORuntime(Runtime):
    """Runs the graphs with OpenVINO.

    Args:
        paths: graph name -> ONNX (or OpenVINO IR ``.xml``) file, in execution order.
        precisions: graph name -> its bundle precision (``fp32``, ``bf16``, ``int8``, ...).
        options: :class:`OpenVINOOptions`.

    Thread-safe: a compiled model serves many threads; each call takes an infer request from a
    per-graph pool (created on demand, returned after the call). Inputs and outputs are the
    graphs' (``int64`` ids and masks, ``float32`` pixels and features, batch first). Inputs are
    read in place (OpenVINO's shared memory mode: do not change a feed while its call runs);
    outputs are copied out of the request, so they are the caller's.

    Raises (from :meth:`activate`):
        ProviderError: the openvino package is not installed, or bf16 is asked for on a CPU
            without AVX512-BF16/AMX-BF16.
        BundleError: OpenVINO cannot compile a graph (names the file and OpenVINO's reason).
    """

    name = "openvino"

    def __init__(self, paths: Mapping[str, str | os.PathLike], precisions: Mapping[str, str], options: OpenVINOOptions | None = None):
        super().__init__(list(paths))
        self.paths = dict(paths)
        self.precisions = dict(precisions)
        self.options = options or OpenVINOOptions()
        self.compiled: dict = {}
        self.inference_precisions: dict[str, str] = {}
        self._requests: dict[str, queue.SimpleQueue] = {}

    def activate_impl(self) -> None:
        compiled = {graph: openvino_model(path, self.precisions.get(graph, "fp32"), self.options) for graph, path in self.paths.items()}
        self.compiled = compiled
        self.input_names = {g: [i.get_any_name() for i in c.inputs] for g, c in compiled.items()}
        self.output_names = {g: [o.get_any_name() for o in c.outputs] for g, c in compiled.items()}
        self.inference_precisions = {g: openvino_inference_precision(c) for g, c in compiled.items()}
        self._requests = {g: queue.SimpleQueue() for g in compiled}
        # per graph: the inputs with a dynamic sequence axis (dim 1), the outputs' dynamic axes
        self._seq_inputs = {g: {i.get_any_name() for i in c.inputs if _dynamic(i, 1)} for g, c in compiled.items()}
        self._dynamic_outputs = {g: [(_dynamic(o, 0), _dynamic(o, 1)) for o in c.outputs] for g, c in compiled.items()}

    def deactivate_impl(self) -> None:
        self.compiled = {}
        self._requests = {}

    def infer_graph_impl(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        padded, batch, seq = self._bucketed(graph, feed)
        pool = self._requests[graph]
        try:
            request = pool.get_nowait()
        except queue.Empty:
            request = self.compiled[graph].create_infer_request()
        try:
            # zero-copy both ways (OpenVINO's shared memory mode: the request reads the feed's arrays
            # and returns views of its own buffers); the one copy is below
            result = request.infer({k: _shareable(v) for k, v in padded.items()}, share_inputs=True, share_outputs=True)
            # the request owns its output buffers: copy them out before it serves another call;
            # the padding's rows and positions are dropped
            out = {}
            for name, port, (batch_axis, seq_axis) in zip(self.output_names[graph], self.compiled[graph].outputs, self._dynamic_outputs[graph]):
                value = result[port]
                if batch_axis:
                    value = value[:batch]
                if seq_axis and seq is not None:
                    value = value[:, :seq]
                out[name] = np.array(value)
            return out
        finally:
            pool.put(request)

    def _bucketed(self, graph: str, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, int | None]:
        """``(feed padded to its bucket, batch, seq)``: see :attr:`OpenVINOOptions.seq_bucket` and
        ``batch_buckets``; ``seq`` is ``None`` when the sequence axis was left as it is."""
        options = self.options
        batch = len(next(iter(feed.values())))
        seq_names = [n for n in feed if n in self._seq_inputs[graph]]
        seq = int(feed[seq_names[0]].shape[1]) if seq_names else None
        seq_to = seq
        if seq is not None and options.seq_bucket and options.max_seq_len:
            seq_to = max(seq, min(-(-seq // options.seq_bucket) * options.seq_bucket, options.max_seq_len))
        batch_to = 1 << (batch - 1).bit_length() if options.batch_buckets and batch > 0 else batch
        if seq_to == seq and batch_to == batch:
            return feed, batch, None
        out = {}
        for name, value in feed.items():
            if name in seq_names and seq_to != seq:
                value = np.pad(value, [(0, 0), (0, seq_to - seq)] + [(0, 0)] * (value.ndim - 2))
            if batch_to != batch:
                value = np.concatenate([value, np.repeat(value[:1], batch_to - batch, axis=0)])
            out[name] = value
        return out, batch, (seq if seq_to != seq else None)

    def placements_impl(self) -> dict[str, Placement]:
        return {
            g: Placement(OPENVINO, self.options.device, self.precisions.get(g, "fp32"), self.inference_precisions[g])
            for g in self.graphs
        }


def _dynamic(port, axis: int) -> bool:
    """Whether ``axis`` of an OpenVINO input or output port is dynamic (batch or sequence)."""
    shape = port.get_partial_shape()
    return shape.rank.is_static and shape.rank.get_length() > axis and shape[axis].is_dynamic
