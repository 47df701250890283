"""The ONNX Runtime runtime: one ``InferenceSession`` per graph on the chosen execution providers,
chained through IO binding (:class:`~fusionrt.engine.session.GraphChain`)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from fusionrt.engine.loaders import ONNXRUNTIME, Placement, ort_session
from fusionrt.engine.runtime import Runtime
from fusionrt.engine.session import GraphChain, SessionOptions


class OnnxRuntime(Runtime):
    """Runs the graphs with ONNX Runtime.

    Args:
        paths: graph name -> ONNX file, in execution order.
        providers: execution providers to try, in order (already resolved against this build).
        session_options: the CPU-side session options.
        provider_options: graph name -> provider name -> that provider's options.
        strict: raise instead of falling back when a provider fails to initialize.
        device_id: GPU index for device-resident tensors between graphs.
        precisions: graph name -> its bundle precision (for :attr:`placements`; default ``fp32``).
    """

    name = "onnxruntime"

    def __init__(
        self,
        paths: Mapping[str, str | os.PathLike],
        providers: Sequence[str],
        session_options: SessionOptions,
        provider_options: Mapping[str, Mapping[str, dict]] | None = None,
        strict: bool = False,
        device_id: int = 0,
        precisions: Mapping[str, str] | None = None,
    ):
        super().__init__(list(paths))
        self.paths = dict(paths)
        self.providers = list(providers)
        self.session_options = session_options
        self.provider_options = dict(provider_options or {})
        self.strict = strict
        self.device_id = device_id
        self.precisions = dict(precisions or {})
        self.chain: GraphChain | None = None

    def activate_impl(self) -> None:
        sessions = {
            name: ort_session(path, self.session_options, self.providers, self.provider_options.get(name), self.strict,
                              self.precisions.get(name))
            for name, path in self.paths.items()
        }
        self.chain = GraphChain(sessions, self.device_id)
        self.input_names, self.output_names = self.chain.input_names, self.chain.output_names

    def deactivate_impl(self) -> None:
        self.chain = None  # the sessions are freed with it

    def infer_impl(self, feed, outputs):
        return self.chain.run(feed, outputs)  # IO binding: device tensors stay on the device

    def infer_graph_impl(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names[graph], self.chain.sessions[graph].run(None, feed)))

    def placements_impl(self) -> dict[str, Placement]:
        return {g: Placement(ONNXRUNTIME, provider, self.precisions.get(g, "fp32")) for g, provider in self.chain.providers.items()}
