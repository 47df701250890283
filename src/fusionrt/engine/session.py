"""ONNX Runtime sessions: execution-provider choice with fallback, and the chain of graphs.

Polygraphy-style: small loaders, a runner that executes the bundle's graphs in order and feeds
each graph by tensor name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from fusionrt.errors import BundleError, InputError, ProviderError

log = logging.getLogger("fusionrt.engine")

# Preference order of "auto" (best first).
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ProviderError(
            "onnxruntime is not installed: pip install 'fusionrt[cpu]' (or 'fusionrt[gpu]' on NVIDIA GPUs)"
        ) from None
    return onnxruntime


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """Turn ``"auto"`` or a list of provider names into the ordered list to try.

    ``"auto"`` keeps, of TensorRT > CUDA > CPU, those that this onnxruntime build reports.

    Raises:
        ProviderError: a named provider is unknown to this onnxruntime build.
    """
    available = _ort().get_available_providers()
    if isinstance(providers, str):
        if providers != "auto":
            providers = [providers]
        else:
            return [p for p in PROVIDER_PREFERENCE if p in available]
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ProviderError(f"execution provider(s) {unknown} not available in this onnxruntime; available: {available}")
    return list(providers)


@dataclass(frozen=True)
class SessionOptions:
    """CPU-side options of every session.

    Attributes:
        intra_op_num_threads: threads per operator; ``None`` lets ONNX Runtime use all cores.
        graph_optimization_level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
    """

    intra_op_num_threads: int | None = None
    graph_optimization_level: str = "all"

    def __post_init__(self):
        if self.intra_op_num_threads is not None and self.intra_op_num_threads < 1:
            raise InputError(f"intra_op_num_threads must be >= 1, got {self.intra_op_num_threads}")
        if self.graph_optimization_level not in ("disable", "basic", "extended", "all"):
            raise InputError(f"graph_optimization_level {self.graph_optimization_level!r} is not one of disable, basic, extended, all")

    def build(self):
        ort = _ort()
        so = ort.SessionOptions()
        if self.intra_op_num_threads is not None:
            so.intra_op_num_threads = self.intra_op_num_threads
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        so.log_severity_level = 3
        return so


def create_session(path: str | os.PathLike, providers: Sequence[str], options: SessionOptions, strict: bool = False):
    """Create an ``InferenceSession``, falling back along ``providers`` when one fails to initialize.

    Raises:
        ProviderError: ``strict`` and the first provider failed, or every provider failed.
    """
    ort = _ort()
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    errors = []
    for i, provider in enumerate(providers):
        try:
            return ort.InferenceSession(str(path), sess_options=options.build(), providers=list(providers[i:]))
        except (state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile) as exc:
            # The file itself is bad: no other provider would read it either.
            raise BundleError(f"graph file {path} cannot be loaded: {exc}") from None
        except Exception as exc:  # onnxruntime raises its own untyped errors
            errors.append(f"{provider}: {exc}")
            if strict:
                raise ProviderError(f"{provider} failed to create a session for {path}: {exc}") from exc
            log.warning("%s failed for %s (%s); falling back to %s", provider, path, exc, providers[i + 1 : i + 2])
    raise ProviderError(f"no execution provider could load {path}: " + "; ".join(errors))


class GraphChain:
    """Runs graphs in order; every graph input comes from the feed or an earlier graph's output.

    Args:
        sessions: graph name -> ``onnxruntime.InferenceSession``, in execution order.
    """

    def __init__(self, sessions: Mapping[str, object]):
        self.sessions = dict(sessions)
        self.input_names = {n: [i.name for i in s.get_inputs()] for n, s in self.sessions.items()}

    @property
    def providers(self) -> dict[str, str]:
        """Graph name -> the execution provider it really runs on (first of the session's list)."""
        return {n: s.get_providers()[0] for n, s in self.sessions.items()}

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run every graph; returns all tensors (the feed and every graph's outputs) by name."""
        env = dict(feed)
        for name, session in self.sessions.items():
            names = [o.name for o in session.get_outputs()]
            values = session.run(names, {k: env[k] for k in self.input_names[name]})
            env.update(zip(names, values))
        return env
