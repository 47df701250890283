"""Checkpoint -> bundle: ONNX export of the three graphs, validation against PyTorch, manifest.

Each graph is described declaratively (optimum-style): its inputs and outputs with symbolic axes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusionrt.bundle import FORMAT_VERSION, GRAPHS, MANIFEST, PREPROCESSOR_CONFIG, TOKENIZER_DIR, sha256_file
from fusionrt.errors import ExportError, InputError
from fusionrt.utils import atomic_directory

PRECISIONS = ("fp32",)
TARGETS = ("cpu", "cuda", "tensorrt")
# ir_version 10 is what the 2024 onnxruntime backend of Triton (ORT 1.19/1.20) loads.
MAX_IR_VERSION = 10


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: ONNX input/output names with their symbolic axes."""

    name: str
    inputs: dict
    outputs: dict


GRAPH_SPECS = {
    "text_encoder": GraphSpec(
        "text_encoder",
        inputs={k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask", "token_type_ids")},
        outputs={"text_features": {0: "batch", 1: "sequence"}},
    ),
    "image_encoder": GraphSpec(
        "image_encoder", inputs={"pixel_values": {0: "batch"}}, outputs={"image_features": {0: "batch"}}
    ),
    "fusion_head": GraphSpec(
        "fusion_head",
        inputs={
            "text_features": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "image_features": {0: "batch"},
        },
        outputs={"logits": {0: "batch"}, "modality_weights": {0: "batch"}},
    ),
}


@dataclass(frozen=True)
class ExportOptions:
    """Options of :func:`export_bundle`.

    Attributes:
        precision: ``fp32`` (FP16 and INT8 come with the optimized export).
        opset: ONNX opset of the exported graphs (17: widest runtime support incl. Triton 2024).
        target: execution target recorded in the manifest: ``cpu``, ``cuda`` or ``tensorrt``.
        max_batch_size: largest batch the bundle is meant to serve (manifest, Triton config).
        tolerance: max absolute error per output allowed against PyTorch FP32.
        validate: run the validation (turning it off is for debugging only).
        validation_batch_sizes / validation_seq_lens: the synthetic validation grid; the
            sequence length ``0`` stands for the checkpoint's ``max_seq_len``.
    """

    precision: str = "fp32"
    opset: int = 17
    target: str = "cpu"
    max_batch_size: int = 32
    tolerance: dict = field(default_factory=lambda: {"logits": 1e-4, "modality_weights": 1e-4})
    validate: bool = True
    validation_batch_sizes: tuple = (1, 3, 8)
    validation_seq_lens: tuple = (1, 17, 0)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision!r} is not supported; choose from {list(PRECISIONS)}")
        if self.target not in TARGETS:
            raise InputError(f"--target {self.target!r} is not one of {list(TARGETS)}")
        if not 14 <= self.opset <= 20:
            raise InputError(f"--opset {self.opset} is outside the supported range 14-20")
        if self.max_batch_size < 1:
            raise InputError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")


def _export_graph(module, args: tuple, spec: GraphSpec, path: Path, opset: int) -> None:
    import torch

    dynamic_axes = {**spec.inputs, **spec.outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    model = onnx.load(str(path))
    # Axes not declared dynamic are static: write their sizes (the tracer sometimes leaves names).
    with torch.inference_mode():
        example = module(*args)
    example = example if isinstance(example, tuple) else (example,)
    for value, tensor, axes in zip(model.graph.output, example, spec.outputs.values()):
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if i not in axes:
                dim.dim_value = int(tensor.shape[i])
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _graph_modules(model):
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m.encode_text(input_ids, attention_mask, token_type_ids)

    class ImageEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m.encode_image(pixel_values)

    # eval() on the wrappers too: the exporter restores each module's mode after tracing.
    return {
        "text_encoder": TextEncoder(model).eval(),
        "image_encoder": ImageEncoder(model).eval(),
        "fusion_head": model.head.eval(),
    }


def describe_graph(path: Path) -> dict:
    """Manifest entry of one graph: file, sha256, inputs/outputs (name, dtype, shape), fused_ops."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def io(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape})
        return out

    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "fused_ops": fused_op_counts(model),
    }


# Op types that only exist as the result of fusion (ONNX Runtime contrib ops and ONNX fusions).
FUSED_OP_TYPES = (
    "Attention", "MultiHeadAttention", "QAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
    "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "GemmFastGelu", "BiasSplitGelu",
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "FusedConv", "FusedMatMul",
)


def fused_op_counts(model) -> dict[str, int]:
    """Count the fused op types (see ``FUSED_OP_TYPES``) in an ONNX model."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in FUSED_OP_TYPES:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _versions() -> dict:
    import onnx
    import torch
    import transformers

    from fusionrt import __version__

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "fusionrt": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort_version,
    }


def export_bundle(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    options: ExportOptions = ExportOptions(),
    progress: bool = True,
) -> Path:
    """Export a checkpoint to a validated bundle directory.

    The bundle is built in a temporary sibling of ``output`` and moved into place only when export
    and validation succeed: a failed or interrupted export leaves ``output`` as it was.

    Args:
        checkpoint: checkpoint directory (``config.json``, ``model.safetensors``, tokenizer,
            ``preprocessor_config.json``; ``heldout.jsonl`` is used for validation when present).
        output: bundle directory to write (an existing bundle there is replaced).
        options: see :class:`ExportOptions`.

    Returns:
        The bundle path.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        ExportValidationError: the bundle does not match PyTorch within ``options.tolerance``;
            every failed check is listed.
        ExportError: ``output`` exists and is not a bundle.
    """
    import torch

    from fusionrt.export.validate import validate_bundle_graphs
    from fusionrt.model.checkpoint import TOKENIZER_FILES, load_checkpoint

    output = Path(output)
    if output.exists() and not (output / MANIFEST).is_file() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"{output} exists and is not a fusionrt bundle; choose another -o/--output")
    started = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)  # the reference, with transformers' default attention
    # The exported copy uses explicit attention kernels: the form ONNX Runtime's optimizer fuses.
    model = load_checkpoint(checkpoint, attn_implementation="eager").model.eval()
    config = ckpt.config

    gen = torch.Generator().manual_seed(0)
    h, w = ckpt.image_processor.output_hw
    b, s = 2, min(8, config.max_seq_len)
    vocab = int(config.text_config.get("vocab_size", 100))
    ids = torch.randint(0, vocab, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.int64)
    types = torch.zeros(b, s, dtype=torch.int64)
    pixels = torch.randn(b, 3, h, w, generator=gen)
    modules = _graph_modules(model)
    with torch.inference_mode():
        text_features = model.encode_text(ids, mask, types)
        image_features = model.encode_image(pixels)
    args = {
        "text_encoder": (ids, mask, types),
        "image_encoder": (pixels,),
        "fusion_head": (text_features, mask, image_features),
    }

    with atomic_directory(output) as tmp:
        with torch.no_grad():
            for name in GRAPHS:
                _export_graph(modules[name], args[name], GRAPH_SPECS[name], tmp / f"{name}.onnx", options.opset)

        tok_dir = tmp / TOKENIZER_DIR
        ckpt.tokenizer.save(tok_dir)  # truncation = max_seq_len, padding = longest
        for extra in TOKENIZER_FILES[1:]:
            if (ckpt.path / extra).is_file():
                shutil.copyfile(ckpt.path / extra, tok_dir / extra)
        (tmp / PREPROCESSOR_CONFIG).write_text(json.dumps(ckpt.image_processor.to_dict(), indent=2))

        validation = None
        if options.validate:
            validation = validate_bundle_graphs(
                tmp, ckpt, {name: tmp / f"{name}.onnx" for name in GRAPHS}, options, progress=progress
            )
        import onnx

        first = onnx.load(str(tmp / "text_encoder.onnx"), load_external_data=False)
        manifest = {
            "format_version": FORMAT_VERSION,
            "precision": {name: options.precision for name in GRAPHS},
            "target": options.target,
            "exporter": "torch.onnx (TorchScript)",
            "opset": options.opset,
            "ir_version": int(first.ir_version),
            "graphs": {name: describe_graph(tmp / f"{name}.onnx") for name in GRAPHS},
            "max_batch_size": options.max_batch_size,
            "max_seq_len": config.max_seq_len,
            "labels": config.labels,
            "preprocessor": ckpt.image_processor.to_dict(),
            "validation": validation,
            "export_options": {k: v for k, v in asdict(options).items()},
            "export_seconds": round(time.perf_counter() - started, 1),
            "versions": _versions(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return output
