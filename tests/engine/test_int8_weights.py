"""8-bit INT8 weights on x86 CPUs without an INT8 dot product (fusionrt.engine.int8_weights): stored
as u8 with zero point 128 they give the graph's exact numbers where s8 ones saturate."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusionrt.engine import int8_weights
from fusionrt.engine.int8_weights import SAFE_INT8_WEIGHT, for_this_cpu, widen_int8_weights
from fusionrt.engine.loaders import ort_session
from fusionrt.engine.session import SessionOptions

OUTPUT_STEP = 0.05


def _conv_graph(weights: np.ndarray) -> onnx.ModelProto:
    """uint8 pixels (scale 1) -> a 3x3 Conv with per-channel INT8 weights -> uint8 output (step
    OUTPUT_STEP): the QDQ pattern of a bundle's image encoder stem."""
    c_out, c_in = weights.shape[:2]
    inits = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.full(c_out, 1e-4, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(c_out, np.int8), "w_zero_point"),
             numpy_helper.from_array(np.array(1.0, np.float32), "x_scale"), numpy_helper.from_array(np.array(0, np.uint8), "x_zero_point"),
             numpy_helper.from_array(np.array(OUTPUT_STEP, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zero_point")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero_point"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero_point"], ["wf"], axis=0),
             helper.make_node("Conv", ["xf", "wf"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero_point"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero_point"], ["out"])]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.UINT8, [2, c_in, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _matmul_integer_graph(weights: np.ndarray) -> onnx.ModelProto:
    """A dynamic INT8 graph's MatMulInteger: u8 activations times s8 weights, no zero points given."""
    k, n = weights.shape
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [4, n])], [numpy_helper.from_array(weights, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _reference(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    """The graph's numbers without integer kernels (QDQ run as float ops)."""
    options = SessionOptions(graph_optimization_level="disable")
    return ort_session(model.SerializeToString(), options, precision="fp32").run(None, feed)[0]


@pytest.fixture
def saturating_cpu(monkeypatch):
    """Any CPU taken as one without an INT8 dot product (the widening runs wherever the test does)."""
    monkeypatch.setattr(int8_weights, "saturates", lambda: True)


def test_widened_weights_give_the_exact_conv_where_s8_saturates(saturating_cpu, caplog):
    """0-255 inputs and 8-bit weights: the loader's u8 weights are within one output step of the
    float reference on every CPU; the s8 graph is too only on a CPU with an INT8 dot product
    (measured on an AVX2-only AMD EPYC: 8.95 off, 179 steps)."""
    rng = np.random.default_rng(0)
    model = _conv_graph(rng.integers(-127, 128, (8, 32, 3, 3)).astype(np.int8))
    feed = {"x": rng.integers(0, 256, (2, 32, 16, 16)).astype(np.uint8)}
    expected = _reference(model, feed)
    with caplog.at_level(logging.WARNING, logger="fusionrt.engine"):
        widened = ort_session(model.SerializeToString(), SessionOptions(), precision="int8").run(None, feed)[0]
    assert np.abs(widened - expected).max() <= OUTPUT_STEP * 1.01
    assert "1 of its 8-bit INT8 weight tensors run as u8" in caplog.text
    original = ort_session(model.SerializeToString(), SessionOptions(), precision="fp32").run(None, feed)[0]  # not inspected
    if not int8_weights.cpu_info().int8_dot_product:
        assert np.abs(original - expected).max() > 10 * OUTPUT_STEP  # the saturation this module exists for
    else:
        assert np.abs(original - expected).max() <= OUTPUT_STEP * 1.01


def test_widening_keeps_every_dequantized_value():
    rng = np.random.default_rng(1)
    weights = rng.integers(-128, 128, (8, 4, 3, 3)).astype(np.int8)
    model = _conv_graph(weights)
    assert widen_int8_weights(model) == 1
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    (dq,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    w, zero = inits[dq.input[0]], inits[dq.input[2]]
    assert w.dtype == np.uint8 and zero.dtype == np.uint8 and zero.shape == (8,)
    np.testing.assert_array_equal(w.astype(np.int16) - zero.astype(np.int16)[:, None, None, None], weights)
    assert "w" not in inits and "w_zero_point" not in inits  # the s8 copies are gone, not kept beside


def test_seven_bit_weights_and_float_graphs_are_left_alone(saturating_cpu):
    """reduce_range weights ([-64, 64]) do not saturate: loaded as they are; an fp32 graph is not parsed."""
    rng = np.random.default_rng(2)
    model = _conv_graph(rng.integers(-SAFE_INT8_WEIGHT, SAFE_INT8_WEIGHT + 1, (8, 4, 3, 3)).astype(np.int8))
    data = model.SerializeToString()
    assert for_this_cpu(data) == (data, 0)
    assert for_this_cpu(b"not onnx", quantized=False) == (b"not onnx", 0)


def test_only_a_saturating_cpu_widens(monkeypatch):
    data = _conv_graph(np.full((8, 4, 3, 3), 127, np.int8)).SerializeToString()
    monkeypatch.setattr(int8_weights, "saturates", lambda: False)
    assert for_this_cpu(data) == (data, 0)
    monkeypatch.setattr(int8_weights, "saturates", lambda: True)
    widened, count = for_this_cpu(data)
    assert count == 1 and widened != data


def test_matmul_integer_weights_without_zero_points(saturating_cpu):
    """A dynamic INT8 graph's MatMulInteger (no zero point inputs): the u8 weights get an explicit
    128 and the integer products stay exact (255 * 127 * 64 would saturate by half on AVX2)."""
    weights = np.full((64, 8), 127, np.int8)
    model = _matmul_integer_graph(weights)
    a = np.full((4, 64), 255, np.uint8)
    widened, count = for_this_cpu(model.SerializeToString())
    assert count == 1
    got = ort_session(widened, SessionOptions(), precision="fp32").run(None, {"a": a})[0]
    np.testing.assert_array_equal(got, a.astype(np.int64) @ weights.astype(np.int64))


def test_openvino_loads_the_widened_weights(saturating_cpu, tmp_path):
    """The OpenVINO CPU plugin saturates alike (measured: the same 8.95): it compiles the widened graph."""
    pytest.importorskip("openvino")
    from fusionrt.engine.loaders import openvino_model
    from fusionrt.engine.openvino_runtime import OpenVINOOptions

    rng = np.random.default_rng(3)
    model = _conv_graph(rng.integers(-127, 128, (8, 32, 3, 3)).astype(np.int8))
    feed = {"x": rng.integers(0, 256, (2, 32, 16, 16)).astype(np.uint8)}
    onnx.save(model, str(tmp_path / "stem.onnx"))
    compiled = openvino_model(tmp_path / "stem.onnx", "int8", OpenVINOOptions(inference_precision="f32"))
    got = compiled(feed)[0]
    assert np.abs(got - _reference(model, feed)).max() <= OUTPUT_STEP * 1.01


def test_an_8_bit_int8_bundle_answers_as_its_graphs_compute(tiny_checkpoint, photo_dir, tmp_path, monkeypatch):
    """A static INT8 bundle exported with 8-bit weights (as on a VNNI or AMX CPU), loaded where the
    CPU lacks the dot product (forced here, so on any CPU): its logits equal the same graphs run as
    float ops (ONNX Runtime without optimizations: DequantizeLinear, then a float Conv or MatMul),
    within 1e-3. Measured on an AVX2-only AMD EPYC: 6e-8; the s8 weights as loaded before, 3.1e-3
    (the tiny model's small activations saturate few sums)."""
    from fusionrt import Engine
    from fusionrt.engine.session import EngineOptions
    from fusionrt.export import ExportOptions, export_bundle

    options = ExportOptions(precision="int8", max_batch_size=4, validate=False, reduce_range=False)
    bundle = export_bundle(tiny_checkpoint, tmp_path / "int8", options, progress=False)
    texts = ["what a lovely picture", "honestly a dreadful view", "gloomy", "such a cheerful design"]
    images = [photo_dir / p for p in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")]
    monkeypatch.setattr(int8_weights, "saturates", lambda: True)
    with Engine.from_bundle(bundle) as engine:
        feed = engine.preprocess(texts, images)
        got = engine.run(feed)["logits"]
    monkeypatch.setattr(int8_weights, "saturates", lambda: False)
    unoptimized = EngineOptions(cpu=SessionOptions(graph_optimization_level="disable"))
    with Engine.from_bundle(bundle, options=unoptimized) as engine:
        expected = engine.run(feed)["logits"]
    assert np.abs(got - expected).max() <= 1e-3
    if not int8_weights.cpu_info().int8_dot_product:  # the s8 weights as they are: saturated sums
        with Engine.from_bundle(bundle) as engine:
            assert np.abs(engine.run(feed)["logits"] - expected).max() > 1e-3
