"""Runtime: ONNX Runtime sessions and the :class:`Engine` (torch-free)."""

from fusionrt.engine.batching import BatchingEngine
from fusionrt.engine.engine import Engine, Prediction, softmax
from fusionrt.engine.session import CUDAOptions, EngineOptions, GraphChain, SessionOptions, TensorRTOptions, resolve_providers
from fusionrt.errors import EngineClosedError  # re-exported: BatchingEngine raises it

__all__ = [
    "BatchingEngine",
    "CUDAOptions",
    "Engine",
    "EngineClosedError",
    "EngineOptions",
    "GraphChain",
    "Prediction",
    "SessionOptions",
    "TensorRTOptions",
    "resolve_providers",
    "softmax",
]
