"""Runtime: ONNX Runtime sessions and the :class:`Engine` (torch-free)."""

from fusionrt.engine.engine import Engine, Prediction, softmax
from fusionrt.engine.session import GraphChain, SessionOptions, resolve_providers

__all__ = ["Engine", "GraphChain", "Prediction", "SessionOptions", "resolve_providers", "softmax"]
