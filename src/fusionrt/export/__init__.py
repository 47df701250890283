"""Export: checkpoint -> validated ONNX bundle. Importing this package does not import torch;
:func:`export_bundle` does. Names resolve lazily, so that the engine's use of
``fusionrt.export.recipes`` (the targets a manifest may name) does not load the exporter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ExportOptions", "export_bundle"]

if TYPE_CHECKING:  # pragma: no cover  (``X as X``: re-exported names, PEP 484)
    from fusionrt.export.exporter import ExportOptions as ExportOptions, export_bundle as export_bundle


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fusionrt.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'fusionrt.export' has no attribute {name!r}")
