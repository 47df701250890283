"""The table of runtimes: a runtime kind (``"onnxruntime"``, ``"openvino"``) -> how it is built
from graph files, their bundle precisions and typed options. A new runtime is a new entry here and
a new :class:`~fusionrt.engine.runtime.Runtime` module, never a branch on a name elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from fusionrt.engine.loaders import ONNXRUNTIME, OPENVINO
from fusionrt.engine.openvino_runtime import OpenVINORuntime
from fusionrt.engine.ort_runtime import OnnxRuntime
from fusionrt.engine.runtime import Runtime, runtime_per_graph
from fusionrt.engine.session import EngineOptions
from fusionrt.errors import FusionrtInternalError


@dataclass(frozen=True)
class Providers:
    """The ONNX Runtime side of a build: execution providers and their per-graph options.

    Attributes:
        names: execution providers to try, in order (already resolved against this build).
        options: graph -> provider name -> that provider's options.
        strict: raise instead of falling back when a provider fails to initialize.
    """

    names: Sequence[str] = ("CPUExecutionProvider",)
    options: Mapping[str, Mapping[str, dict]] = field(default_factory=dict)
    strict: bool = False


def _onnxruntime(paths, precisions, options: EngineOptions, providers: Providers) -> Runtime:
    return OnnxRuntime(paths, providers.names, options.cpu, providers.options, providers.strict, options.cuda.device_id, precisions)


def _openvino(paths, precisions, options: EngineOptions, providers: Providers) -> Runtime:
    return OpenVINORuntime(paths, precisions, options.openvino)


RUNTIMES: dict[str, Callable[..., Runtime]] = {ONNXRUNTIME: _onnxruntime, OPENVINO: _openvino}


def build_runtime(
    paths: Mapping[str, str | os.PathLike],
    precisions: Mapping[str, str],
    kinds: Mapping[str, str] | str,
    options: EngineOptions | None = None,
    providers: Providers | None = None,
) -> Runtime:
    """The (inactive) runtime of some graphs: one runtime when all run on one kind, else a
    :class:`~fusionrt.engine.runtime.MixedRuntime` chaining them.

    Args:
        paths: graph -> file, in execution order.
        precisions: graph -> its bundle precision (``fp32``, ``bf16``, ``int8``, ...).
        kinds: graph -> runtime kind (a key of :data:`RUNTIMES`), or one kind for every graph.
        options: typed options of every runtime (default :class:`EngineOptions()`).
        providers: ONNX Runtime's providers (default: the CPU execution provider).

    Raises:
        FusionrtInternalError: a kind that is not in :data:`RUNTIMES`.
    """
    kinds = dict.fromkeys(paths, kinds) if isinstance(kinds, str) else dict(kinds)
    unknown = sorted(set(kinds.values()) - set(RUNTIMES))
    if unknown:
        raise FusionrtInternalError(f"no runtime {unknown}; known: {sorted(RUNTIMES)}")
    options = options or EngineOptions()
    providers = providers or Providers()

    def make(kind: str, group: dict) -> Runtime:
        return RUNTIMES[kind](group, {g: precisions.get(g, "fp32") for g in group}, options, providers)

    return runtime_per_graph(paths, kinds, make)
