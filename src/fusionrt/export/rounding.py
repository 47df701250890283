"""The static INT8 recipe's weight work: GPTQ rounding of a QDQ graph's Conv and MatMul weights,
SmoothQuant scaling of the MatMuls that read a LayerNorm, and the float front of an image encoder
with depthwise convolutions.

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
# SmoothQuant's migration strength (Xiao et al., 2023): the paper's default
SMOOTH_ALPHA = 0.5
# Ops whose output carries a transformer's outlier channels (SmoothQuant's observation): LayerNorm's
LAYER_NORM_OPS = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                  "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization")


def node_attributes(node) -> dict:
    """An ONNX ``NodeProto``'s attributes as ``{name: value}`` (``onnx.helper.get_attribute_value``)."""
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weighted_nodes(model) -> list[tuple]:
    """``(node, weight DequantizeLinear)`` of every Conv and MatMul whose weight (second input) is an
    INT8 initializer (a MatMul's: 2-D, ``(K, N)``, quantized per column)."""
    inits = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = []
    for node in model.graph.node:
        w = dq.get(node.input[1]) if node.op_type in ("Conv", "MatMul") and len(node.input) > 1 else None
        if w is None or w.input[0] not in inits:
            continue
        if node.op_type == "MatMul" and (len(inits[w.input[0]].dims) != 2 or node_attributes(w).get("axis", 1) != 1):
            continue
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


def _matmul_rows(x, mask):
    """A MatMul's input ``(..., K)`` -> ``(M, K)`` rows; of a ``(B, S, K)`` input whose first two
    axes are ``mask``'s (the feed's ``attention_mask``), only the rows of real tokens (padding's
    rows are computed but never read). Statistics only: an input of another sequence whose length
    happens to equal the mask's (image regions in a head) loses the masked rows from the sums."""
    import torch

    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == mask.shape:
        return x[torch.from_numpy(mask.astype(bool))]
    return x.reshape(-1, x.shape[-1])


def _intermediates(model, names: list[str], feeds: list[dict]):
    """Yield ``(feed, {name: array})`` per feed: the float32 tensors ``names`` of ``model`` (an
    ``onnx.ModelProto``, left unchanged) computed by ONNX Runtime on the feed's graph inputs."""
    import onnx

    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import SessionOptions

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = list(dict.fromkeys(names))
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort_session(probe.SerializeToString(), SessionOptions())
    inputs = [i.name for i in model.graph.input]
    for feed in feeds:
        yield feed, dict(zip(names, session.run(names, {k: feed[k] for k in inputs})))


def _hessians(model, nodes: list[tuple], feeds: list[dict]) -> list:
    """``X X^T`` of each node's inputs over ``feeds``, float64: ``(K, K)`` for a dense conv
    (K = C_in * kh * kw) or a MatMul (K: its input's last axis), ``(C, kk, kk)`` for a depthwise
    conv (one per channel)."""
    import torch

    hessians: list = [None] * len(nodes)
    for feed, values in _intermediates(model, [node.input[0] for node, _ in nodes], feeds):
        for i, (node, _) in enumerate(nodes):
            x = torch.from_numpy(values[node.input[0]])
            if node.op_type == "MatMul":
                u = _matmul_rows(x, feed.get("attention_mask")).T.double()
                h = u @ u.T
            else:
                h = _conv_hessian(x, node_attributes(node))
            hessians[i] = h if hessians[i] is None else hessians[i] + h
    return hessians


def _conv_hessian(x, attrs: dict):
    """``X X^T`` of a Conv's input windows over the batch ``x`` ``(N, C, H, W)``, float64: ``(C * kh *
    kw, C * kh * kw)`` for a dense conv, ``(C, kh * kw, kh * kw)`` for a depthwise one. Summed one
    sample at a time in place, without copying the windows (a 1x1 stride-1 conv's windows are its
    pixels: no unfold)."""
    import torch

    group = attrs.get("group", 1)
    pointwise = (list(attrs["kernel_shape"]) == [1, 1] and not any(attrs.get("pads", ()))
                 and all(s == 1 for s in attrs.get("strides", ())))
    if group == 1 and pointwise:
        u = x.reshape(x.shape[0], x.shape[1], -1)  # (N, C, H * W): a view
    else:
        u = _patches(x, attrs)  # (N, C, kh * kw, L)
        if group == 1:
            u = u.reshape(u.shape[0], -1, u.shape[-1])
    k = u.shape[-2]  # a window's length: C * kh * kw (dense), kh * kw (depthwise)
    h = torch.zeros(u.shape[1:-1] + (k,), dtype=u.dtype)  # (k, k), or (C, k, k)
    for sample in u:
        if sample.dim() == 2:
            h.addmm_(sample, sample.T)
        else:
            h.baddbmm_(sample, sample.transpose(1, 2))
    return h.double()


def gptq_codes(weights, scales, hessian, damp: float = DAMP, block: int = 128, qmax: int = 127):
    """INT8 codes of ``weights`` by GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training
    Quantization for Generative Pre-trained Transformers", Algorithm 1): columns are rounded in
    order, each one's rounding error spread over the columns not yet rounded through the upper
    Cholesky factor of the damped inverse Hessian; within a block of ``block`` columns one at a
    time, onto the columns after the block once per block (the paper's lazy batch updates).

    Args:
        weights: ``(R, K)`` float64 torch tensor (rows: output channels; a depthwise conv: one row
            per channel with ``hessian`` batched ``(R, K, K)``).
        scales: ``(R,)`` each row's quantization step (symmetric, zero point 0).
        hessian: ``(K, K)``, or ``(R, K, K)`` one per row, ``X X^T`` of the row's inputs.
        damp: fraction of the mean diagonal added to the diagonal before inverting.
        block: columns per lazy update.
        qmax: the largest code: 127, or 64 for ONNX Runtime's ``reduce_range`` weights.

    Returns:
        ``(R, K)`` float64 tensor of integers in [-qmax, qmax].
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
    u = inv[0] if dense else inv  # (K, K) shared, or (R, K, K) one per row
    codes = torch.zeros_like(w)
    for start in range(0, w.shape[1], block):
        end = min(start + block, w.shape[1])
        part = w[:, start:end].clone()
        errors = torch.zeros_like(part)
        for j in range(end - start):
            i = start + j
            q = torch.clamp(torch.round(part[:, j] / scales), -qmax, qmax)
            codes[:, i] = q
            row = u[i, start:end] if dense else u[:, i, start:end]  # (b,) or (R, b)
            err = (part[:, j] - q * scales) / (row[j] if dense else row[:, j])
            part[:, j:] -= err[:, None] * (row[j:][None] if dense else row[:, j:])
            errors[:, j] = err
        if end < w.shape[1]:
            w[:, end:] -= errors @ u[start:end, end:] if dense else torch.einsum("rb,rbk->rk", errors, u[:, start:end, end:])
    return codes


def gptq_round(float_path: Path, qdq_path: Path, feeds: list[dict], damp: float = DAMP, qmax: int = 127) -> dict[str, int]:
    """Re-round the INT8 Conv and MatMul weights of ``qdq_path`` (in place) by GPTQ, on the inputs
    each node sees in the quantized graph over ``feeds`` (a MatMul's padded positions excluded
    where the feed has an ``attention_mask`` of its input's batch and sequence axes).

    Args:
        float_path: the float graph ``qdq_path`` was quantized from (its weights, by name: ONNX
            Runtime's quantizer names a weight ``W`` ``W_quantized``).
        qdq_path: a QDQ graph from :func:`fusionrt.export.passes.quantize_static_int8`; its scales
            are kept, only its INT8 weight values change.
        feeds: calibration batches (the graph's inputs among other arrays).
        damp, qmax: see :func:`gptq_codes` (``qmax`` 64 for a ``reduce_range`` graph's 7-bit weights).

    Returns:
        How many nodes were re-rounded, per op type (``{"Conv": 49}``; empty when none).
    """
    import onnx
    import torch
    from onnx import numpy_helper

    floats = {t.name: t for t in onnx.load(str(float_path)).graph.initializer}
    model = onnx.load(str(qdq_path))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [(n, w) for n, w in _weighted_nodes(model) if w.input[0].removesuffix("_quantized") in floats]
    counts: dict[str, int] = {}
    for (node, wdq), hessian in zip(nodes, _hessians(model, nodes, feeds)):
        original = numpy_helper.to_array(floats[wdq.input[0].removesuffix("_quantized")]).astype(np.float64)
        # rows are output channels: a Conv's (C_out, C_in * kh * kw), a MatMul's (N, K) from (K, N)
        rows = original.T if node.op_type == "MatMul" else original.reshape(original.shape[0], -1)
        w = torch.from_numpy(np.ascontiguousarray(rows))
        scales = torch.from_numpy(numpy_helper.to_array(inits[wdq.input[1]]).astype(np.float64).reshape(-1))
        codes = gptq_codes(w, scales.expand(w.shape[0]) if scales.numel() == 1 else scales, hessian, damp, qmax=qmax).numpy()
        codes = codes.T if node.op_type == "MatMul" else codes.reshape(original.shape)
        inits[wdq.input[0]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(codes).astype(np.int8), wdq.input[0]))
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    onnx.save(model, str(qdq_path))
    return counts


def smooth_layer_norm_inputs(src: Path, dst: Path, feeds: list[dict], alpha: float = SMOOTH_ALPHA) -> int:
    """SmoothQuant (Xiao et al., 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization
    for Large Language Models", eq. 4) on the MatMuls that read a LayerNorm's output: per input
    channel ``j``, ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``; the MatMul reads ``X / s`` (a
    ``Mul`` node inserted after the LayerNorm, shared by the MatMuls reading one tensor) and its
    weight rows are multiplied by ``s``. Exact in float; a per-tensor INT8 range of ``X / s`` no
    longer spans a few outlier channels (a LayerNorm's output in BERT-family encoders reaches 30
    where most channels stay under 2).

    Args:
        src: a float ONNX graph; ``dst`` gets the smoothed graph (may be ``src``).
        feeds: calibration batches (``max|X_j|`` over them; a ``(B, S, K)`` input's padded rows
            left out where the feed has its ``attention_mask``).
        alpha: migration strength in [0, 1].

    Returns:
        How many tensors were smoothed (one ``Mul`` each); a tensor whose MatMuls share a weight
        with another node (tied weights) is left as it is.
    """
    import onnx
    import torch
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    norms = {o for n in model.graph.node if n.op_type in LAYER_NORM_OPS for o in n.output[:1]}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[0] in norms and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            readers.setdefault(node.input[0], []).append(node)
    # a weight also read elsewhere (tied across layers) cannot take one tensor's scales
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    readers = {x: nodes for x, nodes in readers.items()
               if all(uses[n.input[1]] == sum(m.input[1] == n.input[1] for m in nodes) for n in nodes)}
    if readers:
        peaks = {name: 0.0 for name in readers}
        for feed, values in _intermediates(model, list(readers), feeds):
            for name, x in values.items():
                rows = _matmul_rows(torch.from_numpy(x), feed.get("attention_mask")).abs()
                peaks[name] = np.maximum(peaks[name], rows.amax(0).numpy() if len(rows) else 0.0)
        muls = {}
        for name, nodes in readers.items():
            weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
            w_peak = np.max([np.abs(w).max(1) for w in weights], axis=0)
            scale = (np.maximum(peaks[name], 1e-5) ** alpha / np.maximum(w_peak, 1e-5) ** (1 - alpha)).astype(np.float32)
            for node, w in zip(nodes, weights):
                inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), node.input[1]))
            # not "<tensor>_scale": ONNX Runtime's quantizer names a tensor's INT8 scale so
            smoothed, factor = f"{name}_smoothed", f"{name}_smoothquant_factor"
            model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), factor))
            muls[name] = helper.make_node("Mul", [name, factor], [smoothed], name=smoothed)
            for node in nodes:
                node.input[0] = smoothed
        ordered = []
        for node in model.graph.node:
            ordered.append(node)
            ordered += [muls[o] for o in node.output if o in muls]
        del model.graph.node[:]
        model.graph.node.extend(ordered)
    onnx.save(model, str(dst))
    return len(readers)


def has_depthwise(model) -> bool:
    """Whether an ``onnx.ModelProto`` has a grouped (depthwise) Conv: :func:`float_front` applies."""
    return any(n.op_type == "Conv" and node_attributes(n).get("group", 1) > 1 for n in model.graph.node)


def float_front(model, fraction: float = FRONT_SIDE_FRACTION) -> list[str]:
    """Names of the nodes of an image encoder with depthwise convolutions that read a feature map
    at least ``fraction`` of the image's side (the first Conv's input side): its high-resolution
    front, which static INT8 leaves in float. Empty for encoders without a depthwise conv.

    Args:
        model: an ``onnx.ModelProto`` with static spatial sizes (the exporter's image graphs).
    """
    import onnx

    nodes = model.graph.node
    if not has_depthwise(model):
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
