"""fusionrt: take a trained text+image classifier to production.

Export it to ONNX (:func:`fusionrt.export.export_bundle`), run it with ONNX Runtime or OpenVINO
(:class:`fusionrt.Engine`), serve it with Triton, benchmark it.

``import fusionrt`` is light: it imports neither torch nor onnxruntime. Heavy names resolve lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fusionrt.errors import (
    BundleError,
    CheckpointError,
    EngineClosedError,
    ExportError,
    ExportValidationError,
    FusionrtError,
    FusionrtInternalError,
    InputError,
    PeerUnavailableError,
    ProviderError,
    ServerError,
)

__version__ = "0.1.0"

_LAZY = {
    "MultimodalClassifier": "fusionrt.model.modeling",
    "MultimodalConfig": "fusionrt.model.config",
    "Engine": "fusionrt.engine.engine",
    "BatchingEngine": "fusionrt.engine.batching",
    "EngineOptions": "fusionrt.engine.session",
    "SessionOptions": "fusionrt.engine.session",
    "CUDAOptions": "fusionrt.engine.session",
    "TensorRTOptions": "fusionrt.engine.session",
    "OpenVINOOptions": "fusionrt.engine.openvino_runtime",
    "Placement": "fusionrt.engine.loaders",
    "Prediction": "fusionrt.prediction",
    "export_bundle": "fusionrt.export.exporter",
}

__all__ = [
    "BatchingEngine",
    "BundleError",
    "CUDAOptions",
    "EngineClosedError",
    "EngineOptions",
    "CheckpointError",
    "Engine",
    "ExportError",
    "ExportValidationError",
    "FusionrtError",
    "FusionrtInternalError",
    "InputError",
    "MultimodalClassifier",
    "MultimodalConfig",
    "OpenVINOOptions",
    "PeerUnavailableError",
    "Placement",
    "Prediction",
    "ProviderError",
    "ServerError",
    "SessionOptions",
    "TensorRTOptions",
    "export_bundle",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from fusionrt.engine.batching import BatchingEngine
    from fusionrt.engine.engine import Engine
    from fusionrt.engine.loaders import Placement
    from fusionrt.engine.openvino_runtime import OpenVINOOptions
    from fusionrt.prediction import Prediction
    from fusionrt.engine.session import CUDAOptions, EngineOptions, SessionOptions, TensorRTOptions
    from fusionrt.export.exporter import export_bundle
    from fusionrt.model.config import MultimodalConfig
    from fusionrt.model.modeling import MultimodalClassifier


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusionrt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
