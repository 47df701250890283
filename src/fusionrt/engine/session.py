"""ONNX Runtime: execution-provider choice, typed provider options, and the chain of graphs (a
runner that executes the bundle's graphs in order and feeds each graph by tensor name). Sessions
are created by :func:`fusionrt.engine.loaders.ort_session`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from fusionrt.engine.loaders import _ort
from fusionrt.engine.openvino_runtime import OpenVINOOptions
from fusionrt.errors import InputError, ProviderError

# Preference order of "auto" (best first).
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _provider_names(providers: str | Sequence[str]) -> list[str] | None:
    """The names of a ``providers`` argument, in order, without duplicates; ``None`` for "auto"."""
    if isinstance(providers, str):
        names = [p.strip() for p in providers.split(",") if p.strip()]
    else:
        try:
            names = list(providers)
        except TypeError:
            raise ProviderError(f"providers must be 'auto' or a list of provider names, got {providers!r}") from None
        bad = [p for p in names if not isinstance(p, str)]
        if bad:
            raise ProviderError(
                f"provider names must be strings, got {bad!r} (provider options go in EngineOptions, not in the list)"
            )
        names = [p.strip() for p in names]
    if not names or not all(names):
        raise ProviderError(f"providers {providers!r} names no execution provider; give 'auto' or provider names")
    if names == ["auto"]:
        return None
    if "auto" in names:
        raise ProviderError(f"providers {providers!r}: 'auto' cannot be combined with provider names")
    return list(dict.fromkeys(names))


def _missing_message(missing: Sequence[str], available: Sequence[str]) -> str:
    """``"X, Y not available in this onnxruntime (available: [...])"``, with a spelling hint for
    names onnxruntime does not know at all."""
    ort = _ort()
    known = set(ort.get_all_providers()) if hasattr(ort, "get_all_providers") else set(missing)
    unknown = [p for p in missing if p not in known]
    hint = f"; {', '.join(unknown)} unknown to onnxruntime {ort.__version__}: check the spelling" if unknown else ""
    return f"{', '.join(missing)} not available in this onnxruntime (available: {list(available)}){hint}"


def select_providers(providers: str | Sequence[str], strict: bool = False) -> tuple[list[str], list[str]]:
    """Like :func:`resolve_providers`, without the warning: returns ``(to_try, missing)``, where
    ``missing`` are the requested names this onnxruntime lacks (empty for ``"auto"``), so that a
    caller can warn once with more context."""
    names = _provider_names(providers)
    available = _ort().get_available_providers()
    if names is None:
        chosen = [p for p in PROVIDER_PREFERENCE if p in available]
        if not chosen:
            raise ProviderError(f"none of {list(PROVIDER_PREFERENCE)} is available in this onnxruntime (available: {available})")
        return chosen, []
    chosen = [p for p in names if p in available]
    missing = [p for p in names if p not in available]
    if not chosen:
        raise ProviderError(f"none of the requested execution providers can run: {_missing_message(missing, available)}")
    if missing and strict:
        raise ProviderError(f"{_missing_message(missing, available)}; strict=True does not skip unavailable providers")
    return chosen, missing


def resolve_providers(providers: str | Sequence[str], strict: bool = False) -> list[str]:
    """Turn ``"auto"`` or a list of provider names into the ordered list to try.

    The semantics are ONNX Runtime's own (``InferenceSession(providers=...)``): an explicit list
    means "in this order, of those this onnxruntime build has", so one list such as
    ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` serves GPU servers and CPU laptops.

    Args:
        providers: ``"auto"`` keeps, of TensorRT > CUDA > CPU, those that this onnxruntime build
            reports. Otherwise a list of execution-provider names in order of preference; names
            this build lacks are dropped with one ``RuntimeWarning``. A string other than
            ``"auto"`` is a comma-separated list (``"CUDAExecutionProvider,CPUExecutionProvider"``,
            spaces around names ignored; one name is a one-element list), as the CLI's
            ``--providers`` takes it. Duplicates are dropped.
        strict: raise instead of dropping a listed provider this build lacks.

    Returns:
        The available providers, in the given order (never empty).

    Raises:
        ProviderError: the list is empty, holds a non-string or mixes ``"auto"`` with names; none
            of the listed providers is available (the message names the available ones); or
            ``strict`` and any listed provider is unavailable.
    """
    chosen, missing = select_providers(providers, strict=strict)
    if missing:
        warnings.warn(
            f"{_missing_message(missing, _ort().get_available_providers())}; using {chosen}", RuntimeWarning, stacklevel=2
        )
    return chosen


@dataclass(frozen=True)
class SessionOptions:
    """CPU-side options of every session (the CPU execution provider's knobs).

    Attributes:
        intra_op_num_threads: threads per operator; ``None`` lets ONNX Runtime use all cores.
        inter_op_num_threads: threads across operators (used with ``execution_mode="parallel"``).
        graph_optimization_level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
        execution_mode: ``"sequential"`` (one operator at a time: best for these linear graphs)
            or ``"parallel"``.
        allow_spinning: let idle intra-op threads spin after each run (ORT session config
            ``session.intra_op.allow_spinning``). Off by default: spinning threads take the
            cores from the image-decoding pool and the other graphs (docs/performance-notes.md,
            "Image decoding"); turn on for a dedicated inference process that calls back to back.
    """

    intra_op_num_threads: int | None = None
    inter_op_num_threads: int | None = None
    graph_optimization_level: str = "all"
    execution_mode: str = "sequential"
    allow_spinning: bool = False

    def __post_init__(self):
        for name in ("intra_op_num_threads", "inter_op_num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be >= 1, got {value}")
        if self.graph_optimization_level not in ("disable", "basic", "extended", "all"):
            raise InputError(f"graph_optimization_level {self.graph_optimization_level!r} is not one of disable, basic, extended, all")
        if self.execution_mode not in ("sequential", "parallel"):
            raise InputError(f"execution_mode {self.execution_mode!r} is not 'sequential' or 'parallel'")

    def build(self):
        ort = _ort()
        so = ort.SessionOptions()
        if self.intra_op_num_threads is not None:
            so.intra_op_num_threads = self.intra_op_num_threads
        if self.inter_op_num_threads is not None:
            so.inter_op_num_threads = self.inter_op_num_threads
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        so.execution_mode = (
            ort.ExecutionMode.ORT_SEQUENTIAL if self.execution_mode == "sequential" else ort.ExecutionMode.ORT_PARALLEL
        )
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.log_severity_level = 3
        return so


@dataclass(frozen=True)
class CUDAOptions:
    """CUDA execution provider options (names as ONNX Runtime's CUDA provider documents them).

    Attributes:
        device_id: GPU index.
        gpu_mem_limit_bytes: arena size limit; ``None`` is no limit.
        arena_extend_strategy: ``"kNextPowerOfTwo"`` or ``"kSameAsRequested"``.
        cudnn_conv_algo_search: ``"EXHAUSTIVE"`` (benchmark once per shape, fastest afterwards),
            ``"HEURISTIC"`` or ``"DEFAULT"``.
    """

    device_id: int = 0
    gpu_mem_limit_bytes: int | None = None
    arena_extend_strategy: str = "kNextPowerOfTwo"
    cudnn_conv_algo_search: str = "EXHAUSTIVE"

    def __post_init__(self):
        if self.device_id < 0:
            raise InputError(f"CUDA device_id must be >= 0, got {self.device_id}")
        if self.arena_extend_strategy not in ("kNextPowerOfTwo", "kSameAsRequested"):
            raise InputError(f"arena_extend_strategy {self.arena_extend_strategy!r} is not kNextPowerOfTwo or kSameAsRequested")
        if self.cudnn_conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
            raise InputError(f"cudnn_conv_algo_search {self.cudnn_conv_algo_search!r} is not EXHAUSTIVE, HEURISTIC or DEFAULT")

    def provider_options(self) -> dict[str, str]:
        opts = {
            "device_id": str(self.device_id),
            "arena_extend_strategy": self.arena_extend_strategy,
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "do_copy_in_default_stream": "1",
        }
        if self.gpu_mem_limit_bytes is not None:
            opts["gpu_mem_limit"] = str(self.gpu_mem_limit_bytes)
        return opts


@dataclass(frozen=True)
class TensorRTOptions:
    """TensorRT execution provider options.

    Attributes:
        device_id: GPU index.
        fp16 / int8: builder precision flags; ``None`` follows the bundle's precision.
        cache_dir: where engine and timing caches are kept (``None``: ``<bundle>/trt_cache``).
            Caching avoids rebuilding engines (minutes) at every start.
        workspace_bytes: builder workspace (``trt_max_workspace_size``), default 2 GiB.
        opt_batch_size: batch size the optimization profile is tuned for (``None``: half of the
            bundle's ``max_batch_size``, at least 1).
        opt_seq_len: sequence length the profile is tuned for (``None``: min(64, max_seq_len)).
    """

    device_id: int = 0
    fp16: bool | None = None
    int8: bool | None = None
    cache_dir: str | None = None
    workspace_bytes: int = 2 << 30
    opt_batch_size: int | None = None
    opt_seq_len: int | None = None

    def __post_init__(self):
        if self.workspace_bytes < 1 << 20:
            raise InputError(f"TensorRT workspace_bytes must be >= 1 MiB, got {self.workspace_bytes}")

    def provider_options(self, graph, precision: str, max_batch_size: int, max_seq_len: int, cache_dir: str | None) -> dict[str, str]:
        """Options for one graph; the optimization profile spans batch 1..max_batch_size and
        sequence 1..max_seq_len, so no new shape within the bundle's limits rebuilds an engine.

        Args:
            graph: the manifest entry of the graph (:class:`~fusionrt.bundle.GraphInfo`: its
                ``inputs`` with symbolic axes).
            precision: the graph's precision in the bundle (``fp32``, ``fp16``, ``int8``).
            cache_dir: the engine and timing caches' folder; ``None``: no cache (engines rebuilt at every start).
        """
        opt_batch = self.opt_batch_size or max(1, max_batch_size // 2)
        opt_seq = self.opt_seq_len or min(64, max_seq_len)
        sizes = {"batch": (1, opt_batch, max_batch_size), "sequence": (1, opt_seq, max_seq_len)}
        profiles = []
        for which in range(3):
            parts = []
            for tensor in graph.inputs:
                dims = [str(sizes[d][which]) if isinstance(d, str) else str(d) for d in tensor.shape]
                parts.append(f"{tensor.name}:{'x'.join(dims)}")
            profiles.append(",".join(parts))
        fp16 = self.fp16 if self.fp16 is not None else precision == "fp16"
        int8 = self.int8 if self.int8 is not None else precision == "int8"
        return {
            "device_id": str(self.device_id),
            "trt_fp16_enable": "1" if fp16 else "0",
            "trt_int8_enable": "1" if int8 else "0",
            "trt_engine_cache_enable": "1" if cache_dir else "0",
            "trt_engine_cache_path": cache_dir or "",
            "trt_timing_cache_enable": "1" if cache_dir else "0",
            "trt_timing_cache_path": cache_dir or "",
            "trt_max_workspace_size": str(self.workspace_bytes),
            "trt_profile_min_shapes": profiles[0],
            "trt_profile_opt_shapes": profiles[1],
            "trt_profile_max_shapes": profiles[2],
        }


@dataclass(frozen=True)
class EngineOptions:
    """All provider options of an :class:`~fusionrt.Engine`, typed (no loose dicts)."""

    cpu: SessionOptions = field(default_factory=SessionOptions)
    cuda: CUDAOptions = field(default_factory=CUDAOptions)
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)
    openvino: OpenVINOOptions = field(default_factory=OpenVINOOptions)

    def with_threads(self, threads: int | None) -> "EngineOptions":
        """These options with ``threads`` per operator on ONNX Runtime (``intra_op_num_threads``)
        and OpenVINO (``inference_num_threads``); ``None`` changes nothing."""
        if threads is None:
            return self
        return dataclasses.replace(
            self, cpu=dataclasses.replace(self.cpu, intra_op_num_threads=threads),
            openvino=dataclasses.replace(self.openvino, inference_num_threads=threads),
        )


_DEVICE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


class GraphChain:
    """Runs graphs in order; every graph input comes from the feed or an earlier graph's output.

    Tensors travel between graphs as ``OrtValue``s through IO binding: on CUDA the encoders'
    outputs stay on the device and feed the fusion head without a host round trip; only the
    requested outputs are copied to the host. On CPU the same path runs with CPU OrtValues.

    Args:
        sessions: graph name -> ``onnxruntime.InferenceSession``, in execution order.
        device_id: GPU index for device-resident outputs.
    """

    def __init__(self, sessions: Mapping[str, object], device_id: int = 0):
        self.sessions = dict(sessions)
        self.device_id = device_id
        self.input_names = {n: [i.name for i in s.get_inputs()] for n, s in self.sessions.items()}
        self.output_names = {n: [o.name for o in s.get_outputs()] for n, s in self.sessions.items()}
        self.devices = {n: _DEVICE.get(s.get_providers()[0], "cpu") for n, s in self.sessions.items()}

    @property
    def providers(self) -> dict[str, str]:
        """Graph name -> the execution provider it really runs on (first of the session's list)."""
        return {n: s.get_providers()[0] for n, s in self.sessions.items()}

    def run(self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run every graph.

        Args:
            feed: bundle inputs by name (host arrays).
            outputs: names to return as host arrays; ``None`` returns every tensor (feed included).
        """
        ort = _ort()
        values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}
        for name, session in self.sessions.items():
            binding = session.io_binding()
            for input_name in self.input_names[name]:
                binding.bind_ortvalue_input(input_name, values[input_name])
            device = self.devices[name]
            for output_name in self.output_names[name]:
                binding.bind_output(output_name, device, self.device_id if device != "cpu" else 0)
            session.run_with_iobinding(binding)
            values.update(zip(self.output_names[name], binding.get_outputs()))
        wanted = outputs if outputs is not None else list(values)
        # OrtValue.numpy() is a view of memory that dies with the OrtValue: copy what we return.
        return {k: np.array(values[k].numpy(), copy=True) for k in wanted}
