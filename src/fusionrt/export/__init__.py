"""Export: checkpoint -> validated ONNX bundle. Importing this package does not import torch;
:func:`export_bundle` does."""

from fusionrt.export.exporter import ExportOptions, export_bundle

__all__ = ["ExportOptions", "export_bundle"]
