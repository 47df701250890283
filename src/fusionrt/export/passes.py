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
PIXEL_PREAMBLE_OPS = ("Transpose", "Pad", "Cast", "Mul", "Add", "Sub", "Div")


def pixel_preamble(model) -> list[str]:
    """Names of the nodes that normalize a graph's uint8 inputs before its first weighted op.

    Walks forward from every ``uint8`` graph input through :data:`PIXEL_PREAMBLE_OPS` (the
    exporter's ``--pixels uint8`` wrapper as :func:`fold_pixel_normalization` leaves it: Transpose,
    a uint8 Pad, Cast, a per-channel Sub; or unfolded: Transpose, Cast, Mul by ``rescale / std``,
    Add of ``-mean / std``, the encoder's Pad) and stops at the first other op (the Conv). Static
    INT8 leaves these in float: quantized, ONNX Runtime runs a Mul and Add as QLinearMul and
    QLinearAdd over the whole image, 124 of an unfolded uint8 graph's 319 ms at batch 8
    (docs/performance-notes.md).

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


# the first Conv's input after the uint8 wrapper: Transpose?, Cast, Mul by scale, Add shift, Pad?
_WRAPPER_CHAIN = ("Cast", "Mul", "Add")


def _constant(graph, name: str):
    """The value of ``name`` when it is an initializer or a Constant node's output, else ``None``."""
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), None)
    return None


def _per_channel(value) -> np.ndarray | None:
    """A ``(3,) float64`` view of a constant that broadcasts per channel over ``(B, 3, H, W)``."""
    if value is None:
        return None
    value = np.asarray(value, np.float64)
    if value.size == 1:
        return np.full(3, float(value.reshape(())))
    shape = (1,) * max(0, 3 - value.ndim) + value.shape
    return value.reshape(3) if value.size == 3 and shape[-3:] == (3, 1, 1) else None


def _pixel_stem(graph):
    """The uint8 wrapper's nodes and the first Conv: ``(cast, mul, add, pad or None, conv)`` when
    the graph has exactly that chain, each tensor read by the next node only (and the normalized
    pixels by Shape ops too: ViT's size check); else ``None``."""
    inputs = [i.name for i in graph.input if i.type.tensor_type.elem_type == 2]  # UINT8
    if len(inputs) != 1:
        return None
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_reader(name: str, shapes_too: bool = False):
        found = [n for n in readers.get(name, []) if not (shapes_too and n.op_type == "Shape")]
        return found[0] if len(found) == 1 and name not in outputs else None

    node = only_reader(inputs[0])
    if node is not None and node.op_type == "Transpose":
        node = only_reader(node.output[0])
    chain = []
    for op in (*_WRAPPER_CHAIN, "Pad", "Conv"):
        if node is not None and node.op_type == op:
            chain.append(node)
            node = only_reader(node.output[0], shapes_too=op == "Add") if op != "Conv" else None
        elif op == "Pad":
            chain.append(None)
        else:
            return None
    return tuple(chain)


def _attribute(node, name: str, default=None):
    from fusionrt.export.rounding import node_attributes

    return node_attributes(node).get(name, default)


def _spatial_pads(graph, pad, conv) -> np.ndarray | None:
    """``(top, left, bottom, right)`` zeros padded around the normalized image by the stem's Pad
    and Conv together, or ``None`` when the padding is anything else (another mode or value,
    ``auto_pad``, padded batch or channel axes)."""
    if _attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or _attribute(conv, "group", 1) != 1:
        return None
    total = np.asarray(_attribute(conv, "pads", [0, 0, 0, 0]), np.int64)
    if pad is None:
        return total
    pads = _constant(graph, pad.input[1]) if len(pad.input) > 1 else None
    value = _constant(graph, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
    mode = _attribute(pad, "mode", b"constant")
    if pads is None or pads.shape != (8,) or len(pad.input) > 3 or value is None or mode not in (b"constant", "constant"):
        return None
    if np.any(pads[[0, 1, 4, 5]] != 0) or float(np.asarray(value).reshape(())) != 0.0:
        return None
    return total + pads[[2, 3, 6, 7]]


def fold_pixel_normalization(src: Path, dst: Path) -> dict:
    """Fold a uint8 image graph's normalization (``x * scale + shift`` per channel, the
    exporter's ``--pixels uint8`` wrapper) into its first Conv, exactly, where it can.

    ``Conv(x * s + t, W) + b = Conv(x, W * s) + (b + sum(W * t))`` away from the border; at the
    border the Conv (or the Pad before it) pads with the *normalized* zero, which is the raw pixel
    ``r = -t / s``. Per case, on the ``(B, 3, H, W)`` pixels after the uint8 Transpose:

    - no padding (ViT's patch embedding, ConvNeXt's stem): Cast, the folded Conv.
    - padding, ``r`` one integer for all channels (EfficientNet-Lite0: mean 127/255, std 128/255,
      r = 127): Pad of the uint8 pixels with ``r``, Cast, the folded Conv.
    - padding, ``r`` one non-integer value: Cast, Pad with ``r``, the folded Conv.
    - padding, ``r`` per channel (ResNet's ImageNet mean and std): Cast, Sub ``r``, then the Conv
      with ``W * s`` and its own zero padding (an ONNX Pad takes one scalar value, not one per
      channel), so one elementwise op over the image stays.

    A whole-image Mul and Add cost ONNX Runtime more than the numpy normalization they replace
    (docs/performance-notes.md, "Folding the pixel normalization into the first Conv"). Graphs
    without that chain (no uint8 input, no Conv first) are written unchanged.

    Args:
        src: the exported ONNX image graph (``pixel_values`` uint8 ``(B, H, W, 3)``).
        dst: where the folded graph is written (may equal ``src``).

    Returns:
        ``{"pixel_normalization": case}`` for the manifest, or ``{}`` when nothing was folded.
    """
    import onnx

    model = onnx.load(str(src))
    case = _fold_stem(model.graph)
    onnx.save(model, str(dst))
    return {"pixel_normalization": case} if case else {}


def _fold_stem(graph) -> str | None:
    """:func:`fold_pixel_normalization` on a graph, in place; returns the case, or ``None``."""
    from onnx import helper, numpy_helper

    stem = _pixel_stem(graph)
    found = _stem_constants(graph, stem) if stem else None
    if found is None:
        return None
    cast, mul, add, pad, conv = stem
    scale, shift, weight, bias, pads = found
    raw_zero = -shift / scale  # (3,): the raw pixel whose normalized value is 0
    one_value = bool(np.ptp(raw_zero) == 0.0)
    subtract = bool(np.any(pads)) and not one_value
    prefix = f"{conv.name or conv.output[0]}/pixel_fold"
    pixels = cast.input[0]  # (B, 3, H, W) uint8

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, f"{prefix}_{name}"))
        return f"{prefix}_{name}"

    folded_bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
    if not subtract:
        folded_bias = folded_bias + (weight.astype(np.float64) * shift[None, :, None, None]).sum((1, 2, 3))
    folded_weight = (weight.astype(np.float64) * scale[None, :, None, None]).astype(np.float32)  # (O, 3, kh, kw)
    conv_inputs = [cast.output[0], constant("weight", folded_weight)]
    if bias is not None or not subtract:
        conv_inputs.append(constant("bias", folded_bias.astype(np.float32)))
    removed, before_cast, after_cast = {mul.output[0], add.output[0]}, [], []
    if pad is not None and not subtract:  # its padding moves onto the raw pixels, or there is none
        removed.add(pad.output[0])
    if subtract:
        centered = f"{prefix}_centered"
        mean = constant("raw_zero", raw_zero.astype(np.float32).reshape(1, 3, 1, 1))
        after_cast.append(helper.make_node("Sub", [cast.output[0], mean], [centered], name=f"{prefix}_sub"))
        conv_inputs[0] = centered
        if pad is not None:  # the model's Pad pads the centered pixels with zeros, as before
            pad.input[0], conv_inputs[0] = centered, pad.output[0]
        case = "scale folded into the first Conv, per-channel mean subtracted before it"
    elif np.any(pads):
        _set_attribute(conv, "pads", [0, 0, 0, 0])
        top, left, bottom, right = (int(p) for p in pads)
        onnx_pads = constant("pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
        value = round(float(raw_zero[0]))
        if 0 <= value <= 255 and np.all(np.abs(value * scale + shift) <= 1e-6):  # pad the uint8 pixels before the Cast
            pad_value = constant("value", np.array(value, np.uint8))
            before_cast.append(helper.make_node("Pad", [cast.input[0], onnx_pads, pad_value], [f"{prefix}_padded"],
                                                name=f"{prefix}_pad", mode="constant"))
            cast.input[0] = f"{prefix}_padded"
            case = f"folded into the first Conv, pixels padded with {value} (uint8)"
        else:
            pad_value = constant("value", np.array(raw_zero[0], np.float32))
            after_cast.append(helper.make_node("Pad", [cast.output[0], onnx_pads, pad_value], [f"{prefix}_padded"],
                                               name=f"{prefix}_pad", mode="constant"))
            conv_inputs[0] = f"{prefix}_padded"
            case = f"folded into the first Conv, pixels padded with {float(raw_zero[0]):g} (float)"
    else:
        case = "folded into the first Conv"
    del conv.input[:]
    conv.input.extend(conv_inputs)
    for node in graph.node:  # x * s + t has the shape of the unpadded uint8 x: (B, 3, H, W)
        if node.op_type == "Shape" and node.input[0] == add.output[0]:
            node.input[0] = pixels
    _splice(graph, cast, removed, before_cast, after_cast)
    return case


def _stem_constants(graph, stem):
    """``(scale, shift, weight, bias, pads)`` of a :func:`_pixel_stem`: the per-channel ``(3,)``
    affine map (float64), the Conv's ``(O, 3, kh, kw)`` weight and ``(O,)`` bias (or ``None``), and
    :func:`_spatial_pads`; ``None`` when any of them is not a constant of the expected shape."""
    cast, mul, add, pad, conv = stem
    scale = _per_channel(next((_constant(graph, n) for n in mul.input if n != cast.output[0]), None))
    shift = _per_channel(next((_constant(graph, n) for n in add.input if n != mul.output[0]), None))
    weight = _constant(graph, conv.input[1])
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = _constant(graph, conv.input[2]) if has_bias else None
    pads = _spatial_pads(graph, pad, conv)
    if scale is None or shift is None or np.any(scale == 0) or pads is None or (has_bias and bias is None):
        return None
    if weight is None or weight.ndim != 4 or weight.shape[1] != 3:
        return None
    return scale, shift, weight, bias, pads


def _set_attribute(node, name: str, value) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _splice(graph, cast, removed: set, before_cast: list, after_cast: list) -> None:
    """Rebuild ``graph.node`` without the nodes writing ``removed`` tensors, with ``before_cast``
    and ``after_cast`` around ``cast``; then drop the constants nothing reads any more."""
    import onnx

    nodes = []
    for node in graph.node:
        if node.output[0] in removed:
            continue
        is_cast = cast is not None and node.output[0] == cast.output[0]
        nodes += before_cast if is_cast else []
        nodes.append(onnx.NodeProto())
        nodes[-1].CopyFrom(node)
        nodes += after_cast if is_cast else []
    del graph.node[:]
    graph.node.extend(nodes)
    kept_info = [v for v in graph.value_info if v.name not in removed]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unread = [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in read]
    for node in unread:
        graph.node.remove(node)
    initializers = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _dequantize_uint8_pixels(model) -> bool:
    """In a QDQ graph, let the first Conv's DequantizeLinear read the uint8 pixels themselves
    (scale 1, zero point 0: exactly the Cast it replaces) instead of Cast -> QuantizeLinear with a
    calibrated scale, which rounds the 256 levels again. ONNX Runtime then runs the first
    QLinearConv on the pixels as they come. In place; returns whether the graph changed."""
    from onnx import numpy_helper

    graph = model.graph
    names = set(pixel_preamble(model))
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    cast = next((n for n in graph.node if n.name in names and n.op_type == "Cast"), None)
    quantize = readers.get(cast.output[0], []) if cast is not None else []
    if len(quantize) != 1 or quantize[0].op_type != "QuantizeLinear" or not readers.get(quantize[0].output[0]):
        return False
    dequantize = readers[quantize[0].output[0]]
    if any(n.op_type != "DequantizeLinear" for n in dequantize) or quantize[0].output[0] in {o.name for o in graph.output}:
        return False
    one, zero = f"{cast.output[0]}/pixels_scale", f"{cast.output[0]}/pixels_zero_point"
    graph.initializer.extend([numpy_helper.from_array(np.array(1.0, np.float32), one),
                              numpy_helper.from_array(np.array(0, np.uint8), zero)])
    for node in dequantize:
        del node.input[:]
        node.input.extend([cast.input[0], one, zero])
    _splice(graph, None, {cast.output[0], quantize[0].output[0]}, [], [])
    return True


def _quantizer_options(method: str, matmul_only: bool, float_front: bool, symmetric: bool) -> dict:
    """``quantize_static``'s ``extra_options`` for :func:`quantize_static_int8`'s recipe."""
    import onnx

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    if matmul_only:
        # the MatMuls' outputs feed float ops (bias, LayerNorm, GELU): quantizing them only adds
        # error (BERT's FFN output spans [-3, 193]), and ONNX Runtime runs MatMulIntegerToFloat
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
    if float_front:
        extra["QDQKeepRemovableActivations"] = True
    if symmetric:  # TensorRT's explicit quantization: INT8 Q/DQ only, biases float
        extra.update(ActivationSymmetric=True, QuantizeBias=False)
    return extra


def quantize_static_int8(src: Path, dst: Path, feeds: list[dict], method: str, reduce_range: bool, op_types=None,
                         image: bool = False, float_front: bool = False, symmetric: bool = False) -> dict:
    """Static INT8 in QDQ format: per-channel S8 weights, U8 activations (``symmetric``: S8 with
    zero point 0, as TensorRT requires) with ranges calibrated on ``feeds`` (quant_pre_process
    first: shape inference and graph optimization).

    The activation scales are constants of the graph, so an item's answer depends neither on its
    padding nor on the other items of its batch (dynamic INT8 computes them per batch).

    Every Conv and MatMul weight is rounded by GPTQ on the calibration feeds
    (:func:`fusionrt.export.rounding.gptq_round`) instead of to the nearest step, onto
    ``reduce_range``'s 7-bit grid ([-64, 64]) where asked. A MatMul-only recipe (``op_types``
    ``("MatMul",)``: the fused transformer graphs) leaves the MatMuls' outputs float and first
    smooths the MatMuls that read a LayerNorm (:func:`fusionrt.export.rounding.smooth_layer_norm_inputs`;
    measured in docs/performance-notes.md). With ``float_front`` and depthwise convolutions, its
    high-resolution front stays float
    (:func:`fusionrt.export.rounding.float_front`; the activations' Clip nodes are then kept:
    ONNX Runtime computed a float Conv between QDQ activations whose Clip was removed wrongly).
    Measured on the default's EfficientNet-Lite0 in docs/performance-notes.md.

    Args:
        op_types: op types to quantize (``None``: every type the QDQ quantizer supports).
        image: ``src`` is an image encoder (``float_front`` applies).
        float_front: with ``image``, leave the front of a depthwise encoder float.
        symmetric: signed activations, zero point 0 (``ActivationSymmetric``), biases float (no
            INT32 DequantizeLinear); the uint8 pixels keep their Cast and QuantizeLinear.

    Returns:
        The graph's INT8 recipe for the manifest.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fusionrt.engine.int8_weights import SAFE_INT8_WEIGHT
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
        # A transformer's MatMul-only recipe: the MatMuls reading a LayerNorm are smoothed first.
        matmul_only = op_types is not None and set(op_types) == {"MatMul"}
        smoothed = rounding.smooth_layer_norm_inputs(pre, pre, feeds) if matmul_only else 0
        preprocessed = onnx.load(str(pre))
        front = rounding.float_front(preprocessed) if image and float_front else []
        extra = _quantizer_options(method, matmul_only, bool(front), symmetric)
        quantize_static(
            str(pre), str(dst), FeedReader(feeds, names),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            op_types_to_quantize=op_types, nodes_to_exclude=pixel_preamble(preprocessed) + front,
            extra_options=extra,
        )
        rounded = rounding.gptq_round(pre, dst, feeds, qmax=SAFE_INT8_WEIGHT if reduce_range else 127)
    quantized = onnx.load(str(dst))
    exact_pixels = not symmetric and _dequantize_uint8_pixels(quantized)
    if exact_pixels:
        onnx.save(quantized, str(dst))
    recipe = {
        "mode": "static", "format": "QDQ", "per_channel": True, "weight_type": "int8",
        "activation_type": "int8 (symmetric)" if symmetric else "uint8",
        "calibration_method": method, "reduce_range": reduce_range,
        "weight_rounding": f"gptq ({', '.join(f'{n} {op.lower()}s' for op, n in rounded.items())})" if rounded else "nearest",
    }
    if matmul_only:
        recipe["matmul_outputs"] = "float"
        recipe["smoothquant"] = f"{smoothed} LayerNorm outputs (alpha {rounding.SMOOTH_ALPHA})"
    if front:
        recipe["float_nodes"] = f"{len(front)} nodes reading maps >= {rounding.FRONT_SIDE_FRACTION} of the image side"
    if exact_pixels:
        recipe["pixels"] = "uint8 into the first DequantizeLinear (scale 1, zero point 0)"
    return recipe
