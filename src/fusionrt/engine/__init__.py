"""Runtime: ONNX Runtime sessions and the :class:`Engine` (torch-free)."""

from fusionrt.engine.batching import BatchingEngine, EngineClosedError
from fusionrt.engine.engine import Engine, Prediction, softmax
from fusionrt.engine.session import CUDAOptions, EngineOptions, GraphChain, SessionOptions, TensorRTOptions, resolve_providers

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
