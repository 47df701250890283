"""INT8 weights that do not saturate on x86 CPUs without an INT8 dot product.

On an x86 CPU without AVX-512 VNNI, AVX-VNNI or AMX-INT8 (an AVX2-only AMD Zen 3, say), ONNX
Runtime's and OpenVINO's INT8 kernels multiply u8 activations by s8 weights with AVX2's
``vpmaddubsw``, which adds each two neighbouring products into an int16 and saturates there: with
weights beyond 7 bits (|w| > 64) the sums clip at 32767 and the answer is silently wrong. ONNX
Runtime's quantizer avoids it with ``reduce_range`` (7-bit weights), which fusionrt's export turns
on when the exporting CPU lacks the dot product. A bundle exported with 8-bit weights (on a CPU
that has it) and run on one that lacks it would saturate: :func:`widen_int8_weights` stores such
weights as u8 with zero point 128 instead (``w + 128``), the same numbers exactly, which both
runtimes multiply without the int16 step (ONNX Runtime's u8 x u8 kernels; measured on a 3x3 Conv
with 0-255 inputs on an AMD EPYC Zen 3: s8 weights 8.95 off the exact output, u8 one output step;
1.1-1.5x the s8 kernel's time, in docs/performance-notes.md).
"""

from __future__ import annotations

import functools

import numpy as np

from fusionrt.cpu import cpu_info

# The widest s8 weight whose neighbouring products with u8 activations fit an int16
# (2 * 255 * 64 = 32640 <= 32767): the bound of ONNX Runtime's reduce_range weights, [-64, 64]
# (its quant_utils.ONNX_INT_TYPE_REDUCED_RANGE).
SAFE_INT8_WEIGHT = 64
# The integer ops of a dynamic INT8 bundle (ONNX Runtime's quantize_dynamic), which take s8
# weights as an input: op type -> (weight input, its zero point input). Both take u8 weights.
_INTEGER_OPS = {"MatMulInteger": (1, 3), "QAttention": (1, 7)}


@functools.lru_cache(maxsize=1)
def saturates() -> bool:
    """Whether this CPU's INT8 kernels saturate 8-bit weights: x86 without an INT8 dot product."""
    info = cpu_info()
    return info.machine.lower() in ("x86_64", "amd64", "i686", "x86") and not info.int8_dot_product


def widen_int8_weights(model) -> int:
    """Stores, in place, every s8 weight initializer with a value beyond +-:data:`SAFE_INT8_WEIGHT`
    as u8 ``w + 128`` with its zero point ``z + 128`` (the same dequantized values, exactly): the
    weights of ``DequantizeLinear`` (static QDQ graphs) and of the integer ops of
    ``_INTEGER_OPS`` (dynamic INT8 graphs).

    Args:
        model: an ``onnx.ModelProto`` (its initializers loaded). Widened weights become uint8
            initializers of the same shape; their zero points uint8 of the scale's shape (per
            tensor or per channel), where a graph without one gets one.

    Returns:
        How many weight tensors were widened (0: the graph is unchanged). Raises nothing of its own.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    added, widened = [], 0
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            w_at, z_at = 0, 2
        elif node.op_type in _INTEGER_OPS and node.domain in ("", "com.microsoft"):
            w_at, z_at = _INTEGER_OPS[node.op_type]
        else:
            continue
        weight = inits.get(node.input[w_at]) if len(node.input) > w_at else None
        if weight is None or weight.data_type != 3:  # TensorProto.INT8
            continue
        w = numpy_helper.to_array(weight)
        if np.abs(w.astype(np.int16)).max(initial=0) <= SAFE_INT8_WEIGHT:
            continue
        zero_name = node.input[z_at] if len(node.input) > z_at else ""
        if zero_name and zero_name not in inits:
            continue  # a zero point computed at run time: not a stored weight's
        if zero_name:
            zero_values = numpy_helper.to_array(inits[zero_name])
        else:  # absent: 0, per channel for a DequantizeLinear (the shape of its scale)
            shape = numpy_helper.to_array(inits[node.input[1]]).shape if node.op_type == "DequantizeLinear" else ()
            zero_values = np.zeros(shape, np.int8)
        names = (f"{node.input[w_at]}_u8_{widened}", f"{node.input[w_at]}_zero_point_u8_{widened}")
        added += [numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), names[0]),
                  numpy_helper.from_array((zero_values.astype(np.int16) + 128).astype(np.uint8), names[1])]
        while len(node.input) <= z_at:
            node.input.append("")
        node.input[w_at], node.input[z_at] = names
        widened += 1
    if widened:
        used = {name for n in model.graph.node for name in n.input}
        kept = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept + added)
    return widened


def for_this_cpu(graph, quantized: bool | None = None):
    """``graph`` as this CPU should load it: unchanged, or (on a CPU where :func:`saturates`) as
    serialized ONNX bytes whose 8-bit weights :func:`widen_int8_weights` widened.

    Args:
        graph: an ONNX file path or serialized ONNX bytes (anything else is returned unchanged).
        quantized: whether the graph holds quantized ops; ``None``: look (parse it).

    Returns:
        ``(graph, widened)``: what to load, and how many weight tensors were widened.

    Raises:
        What ``onnx.load`` raises for a file that is not ONNX (``fusionrt.engine.loaders`` then
        loads it unchanged, so the runtime names the problem).
    """
    import os

    if quantized is False or not saturates() or not isinstance(graph, (bytes, str, os.PathLike)):
        return graph, 0
    import onnx

    model = onnx.load_from_string(graph) if isinstance(graph, bytes) else onnx.load(str(graph))
    widened = widen_int8_weights(model)
    return (model.SerializeToString(), widened) if widened else (graph, 0)
