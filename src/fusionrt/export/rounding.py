"""GPTQ rounding of a static INT8 (QDQ) graph's convolution weights, and the float front of an
image encoder with depthwise convolutions.

ONNX Runtime's quantizer rounds every INT8 weight to the nearest step of its channel's scale. On
the default's EfficientNet-Lite0 those rounding errors, each under 1% of a weight tensor, add up to
16% (relative L2) on the encoder's last feature map. GPTQ (Frantar et al., 2023, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers") rounds a layer's weights one
input column at a time and moves the columns not yet rounded to cancel the error on the layer's
actual inputs (``H = X X^T`` over the calibration data). The scales, the graph and its speed do not
change: only the INT8 values do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# GPTQ's damping: a fraction of the Hessian's mean diagonal added to it before inverting
DAMP = 0.01
# Nodes reading a map at least this fraction of the image's side stay float (float_front)
FRONT_SIDE_FRACTION = 0.125


def node_attributes(node) -> dict:
    """An ONNX ``NodeProto``'s attributes as ``{name: value}`` (``onnx.helper.get_attribute_value``)."""
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weighted_convs(model) -> list[tuple]:
    """``(conv, weight DequantizeLinear)`` of every Conv whose weight is an INT8 initializer."""
    inits = {t.name for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = []
    for node in model.graph.node:
        w = dq.get(node.input[1]) if node.op_type == "Conv" else None
        if w is not None and w.input[0] in inits:
            out.append((node, w))
    return out


def _patches(x, attrs: dict):
    """``(N, C, H, W)`` -> ``(N, C, kh * kw, L)``: the windows the conv multiplies (its pads applied)."""
    import torch

    k = attrs["kernel_shape"]
    p = attrs.get("pads", [0, 0, 0, 0])
    x = torch.nn.functional.pad(x, (p[1], p[3], p[0], p[2]))
    u = torch.nn.functional.unfold(x, k, dilation=attrs.get("dilations", [1, 1]), stride=attrs.get("strides", [1, 1]))
    return u.view(x.shape[0], x.shape[1], k[0] * k[1], -1)


def _hessians(model, convs: list[tuple], feeds: list[dict]) -> list:
    """``X X^T`` of each conv's input windows over ``feeds``, float64: ``(K, K)`` for a dense conv
    (K = C_in * kh * kw), ``(C, kk, kk)`` for a depthwise one (one per channel)."""
    import onnx
    import torch

    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import SessionOptions

    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [conv.input[0] for conv, _ in convs]
    for name in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort_session(m.SerializeToString(), SessionOptions())
    inputs = [i.name for i in model.graph.input]
    hessians: list = [None] * len(convs)
    for feed in feeds:
        values = session.run(names, {k: feed[k] for k in inputs})
        for i, ((conv, _), x) in enumerate(zip(convs, values)):
            attrs = node_attributes(conv)
            u = _patches(torch.from_numpy(x), attrs)
            if attrs.get("group", 1) == 1:
                u = u.reshape(u.shape[0], -1, u.shape[-1]).permute(1, 0, 2).reshape(u.shape[1] * u.shape[2], -1)
            else:
                u = u.permute(1, 2, 0, 3).reshape(u.shape[1], u.shape[2], -1)
            h = (u @ u.transpose(-1, -2)).double()
            hessians[i] = h if hessians[i] is None else hessians[i] + h
    return hessians


def gptq_codes(weights, scales, hessian, damp: float = DAMP):
    """INT8 codes of ``weights`` by GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training
    Quantization for Generative Pre-trained Transformers", Algorithm 1 with one block): columns are
    rounded in order, each one's rounding error spread over the columns not yet rounded through the
    upper Cholesky factor of the damped inverse Hessian.

    Args:
        weights: ``(R, K)`` float64 torch tensor (rows: output channels; a depthwise conv: one row
            per channel with ``hessian`` batched ``(R, K, K)``).
        scales: ``(R,)`` each row's quantization step (symmetric, zero point 0).
        hessian: ``(K, K)``, or ``(R, K, K)`` one per row, ``X X^T`` of the row's inputs.
        damp: fraction of the mean diagonal added to the diagonal before inverting.

    Returns:
        ``(R, K)`` float64 tensor of integers in [-127, 127].
    """
    import torch

    w = weights.clone()
    h = hessian.clone() if hessian.dim() == 3 else hessian.clone()[None]
    eye = torch.eye(h.shape[-1], dtype=h.dtype)[None]
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag == 0  # inputs never nonzero: their weights do not matter
    h = h + eye * dead[..., None].to(h.dtype)
    h = h + damp * diag.mean(-1)[:, None, None] * eye
    inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    dense = inv.shape[0] == 1 and w.shape[0] > 1
    codes = torch.zeros_like(w)
    for i in range(w.shape[1]):
        q = torch.clamp(torch.round(w[:, i] / scales), -127, 127)
        codes[:, i] = q
        row = inv[0, i] if dense else inv[:, i]  # (K,) or (R, K)
        err = (w[:, i] - q * scales) / (row[i] if dense else row[:, i])
        w[:, i:] -= err[:, None] * (row[i:][None] if dense else row[:, i:])
    return codes


def gptq_round(float_path: Path, qdq_path: Path, feeds: list[dict], damp: float = DAMP) -> int:
    """Re-round the INT8 conv weights of ``qdq_path`` (in place) by GPTQ.

    Args:
        float_path: the float graph ``qdq_path`` was quantized from (its weights, by name: ONNX
            Runtime's quantizer names a weight ``W`` ``W_quantized``).
        qdq_path: a QDQ graph from :func:`fusionrt.export.passes.quantize_static_int8`; its scales
            are kept, only its INT8 weight values change.
        feeds: calibration batches (the graph's inputs among other arrays).

    Returns:
        How many convs were re-rounded.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    floats = {t.name: t for t in onnx.load(str(float_path)).graph.initializer}
    model = onnx.load(str(qdq_path))
    inits = {t.name: t for t in model.graph.initializer}
    convs = [(c, w) for c, w in _weighted_convs(model) if w.input[0].removesuffix("_quantized") in floats]
    for (conv, wdq), hessian in zip(convs, _hessians(model, convs, feeds)):
        original = numpy_helper.to_array(floats[wdq.input[0].removesuffix("_quantized")])
        w = torch.from_numpy(original.astype(np.float64).reshape(original.shape[0], -1))
        scales = torch.from_numpy(numpy_helper.to_array(inits[wdq.input[1]]).astype(np.float64).reshape(-1))
        codes = gptq_codes(w, scales.expand(w.shape[0]) if scales.numel() == 1 else scales, hessian, damp)
        inits[wdq.input[0]].CopyFrom(numpy_helper.from_array(codes.numpy().astype(np.int8).reshape(original.shape), wdq.input[0]))
    onnx.save(model, str(qdq_path))
    return len(convs)


def float_front(model, fraction: float = FRONT_SIDE_FRACTION) -> list[str]:
    """Names of the nodes of an image encoder with depthwise convolutions that read a feature map
    at least ``fraction`` of the image's side (the first Conv's input side): its high-resolution
    front, which static INT8 leaves in float. Empty for encoders without a depthwise conv.

    Args:
        model: an ``onnx.ModelProto`` with static spatial sizes (the exporter's image graphs).
    """
    import onnx

    nodes = model.graph.node
    if not any(n.op_type == "Conv" and node_attributes(n).get("group", 1) > 1 for n in nodes):
        return []
    inferred = onnx.shape_inference.infer_shapes(model)
    side = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[3].HasField("dim_value"):
            side[v.name] = dims[3].dim_value
    first = next(n for n in nodes if n.op_type == "Conv")
    if first.input[0] not in side:
        return []
    limit = side[first.input[0]] * fraction
    return [n.name for n in nodes if any(side.get(i, 0) >= limit for i in n.input)]
