"""Graph passes applied after the raw export: attention fusion, FP16 conversion, INT8 quantization.

Order matters: fuse first, then change precision (quantized graphs no longer match the fusion
patterns). Every pass reads one ONNX file and writes another.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fusionrt.errors import ExportError, InputError

log = logging.getLogger("fusionrt.export")

# Op types that run one whole attention block (fused, or fused and quantized).
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "QAttention", "QOrderedAttention", "PackedAttention")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FP16_MAX = 65504.0


# Op types that only exist as the result of fusion or quantization (ONNX Runtime contrib ops and
# ONNX fusions): the manifest's ``fused_ops``.
FUSED_OP_TYPES = (
    *ATTENTION_OPS, "EmbedLayerNormalization", "SkipLayerNormalization", "LayerNormalization", "BiasGelu",
    "FastGelu", "Gelu", "QuickGelu", "GemmFastGelu", "BiasSplitGelu", "QLinearConv", "QLinearMatMul",
    "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FusedConv", "FusedMatMul",
    "QuantizeLinear", "DequantizeLinear",
)


def op_counts(model, op_types: Iterable[str]) -> dict[str, int]:
    """How many nodes of each of ``op_types`` an ONNX model has (types absent from it omitted).

    Args:
        model: an ``onnx.ModelProto`` or the path of an ONNX file.
    """
    if isinstance(model, (str, os.PathLike)):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    wanted = set(op_types)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in wanted:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def check_attention_fused(graph: str, path: str | os.PathLike, expected_blocks: int) -> int:
    """Raise when the number of fused attention ops differs from the number of attention blocks.

    Raises:
        ExportError: naming the graph, the expected and the found counts.
    """
    found = sum(op_counts(path, ATTENTION_OPS).values())
    if found != expected_blocks:
        raise ExportError(
            f"graph {graph!r}: {found} fused attention op(s) ({'/'.join(ATTENTION_OPS)}) for {expected_blocks} "
            "attention block(s); refusing to ship a silently unfused graph. The text encoder must be "
            "exported with eager attention (SDPA matches none of ONNX Runtime's fusion patterns)"
        )
    return found


def fuse_text_encoder(src: Path, dst: Path, num_heads: int, hidden_size: int, gelu_approximation: bool,
                      model_type: str = "bert") -> dict:
    """ONNX Runtime transformer optimizer on an encoder graph: Attention, EmbedLayerNormalization,
    SkipLayerNormalization, BiasGelu (FastGelu with ``gelu_approximation``), as far as the
    patterns of ``model_type`` (the family row's ``optimizer_model_type``: ``bert``, ``vit``) match.

    Returns:
        The fusion options used (for the manifest).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.enable_gelu_approximation = gelu_approximation
    # The (batch, seq) mask itself, not the per-row lengths ("mask index") that BERT's default
    # computes: lengths assume right padding, so left padding and masks with holes answered wrongly
    # (ONNX Runtime #18945).
    options.use_raw_attention_mask(True)
    # opt_level 0: only the Python fusions; ONNX Runtime's own provider-specific rewrites stay at
    # session creation, so the file runs on any provider.
    model = optimize_model(
        str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0,
        optimization_options=options,
    )
    model.save_model_to_file(str(dst))
    return {"model_type": model_type, "opt_level": 0, "enable_gelu_approximation": options.enable_gelu_approximation}


def _clamp_fp16_constants(model) -> int:
    """Clamp float32 constants beyond float16's range (e.g. an attention-mask fill value of
    float32 min) to +-65504, so conversion never creates +-inf. Returns how many were clamped."""
    from onnx import numpy_helper

    clamped = 0
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    for t in tensors:
        if t.data_type != 1:  # FLOAT
            continue
        array = numpy_helper.to_array(t)
        over = np.abs(array) > FP16_MAX
        if over.any():
            clamped += int(over.sum())
            t.CopyFrom(numpy_helper.from_array(np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float32), t.name))
    return clamped


# Ops kept in float32 on top of onnxruntime's default block list: softmax and reductions, whose
# float16 accumulation loses accuracy. (Blocking the fused LayerNorm ops instead makes the converter
# emit mixed-type Attention nodes that fail to load.)
FP16_EXTRA_BLOCK_LIST = ("Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Div")


def to_fp16(src: Path, dst: Path) -> dict:
    """float16 weights and compute, float32 graph inputs and outputs (keep_io_types)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    clamped = _clamp_fp16_constants(model)
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_EXTRA_BLOCK_LIST))
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=block, disable_shape_infer=False)
    onnx.save(model, str(dst))
    return {"keep_io_types": True, "op_block_list": list(FP16_EXTRA_BLOCK_LIST), "clamped_constants": clamped}


def quantize_dynamic_int8(src: Path, dst: Path, reduce_range: bool) -> dict:
    """Dynamic INT8 (weights S8 per tensor, activations U8 scaled per batch at run time).

    quant_pre_process runs first, as for static INT8 (ONNX shape inference and ORT's basic graph
    optimization), which also keeps ONNX Runtime's "consider pre-processing" warning out of the
    output. Its shape inference cannot type the outputs of the fused contrib ops ("Unable to find
    data type for weight_name ..."): ``DefaultTensorType`` FLOAT gives those tensors a type, on
    purpose.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # as quantize_static_int8
        quantize_dynamic(
            str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=False, reduce_range=reduce_range,
            op_types_to_quantize=["MatMul", "Attention", "Gemm"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {"mode": "dynamic", "weight_type": "int8", "activation_type": "uint8", "reduce_range": reduce_range}


class FeedReader:
    """An onnxruntime ``CalibrationDataReader`` over a list of feeds, keeping the graph's inputs."""

    def __init__(self, feeds: list[dict], input_names: list[str]):
        self._feeds = [{k: f[k] for k in input_names} for f in feeds]
        self._it: Iterator[dict] = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


def _type_contrib_outputs(path: Path) -> int:
    """Declare float32 the outputs of com.microsoft ops that ONNX shape inference left untyped.

    ONNX Runtime's calibrator only records tensors whose type it knows, and ONNX shape inference does
    not know the contrib ops of a fused graph (Attention, SkipLayerNormalization, BiasGelu, ...): the
    MatMuls behind them would get INT8 weights but float activations. Every output of these ops
    here is float32 except EmbedLayerNormalization's second (the int32 mask index). Returns how
    many value_infos were added.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    known = {v.name for v in (*graph.value_info, *graph.input, *graph.output)} | {t.name for t in graph.initializer}
    added = 0
    for node in graph.node:
        if node.domain != "com.microsoft":
            continue
        for i, name in enumerate(node.output):
            if name and name not in known:
                int32 = node.op_type == "EmbedLayerNormalization" and i == 1
                graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.INT32 if int32 else TensorProto.FLOAT, None))
                added += 1
    if added:
        onnx.save(model, str(path))
    return added


# the ops of an in-graph pixel normalization (uint8 (B, H, W, 3) -> layout, float, * scale + shift)
PIXEL_PREAMBLE_OPS = ("Transpose", "Cast", "Mul", "Add", "Sub", "Div")


def pixel_preamble(model) -> list[str]:
    """Names of the nodes that normalize a graph's uint8 inputs before its first weighted op.

    Walks forward from every ``uint8`` graph input through :data:`PIXEL_PREAMBLE_OPS` (the
    exporter's ``--pixels uint8`` wrapper: Transpose, Cast, Mul by ``rescale / std``, Add of
    ``-mean / std``) and stops at the first other op (the encoder's Pad or Conv). Static INT8
    leaves these in float: quantized, ONNX Runtime runs them as QLinearMul/QLinearAdd over the
    whole image, 124 of the uint8 graph's 319 ms at batch 8 (docs/performance-notes.md); the
    first Conv's input is quantized after them as before.

    Args:
        model: an ``onnx.ModelProto``.

    Returns:
        Node names in graph order (empty for graphs without a uint8 input).
    """
    import onnx

    frontier = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    names = []
    for node in model.graph.node:  # topologically sorted, as ONNX requires
        if node.op_type in PIXEL_PREAMBLE_OPS and any(name in frontier for name in node.input):
            names.append(node.name)
            frontier.update(node.output)
    return names


def quantize_static_int8(src: Path, dst: Path, feeds: list[dict], method: str, reduce_range: bool, op_types=None,
                         image: bool = False) -> dict:
    """Static INT8 in QDQ format: per-channel S8 weights, U8 activations with ranges calibrated on
    ``feeds`` (quant_pre_process first: shape inference and graph optimization).

    The activation scales are constants of the graph, so an item's answer depends neither on its
    padding nor on the other items of its batch (dynamic INT8 computes them per batch).

    An image encoder (``image``) gets two more steps, measured on the default's EfficientNet-Lite0
    (docs/performance-notes.md): with depthwise convolutions, its high-resolution front stays float
    (:func:`fusionrt.export.rounding.float_front`; the activations' Clip nodes are then kept, as
    ONNX Runtime's optimizer drops the Q/DQ pair that stands for a removed Clip around a float
    Conv); and its conv weights are rounded by GPTQ on the calibration feeds
    (:func:`fusionrt.export.rounding.gptq_round`) instead of to the nearest step.

    Args:
        op_types: op types to quantize (``None``: every type the QDQ quantizer supports).
        image: ``src`` is an image encoder (the float front and GPTQ rounding above).

    Returns:
        The graph's INT8 recipe for the manifest.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fusionrt.export import rounding

    if method not in CALIBRATION_METHODS:
        raise InputError(f"--calibration-method {method!r} is not one of {list(CALIBRATION_METHODS)}")
    model = onnx.load(str(src), load_external_data=False)
    names = [i.name for i in model.graph.input]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # ONNX shape inference only: the symbolic one fails on BERT graphs and drops a temp file in cwd.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        _type_contrib_outputs(pre)
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        if method == "percentile":
            extra["CalibPercentile"] = 99.999
        preprocessed = onnx.load(str(pre))
        front = rounding.float_front(preprocessed) if image else []
        if front:
            extra["QDQKeepRemovableActivations"] = True
        quantize_static(
            str(pre), str(dst), FeedReader(feeds, names),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            op_types_to_quantize=op_types, nodes_to_exclude=pixel_preamble(preprocessed) + front,
            extra_options=extra,
        )
        rounded = rounding.gptq_round(pre, dst, feeds) if image and not reduce_range else 0
    recipe = {
        "mode": "static", "format": "QDQ", "per_channel": True, "weight_type": "int8", "activation_type": "uint8",
        "calibration_method": method, "reduce_range": reduce_range,
        "weight_rounding": f"gptq ({rounded} convs)" if rounded else "nearest",
    }
    if front:
        recipe["float_nodes"] = f"{len(front)} nodes reading maps >= {rounding.FRONT_SIDE_FRACTION} of the image side"
    return recipe
