"""FLOP counting and the measured peak, for the roofline.

FLOPs are counted on a graph with concrete input shapes (shapes from ONNX Runtime's symbolic shape
inference, which knows its fused contrib ops): 2 * multiply-adds of every MatMul (and its INT8
forms), Gemm and Conv (the convention of MLPerf and of most papers: one multiply-add = 2 FLOPs),
plus the fused attention ops (``Attention``: the QKV projection and QK^T, attention x V;
``MultiHeadAttention``) by their formulas. Element-wise ops are ignored (memory-bound, < 1%
of these models' FLOPs). The same count is used for every precision of the graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _concrete(model, dims: dict[str, int]):
    """Copy of ``model`` with symbolic input axes replaced by ``dims`` and shapes inferred."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param:
                if d.dim_param not in dims:
                    raise ValueError(f"no size given for axis {d.dim_param!r} of input {value.name!r}")
                d.dim_value = dims[d.dim_param]
    for value in model.graph.output:  # let inference recompute them
        value.type.tensor_type.ClearField("shape")
    try:
        # ONNX Runtime's symbolic shape inference knows its contrib ops (Attention,
        # SkipLayerNormalization, ...), after which ONNX's own inference stops: a fused text encoder
        # and the FP16 and INT8 graphs get every shape.
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


def count_flops(path: str | os.PathLike, dims: dict[str, int]) -> dict[str, int]:
    """FLOPs of one run of an ONNX graph at concrete sizes.

    Args:
        path: the ONNX file.
        dims: size of each symbolic axis, e.g. ``{"batch": 8, "sequence": 64}``.

    Returns:
        Op type -> FLOPs, plus ``"total"``.

    Raises:
        ValueError: a symbolic axis has no size, or a counted op's shapes cannot be inferred.
    """
    import onnx

    model = _concrete(onnx.load(str(path)), dims)
    shapes: dict[str, tuple] = {}
    for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims_ = v.type.tensor_type.shape.dim
        if dims_ and all(d.dim_value > 0 for d in dims_):
            shapes[v.name] = tuple(d.dim_value for d in dims_)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)

    def shape(name: str, node) -> tuple:
        if name not in shapes:
            raise ValueError(f"shape of {name!r} (input of {node.op_type} {node.name!r}) could not be inferred")
        return shapes[name]

    counts: dict[str, int] = {}
    for node in model.graph.node:
        flops = 0
        if node.op_type in ("MatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
            a = shape(node.input[0], node)
            if node.output[0] not in shapes:  # after a contrib op ONNX inference stops: propagate
                b = shape(node.input[1], node)
                shapes[node.output[0]] = a[:-1] + (b[-1],)
            out = shapes[node.output[0]]
            flops = 2 * int(np.prod(out)) * a[-1]
        elif node.op_type == "Gemm":
            out = shape(node.output[0], node)
            a = shape(node.input[0], node)
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            k = a[0] if trans_a else a[1]
            flops = 2 * int(np.prod(out)) * k
        elif node.op_type == "Conv":
            w, out = shape(node.input[1], node), shape(node.output[0], node)
            # out (N, Cout, ...) x (Cin/group * kh * kw) multiply-adds per output element
            flops = 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Attention", "QAttention"):
            # input (B, S, H) x packed QKV weights (H, 3H), then QK^T and attention x V over S x S
            x, w = shape(node.input[0], node), shape(node.input[1], node)
            b, s, h = x
            flops = 2 * b * s * h * w[1] + 2 * 2 * b * s * s * (w[1] // 3)
        elif node.op_type == "MultiHeadAttention":
            q, k = shape(node.input[0], node), shape(node.input[1], node)
            b, s, d = q
            flops = 2 * 2 * b * s * k[1] * d  # QK^T and attention x V
            shapes[node.output[0]] = q
        if flops:
            counts[node.op_type] = counts.get(node.op_type, 0) + int(flops)
    counts["total"] = sum(counts.values())
    return counts


def measure_peak_gflops(threads: int, size: int = 2048, iterations: int = 10) -> float:
    """Peak float32 GFLOP/s measured with ONNX Runtime on a large square MatMul.

    ONNX Runtime, not numpy: numpy's BLAS is slowed on this machine by OpenBLAS settings that must
    stay. Returns the best of ``iterations`` runs: 2 * size**3 FLOPs each.
    """
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak", [a, b], [c])
    rng = np.random.default_rng(0)
    feed = {"a": rng.standard_normal((size, size), np.float32), "b": rng.standard_normal((size, size), np.float32)}
    return 2 * size**3 / _best_seconds(graph, feed, threads, iterations) / 1e9


def measure_int8_peak_gops(threads: int, size: int = 2048, iterations: int = 10) -> float:
    """Peak INT8 GOP/s measured with ONNX Runtime on a large square ``MatMulInteger`` (uint8
    activations x int8 weights, int32 accumulation: the u8 x s8 kernels of fusionrt's INT8
    bundles, VNNI or AMX where the CPU has them). Best of ``iterations`` runs, 2 * size**3
    operations each (one multiply-add = 2, as for FLOPs)."""
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])
    b = helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])
    c = helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_peak", [a, b], [c])
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8), "b": rng.integers(-128, 128, (size, size), dtype=np.int8)}
    return 2 * size**3 / _best_seconds(graph, feed, threads, iterations) / 1e9


def measure_bf16_peak_gflops(threads: int, size: int = 2048, iterations: int = 10) -> float:
    """Peak bfloat16 GFLOP/s measured with OpenVINO on a large square MatMul of float32 inputs
    compiled with ``INFERENCE_PRECISION_HINT=bf16`` (AVX512-BF16 or AMX where the CPU has them);
    best of ``iterations`` runs, 2 * size**3 FLOPs each.

    Raises:
        ImportError: openvino is not installed.
    """
    import openvino as ov
    import openvino.opset13 as ops

    from fusionrt.engine.loaders import openvino_model
    from fusionrt.engine.openvino_runtime import OpenVINOOptions
    from fusionrt.timing import time_calls

    a = ops.parameter([size, size], ov.Type.f32, name="a")
    b = ops.parameter([size, size], ov.Type.f32, name="b")
    model = ov.Model([ops.matmul(a, b, False, False)], [a, b], "bf16_peak")
    compiled = openvino_model(model, "bf16", OpenVINOOptions(inference_precision="bf16", inference_num_threads=threads))
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feed = {"a": rng.standard_normal((size, size), np.float32), "b": rng.standard_normal((size, size), np.float32)}
    seconds = float(time_calls(lambda: request.infer(feed, share_inputs=True), warmup=1, iterations=iterations).min())
    return 2 * size**3 / seconds / 1e9


# ResNet's 3x3 stages at 224 px: (channels, height = width). Same FLOPs per stage.
RESNET_STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))


def measure_conv_peak_gflops(threads: int, batch: int = 8, shapes: tuple = RESNET_STAGES, iterations: int = 10) -> float:
    """Float32 GFLOP/s of ONNX Runtime on 3x3 convolutions of ResNet's stage shapes (``batch`` x
    channels x hw x hw, same padding; 2 * batch * channels**2 * 9 * hw**2 FLOPs each): the best
    over ``shapes`` of the fastest of ``iterations`` runs. ONNX Runtime's NCHWc convolution
    kernels outrun its MatMul on some CPUs, so the roofline's peak is the larger of the two.
    Several shapes and 10 runs each, because a shared machine's speed swings between moments
    (docs/performance-notes.md, "Roofline peaks")."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    best = 0.0
    for channels, hw in shapes:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, hw, hw])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, channels, hw, hw])
        w = numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3), np.float32) * 0.05, "w")
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        graph = helper.make_graph([node], "conv_peak", [x], [y], initializer=[w])
        feed = {"x": rng.standard_normal((batch, channels, hw, hw), np.float32)}
        flops = 2 * batch * channels**2 * 9 * hw**2
        best = max(best, flops / _best_seconds(graph, feed, threads, iterations) / 1e9)
    return best


def _best_seconds(graph, feed: dict, threads: int, iterations: int) -> float:
    """Fastest of ``iterations`` runs of a one-node graph, after one warm-up run."""
    from onnx import helper

    from fusionrt.engine.loaders import ort_session
    from fusionrt.engine.session import SessionOptions
    from fusionrt.timing import time_calls

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    # spinning threads, as ONNX Runtime's default: a peak measurement calls back to back
    sess = ort_session(model.SerializeToString(), SessionOptions(intra_op_num_threads=threads, allow_spinning=True))
    return float(time_calls(lambda: sess.run(None, feed), warmup=1, iterations=iterations).min())


def graph_flops_per_sample(bundle: Path, graph: str, batch: int, seq: int) -> int:
    """FLOPs per sample of a bundle graph at ``batch`` x ``seq`` (0 when it cannot be counted)."""
    try:
        return count_flops(bundle / f"{graph}.onnx", {"batch": batch, "sequence": seq})["total"] // batch
    except Exception:
        return 0
