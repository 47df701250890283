"""Runtime: the :class:`Engine` and the runtimes it runs bundles on, ONNX Runtime and OpenVINO (torch-free)."""

from fusionrt.engine.batching import BatchingEngine
from fusionrt.engine.engine import Engine, Prediction, softmax
from fusionrt.engine.loaders import Placement
from fusionrt.engine.openvino_runtime import OpenVINOOptions
from fusionrt.engine.session import CUDAOptions, EngineOptions, GraphChain, SessionOptions, TensorRTOptions, resolve_providers
from fusionrt.errors import EngineClosedError  # re-exported: BatchingEngine raises it

__all__ = [
    "BatchingEngine",
    "CUDAOptions",
    "Engine",
    "EngineClosedError",
    "EngineOptions",
    "GraphChain",
    "OpenVINOOptions",
    "Placement",
    "Prediction",
    "SessionOptions",
    "TensorRTOptions",
    "resolve_providers",
    "softmax",
]
